"""What the suite guarantees when things go wrong (docs/guarantees.md): every input a job reads is checked before
its work starts, a user's mistake is a message that says what to do (no traceback), and no file is published that
is not what the records say. The workflow-level cases that need a finished run are in test_workflow.py."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from tiny_original import adopted_original
from workflow_copies import copy_workflow

from unlearnbench import cli, stages
from unlearnbench.checkpoints import check_weights_file
from unlearnbench.config import ConfigError, load_config
from unlearnbench.errors import MissingResourceError, UserError

# unlearn() of a method that records that its loop ran: a check that comes after the loop cannot pass unseen
LOOP_RECORDER = (
    "from pathlib import Path\n\nDEFAULTS = {'steps': 2}\n\n\ndef unlearn(ctx):\n"
    "    Path('loop_ran').write_text('yes')\n    raise RuntimeError('the loop ran')\n"
)


def cut_short(path, size=100_000):
    with open(path, "r+b") as fh:
        fh.truncate(size)


@pytest.mark.parametrize("weights", ["unet", "unet_ema"])
def test_a_corrupt_original_is_named_before_the_unlearning_loop_runs(tmp_path, method_workdir, weights):
    """Before: the loop ran all its steps, then comparing its result with the original's EMA weights raised a
    SafetensorError ('a bug of the suite'), and the run's resumable state was deleted with the failed job."""
    config = method_workdir({"recorder": LOOP_RECORDER}, distinct_ema=True)
    cut_short(tmp_path / "original" / weights / "diffusion_pytorch_model.safetensors")
    with pytest.raises(
        MissingResourceError,
        match=rf"weights file \S*original/{weights}/diffusion_pytorch_model"
        r"\.safetensors is corrupt or incomplete \(100,000 bytes where its "
        r"header lists [\d,]+\)\. If the workflow wrote it",
    ):
        stages.run_unlearning(config, "recorder", 2, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out")
    assert not (tmp_path / "loop_ran").exists()


def test_a_weights_file_is_whole_only_when_its_header_says_so(tmp_path):
    """The header check against an independent reading: safetensors' own loader refuses what the check refuses."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(10.0), "b": torch.ones(3, 4)}, str(path))
    check_weights_file(path)
    load_file(str(path))
    whole = path.read_bytes()
    for broken in (whole[:-1], whole[:12], whole + b"\0", b""):
        path.write_bytes(broken)
        with pytest.raises(MissingResourceError, match="is corrupt or incomplete"):
            check_weights_file(path)
        with pytest.raises((SafetensorError, Exception)):
            load_file(str(path))


def test_a_users_checkpoint_with_cut_short_weights_fails_validation(tmp_path, tiny_config):
    """Before: base.checkpoint passed validation and `snakemake -n`, and failed only in the first job."""
    from unlearnbench.workflow import check_model_folders

    adopted_original(tmp_path, tiny_config)
    cut_short(tmp_path / "mine" / "unet" / "diffusion_pytorch_model.safetensors", 5000)
    with pytest.raises(
        MissingResourceError,
        match=r"mine/unet/diffusion_pytorch_model\.safetensors is corrupt or "
        r"incomplete .* copy it again from where it came from",
    ):
        check_model_folders(tiny_config)


def test_validate_config_refuses_cuda_on_a_machine_without_one(tmp_path, capsys):
    """As a local run does before its first job; the jobs of an executor profile run elsewhere (--jobs-elsewhere)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: device: cuda is valid here")
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text("device: cuda\n")
    assert cli.main(["validate-config", "config/test.yaml", str(overlay)]) == 2
    err = capsys.readouterr().err
    assert "the config asks for device: cuda, but torch sees no CUDA device here" in err and "Traceback" not in err
    assert "--jobs-elsewhere" in err
    assert cli.main(["validate-config", "config/test.yaml", str(overlay), "--jobs-elsewhere"]) == 0


def test_a_huge_batch_size_is_refused_by_validation():
    """Before: method_params.sa.batch_size 1e9 passed validation; its job died with 'Fix the method file'."""
    with pytest.raises(
        ConfigError,
        match=r"'method_params\.sa\.batch_size' = 1,000,000,000 exceeds the 1,797 "
        r"images of digits: no batch needs more images than the dataset has",
    ):
        load_config(overrides={"method_params": {"sa": {"batch_size": 10**9}}})
    load_config(overrides={"method_params": {"sa": {"batch_size": 1797}}})


@pytest.mark.parametrize(
    "error, memory",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 2000000000000 bytes."
            ),
            "host",
        ),
        (MemoryError(), "host"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "GPU"),
    ],
)
def test_out_of_memory_names_this_jobs_sizes_not_the_method_file(
    tmp_path, monkeypatch, capsys, tiny_config, error, memory
):
    """Host memory too (before: a traceback and 'Fix the method file'): the config values that set the job's size,
    largest first, with the method's own in effect."""
    from unlearnbench.config import write_resolved

    write_resolved({**tiny_config, "method_params": {"sa": {"batch_size": 1500}}}, tmp_path / "c.yaml")

    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr(stages, "run_unlearning", oom)
    code = cli.main(
        [
            "unlearn",
            "--config",
            str(tmp_path / "c.yaml"),
            "--method",
            "sa",
            "--forget-class",
            "0",
            "--seed",
            "0",
            "--data",
            "d",
            "--original",
            "o",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err and "method file" not in err
    assert f"error: out of {memory} memory" in err
    assert "largest first: method_params.sa.batch_size = 1,500, sampler.batch_size = 250" in err
    assert "method_params.salun" not in err  # another method's sizes do not set this job's


def test_a_read_only_result_is_named_not_a_traceback(tmp_path, monkeypatch, capsys, tiny_config):
    import errno

    from unlearnbench.config import write_resolved

    write_resolved(tiny_config, tmp_path / "c.yaml")

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "results/test/metrics/sa/class0/seed0.json")

    monkeypatch.setattr(stages, "prepare_data", refuse)
    assert cli.main(["prepare-data", "--config", str(tmp_path / "c.yaml"), "--out", "d.npz"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            "error: cannot write results/test/metrics/sa/class0/seed0.json (Read-only file system): "
            "make its folder writable"
        )
        and "Traceback" not in err
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty (or only comments), which Snakemake refuses"),
        ("# only a comment\n", "is empty (or only comments), which Snakemake refuses"),
        (b"\x7fELF\x02\x01\x01\x00\xd0\xff", "is not a text file"),
    ],
)
def test_validate_config_refuses_what_snakemake_refuses(tmp_path, capsys, content, message):
    """Before: `validate-config empty.yaml` said 'config OK' for an overlay Snakemake refuses."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_bytes(content.encode() if isinstance(content, str) else content)
    assert cli.main(["validate-config", str(overlay)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(overlay) in err and "Traceback" not in err
    assert cli.main(["validate-config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_an_empty_overlay_is_refused_by_snakemake_as_by_validate_config(tmp_path):
    """The other side of the agreement: what validate-config now refuses, the workflow refuses too."""
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "empty.yaml").write_text("# nothing yet\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "empty.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "keys at top level" in proc.stdout + proc.stderr


def aggregated_run(tmp_path, tiny_config) -> tuple:
    """A run folder with the tables the aggregate makes from records (records written here, not by a workflow)."""
    from unlearnbench.checkpoints import write_json
    from unlearnbench.report import aggregate

    config = {**tiny_config, "methods": ["sa"], "forget_classes": [0], "seeds": [0]}
    run = tmp_path / "results" / "test"
    records = []
    for method in ("original", "sa"):
        record = {
            "method": method,
            "variant": method,
            "forget_class": 0,
            "seed": 0,
            "fid": 10.0,
            "kid": 0.1,
            "H": 0.5,
            "UA": 50.0,
            "forget_prob": 0.5,
            "remaining_acc": 0.9,
            "cost": {"rte_min": 1.0, "gpu_peak_gb": None, "gpu_null_reason": "no CUDA device"},
        }
        records.append(run / "metrics" / method / "class0" / "seed0.json")
        write_json(records[-1], record)
    aggregate(config, records, run)
    return config, run


def test_a_hand_edited_table_is_neither_published_nor_drawn(tmp_path, tiny_config, capsys):
    """Before: an edited results/<run>/metrics.csv was copied to results/ and drawn as if the records said so."""
    from unlearnbench.files import DIGESTS
    from unlearnbench.workflow import TABLES

    config, run = aggregated_run(tmp_path, tiny_config)
    published = tmp_path / "published"
    published.mkdir()
    assert cli.main(["publish", *(str(run / name) for name in TABLES), "--to", str(published)]) == 0
    assert subprocess.run(["sha256sum", "-c", DIGESTS], cwd=published, capture_output=True).returncode == 0
    metrics = pd.read_csv(run / "metrics.csv")
    metrics.loc[metrics["method"] == "sa", "UA"] = 100.0
    metrics.to_csv(run / "metrics.csv", index=False)
    capsys.readouterr()
    assert cli.main(["publish", *(str(run / name) for name in TABLES), "--to", str(published)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'metrics.csv'} is not what the aggregate wrote" in err and "delete" in err
    assert pd.read_csv(published / "metrics.csv")["UA"].max() == 50.0  # nothing was copied, not even the others
    with pytest.raises(UserError, match="is not what the aggregate wrote"):
        stages.render_figures(config, "summary", metrics=run / "metrics.csv", out_dir=tmp_path / "figures")


def read_only_mount(folder) -> list[str] | None:
    """The command prefix that runs a command with `folder` mounted read-only (a user and mount namespace, so that
    root, who ignores file modes, meets a read-only file system too); None where this machine cannot make one."""
    if not shutil.which("unshare"):
        return None
    script = f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", script + " 2>/dev/null", "sh", "true"], capture_output=True)
    return ["unshare", "-rm", "sh", "-c", script, "sh"] if probe.returncode == 0 else None


def test_a_read_only_results_folder_plans_and_then_stops_with_a_message(tmp_path):
    """Before: the Snakefile wrote the resolved config (and the tables' redo markers) while it was parsed, so even a
    dry run ended in an OSError traceback. Now a dry run writes nothing; a run stops before its first job."""
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "results").mkdir()
    prefix = read_only_mount(workdir / "results")
    if prefix is None:
        pytest.skip("this machine cannot mount a folder read-only (unshare -rm and mount --bind)")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}

    def snakemake(*args):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "snakemake", "--cores", "1", *args, "--configfile", "config/test.yaml"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        return proc.returncode, proc.stdout + proc.stderr

    code, out = snakemake("-n", "results/table.csv")
    assert code == 0 and "Traceback" not in out and "train_base" in out, out[-3000:]
    code, out = snakemake("results/table.csv")
    assert code != 0 and "Traceback" not in out, out[-3000:]
    assert "error: the run cannot write its results: results/test/ (Read-only file system at results)" in out
    assert "nothing was run" in out and not list((workdir / "results").iterdir())


def test_every_test_the_guarantees_page_names_exists(root):
    """docs/guarantees.md points each guarantee to its test: a renamed or deleted test must not leave it unproven."""
    import re

    text = (root / "docs" / "guarantees.md").read_text()
    named, current = [], None
    for file, name in re.findall(r"(test_\w+\.py|\.\.\.)::(test_\w+)", text):
        current = current if file == "..." else file
        named.append((current, name))
    assert len(named) > 20
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not re.search(rf"^def {name}\(", (root / "tests" / file).read_text(), re.M)
    ]
    assert not missing
