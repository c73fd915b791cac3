"""Workflow runs that each need a fresh copy of the workflow: a killed job is redone and resumes, a job that
outlives a killed Snakemake is redone, a user's replaced checkpoint reruns what follows it, and the paper config
runs end to end on a miniature CIFAR-10. Kept apart from test_workflow.py so that xdist runs the two files on
two workers (`--dist loadfile`: each file's tests on one worker).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_copies import METRICS, ROOT, copy_workflow, snakemake

pytestmark = pytest.mark.slow  # minutes: `pytest -m "not slow"` is the quick loop


def write_short_base_training(workdir: Path) -> None:
    """config/kill.yaml: base training alone, on a smaller UNet, a few seconds long with a resumable state every
    25 steps, so that a test can kill it between its first state and its end (175 steps later)."""
    (workdir / "config" / "kill.yaml").write_text(
        "run_name: kill\n"
        "device: cpu\n"  # a GPU would finish the 175 steps before the test could kill the job
        "model: {overrides: {block_out_channels: [8, 8], norm_num_groups: 4,"
        " down_block_types: [DownBlock2D, DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D]}}\n"
        "base: {steps: 200, checkpoint_every: 25}\n"
    )


def start_snakemake_until(workdir: Path, configfile: str, target: str, state: Path) -> subprocess.Popen:
    """Snakemake in the background (its own process group), returned once base training saved `state`."""
    env = {**os.environ, "UNLEARNBENCH_QUIET": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", f"--configfile={configfile}", target],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), "no resumable checkpoint was written"
    return proc


def test_killed_job_is_redone_and_resumes(tmp_path):
    workdir = copy_workflow(tmp_path / "kill")
    write_short_base_training(workdir)
    target = "results/kill/models/original/train.json"
    state = workdir / "results/kill/models/original/train_state.pt"
    proc = start_snakemake_until(workdir, "config/kill.yaml", target, state)
    import psutil

    jobs = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train-base" in " ".join(p.cmdline())]
    assert jobs, "the training job was not found"
    for job in jobs:
        job.kill()  # the job dies mid-run, as on an out-of-memory kill or a node failure
    assert proc.wait(timeout=300) != 0  # Snakemake reports the failure
    assert not (workdir / target).exists()  # nothing downstream can take a partial result
    snakemake(workdir, "--configfile=config/kill.yaml", target)
    log = (workdir / "results/kill/logs/train_base.log").read_text()
    assert "resuming base training from step" in log
    assert (workdir / "results/kill/models/original/unet_ema/diffusion_pytorch_model.safetensors").exists()
    assert not state.exists()


def test_a_job_outliving_a_killed_snakemake_is_redone_by_the_next_plain_run(tmp_path):
    """The job finishes after Snakemake was killed, so Snakemake never marked its output complete: the workflow
    profile (rerun-incomplete) redoes it, where plain Snakemake stops with IncompleteFilesException."""
    workdir = copy_workflow(tmp_path / "orphan")
    shutil.copytree(ROOT / "profiles", workdir / "profiles")
    write_short_base_training(workdir)
    target = "results/kill/models/original/train.json"
    proc = start_snakemake_until(
        workdir, "config/kill.yaml", target, workdir / "results/kill/models/original/train_state.pt"
    )
    proc.kill()  # Snakemake only: its job goes on and writes its output
    proc.wait()
    deadline = time.time() + 300
    while not (workdir / target).exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    snakemake(workdir, "--unlock", "--configfile=config/kill.yaml")
    plain = snakemake(workdir, "--workflow-profile", "none", "--configfile=config/kill.yaml", target, check=False)
    assert plain.returncode != 0 and "IncompleteFilesException" in plain.stdout + plain.stderr
    redone = snakemake(workdir, "--configfile=config/kill.yaml", target)
    assert re.search(r"Finished jobid: \d+ \(Rule: train_base\)", redone.stdout + redone.stderr)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    """Snakemake's lock: two runs writing one results folder at once would mix their files; the second stops with
    what to do while the first goes on."""
    import signal

    workdir = copy_workflow(tmp_path / "lock")
    write_short_base_training(workdir)
    kill = workdir / "config" / "kill.yaml"
    kill.write_text(kill.read_text().replace("steps: 200,", "steps: 100000,"))  # outlasts the second's start
    target = "results/kill/models/original/train.json"
    first = start_snakemake_until(
        workdir, "config/kill.yaml", target, workdir / "results/kill/models/original/train_state.pt"
    )
    try:
        second = snakemake(workdir, "--configfile=config/kill.yaml", target, check=False)
        assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_replacing_a_users_checkpoint_reruns_from_the_original_model(tmp_path):
    """base.checkpoint's files are inputs of train_base: new weights at the same path are not silently ignored,
    and the adopted weights' digests are recorded."""
    import torch

    from unlearnbench.checkpoints import folder_digest, save_unet
    from unlearnbench.config import load_config
    from unlearnbench.networks import build_unet

    workdir = copy_workflow(tmp_path / "mine")
    model_config = load_config(ROOT / "config" / "test.yaml")["model"]

    def write_checkpoint(seed):
        torch.manual_seed(seed)
        model = build_unet(model_config["preset"], 10, model_config.get("overrides"))
        for sub in ("unet", "unet_ema"):
            save_unet(model, workdir / "mine" / sub)

    write_checkpoint(0)
    (workdir / "mine.yaml").write_text("base: {checkpoint: mine}\n")
    args = ("--configfile", "config/test.yaml", "mine.yaml", "--", "results/test/models/original/train.json")
    snakemake(workdir, *args)
    record = workdir / "results/test/models/original/train.json"
    first = json.loads(record.read_text())["source_digest"]
    assert first == {sub: folder_digest(workdir / "mine" / sub) for sub in ("unet", "unet_ema")}
    write_checkpoint(1)  # other weights, same path and config
    out = snakemake(workdir, "-n", *args).stdout
    assert re.search(r"reason: Updated input files: .*mine/unet", out), out[-2000:]
    snakemake(workdir, *args)
    assert json.loads(record.read_text())["source_digest"]["unet"] != first["unet"]


def test_paper_config_runs_end_to_end_on_a_miniature_cifar10(tmp_path, write_miniature_cifar10):
    """config/paper.yaml's own code paths, which the digits runs never take, through the real DAG on CPU: CIFAR-10
    read from its official files, the paper UNet's four levels with attention and dropout, flips, the ResNet-18
    evaluator, the 1000-step schedule with the stochastic (eta = 1) sampler, and the three methods on 32x32 RGB.
    Only sizes, step counts and the device are shrunk: the sampler takes 4 of the 1000 steps (the paper's
    ancestral sampler is that sampler over all of them), and FID uses the evaluator (no Inception weights here)."""
    import numpy as np

    workdir = copy_workflow(tmp_path / "cifar")
    write_miniature_cifar10(tmp_path / "cifar10", per_batch=40)
    (workdir / "config" / "cpu.yaml").write_text(
        f"run_name: cifar-cpu\ndata: {{root: {tmp_path / 'cifar10'}, download: false}}\n"
        "device: cpu\nthreads: 1\nforget_classes: [0]\n"
        "model: {overrides: {block_out_channels: [16, 16, 16, 16], norm_num_groups: 4, attention_head_dim: 16}}\n"
        "base: {steps: 20, checkpoint_every: 10, batch_size: 16, warmup_steps: 2}\n"
        "evaluator: {epochs: 1, batch_size: 32}\n"
        "sampler: {steps: 4, batch_size: 64}\n"
        "evaluation: {n_forget: 8, n_per_remaining_class: 4, n_real_per_class: 10}\n"
        "fid: {backend: classifier}\n"
        "method_params:\n"
        "  safemax: {steps: 3, batch_size: 8}\n"
        "  salun: {steps: 3, batch_size: 8, retain_batch_size: 8, mask_batch_size: 8}\n"
        "  sa: {steps: 3, batch_size: 8, replay_batch_size: 8, n_generated_per_class: 2, fisher_images: 4,"
        " fisher_timesteps: 4, fisher_batch: 2, checkpoint_every: 2}\n"
        "performance: {bf16: false, tf32: false, channels_last: false}\n"
    )
    snakemake(
        workdir,
        "--configfile",
        "config/paper.yaml",
        "config/cpu.yaml",
        "--",
        "results/table.csv",
        "figures/cifar-cpu/samples_class0.png",
    )
    run = workdir / "results" / "cifar-cpu"
    assert np.load(run / "data.npz")["train_x"].shape == (200, 3, 32, 32)
    unet = json.loads((run / "models/original/unet/config.json").read_text())
    assert unet["in_channels"] == 3 and unet["dropout"] == 0.1 and len(unet["down_block_types"]) == 4
    assert "AttnDownBlock2D" in unet["down_block_types"]
    assert json.loads((run / "evaluator/evaluator.json").read_text())["arch"] == "resnet18"
    metrics = pd.read_csv(workdir / "results" / "metrics.csv")
    assert set(metrics["method"]) == {"original", "sa", "salun", "safemax"} and len(metrics) == 4
    assert (metrics["dataset"] == "cifar10").all() and (metrics["eta"] == 1.0).all()
    assert (metrics["sampler_steps"] == 4).all() and (metrics["guidance_w"] == 2.0).all()
    assert np.isfinite(metrics[METRICS].to_numpy(float)).all()
    samples = np.load(run / "samples/safemax/class0/seed0.npz")["images"]
    assert samples.dtype == np.uint8 and samples.shape[1:] == (3, 32, 32)
    assert (workdir / "figures/cifar-cpu/samples_class0.png").stat().st_size > 0
