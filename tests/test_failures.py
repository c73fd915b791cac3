"""Bad input gets a clear message that says what to do, and no Python traceback."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_original import adopted_original

from unlearnbench import cli, stages
from unlearnbench.checkpoints import load_unet, save_unet, unet_expectations
from unlearnbench.errors import MissingResourceError, UserError
from unlearnbench.networks import build_unet
from unlearnbench.settings import ModelSettings
from unlearnbench.training import resolve_device

# the shipped method files, as every "allowed:" message lists them
SHIPPED = ", ".join(
    sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "methods").glob("*.py") if p.stem != "__init__")
)


def run_cli(args, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "unlearnbench.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def write_config(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_missing_cifar10_offline_through_the_cli(tmp_path, tiny_config):
    config = dict(
        tiny_config,
        dataset="cifar10",
        data={"root": str(tmp_path / "cifar"), "download": False},
        model={"preset": "paper"},
    )
    code, out = run_cli(["prepare-data", "--config", str(write_config(tmp_path, config)), "--out", "d.npz"], tmp_path)
    assert code == 2
    assert "CIFAR-10 not found under" in out and "cifar-10-batches-py" in out
    assert "Traceback" not in out


def test_inception_weights_missing_offline_through_the_cli(tmp_path, tiny_config):
    data = tmp_path / "data.npz"
    stages.prepare_data(tiny_config, data)
    config = dict(tiny_config, fid={"backend": "inception", "weights_dir": str(tmp_path / "weights")})
    code, out = run_cli(
        [
            "fid-reference",
            "--config",
            str(write_config(tmp_path, config)),
            "--data",
            str(data),
            "--evaluator",
            "unused",
            "--forget-class",
            "0",
            "--out",
            "ref.npz",
        ],
        tmp_path,
    )
    assert code == 2, out
    assert "inception-2015-12-05.pt" in out and str(tmp_path / "weights") in out
    assert "Traceback" not in out


def test_cuda_requested_but_absent():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="device: cuda.*Set device: auto or cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(MissingResourceError, match="no UNet checkpoint at .*Re-run the step that trains it"):
        load_unet(tmp_path / "nothing")


def test_corrupt_checkpoint(tmp_path, tiny_config):
    save_unet(build_unet("tiny", 10), tmp_path / "unet")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        MissingResourceError, match="corrupt or incomplete.*delete it and re-run.*your base.checkpoint, copy it again"
    ):
        load_unet(tmp_path / "unet")


def test_mismatched_checkpoint(tmp_path, tiny_config):
    expect = unet_expectations(ModelSettings.parse(tiny_config["model"]), 10)
    save_unet(build_unet("tiny", 5), tmp_path / "unet")  # 5 classes, the config has 10
    with pytest.raises(
        MissingResourceError, match="is not the config's model: num_class_embeds is 6, the config needs 11"
    ):
        load_unet(tmp_path / "unet", expect=expect)
    # every architecture key counts, dropout too (diffusers' default is 0.0, the paper UNet's 0.1)
    save_unet(build_unet("tiny", 10, {"layers_per_block": 2, "dropout": 0.3}), tmp_path / "deeper")
    with pytest.raises(
        MissingResourceError,
        match="layers_per_block is 2, the config needs 1; dropout is 0.3, the config needs 0.0. .*model.overrides",
    ):
        load_unet(tmp_path / "deeper", expect=expect)
    # ... and an equivalent spelling is the same model
    save_unet(
        build_unet("tiny", 10, {"act_fn": "swish", "attn_norm_num_groups": 8, "num_train_timesteps": 1000}),
        tmp_path / "same",
    )
    assert load_unet(tmp_path / "same", expect=expect).config.act_fn == "swish"
    save_unet(build_unet("tiny", 10, {"attention_head_dim": 32}), tmp_path / "one_head")  # = None at 32 channels
    load_unet(tmp_path / "one_head", expect=expect)
    save_unet(build_unet("tiny", 10, {"attention_head_dim": 16}), tmp_path / "two_heads")
    with pytest.raises(MissingResourceError, match=r"attention_head_sizes is \{'down': \[16\], 'mid': 16"):
        load_unet(tmp_path / "two_heads", expect=expect)
    overlay = json.loads(json.dumps(tiny_config))
    overlay["model"]["overrides"] = {"layers_per_block": 2, "dropout": 0.3}
    load_unet(tmp_path / "deeper", expect=unet_expectations(ModelSettings.parse(overlay["model"]), 10))
    paper = build_unet("paper", 10, {"attention_head_dim": None})  # diffusers' spelling of one 256-channel head
    save_unet(paper, tmp_path / "paper")
    load_unet(tmp_path / "paper", expect=unet_expectations(ModelSettings(preset="paper"), 10))


def test_weights_that_do_not_fit_their_config_json(tmp_path):
    save_unet(build_unet("tiny", 10), tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    with pytest.raises(
        MissingResourceError,
        match=r"its weights do not fit its config.json \(Missing key\(s\) in "
        r"state_dict: .*one save_pretrained",
    ):
        load_unet(tmp_path / "unet")


def test_user_supplied_checkpoint_is_checked_before_use(tmp_path, tiny_config):
    save_unet(build_unet("tiny", 5), tmp_path / "mine" / "unet")
    save_unet(build_unet("tiny", 5), tmp_path / "mine" / "unet_ema")
    stages.prepare_data(tiny_config, tmp_path / "data.npz")
    config = json.loads(json.dumps(tiny_config))
    config["base"]["checkpoint"] = str(tmp_path / "mine")
    with pytest.raises(
        MissingResourceError,
        match="is not the config's model: num_class_embeds is 6, .* trained on this dataset's classes",
    ):
        stages.train_base(config, tmp_path / "data.npz", tmp_path / "original")
    assert not (tmp_path / "original" / "unet").exists()


def test_out_of_memory_names_the_batch_size_keys(monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(stages, "run_unlearning", oom)
    monkeypatch.setattr(stages, "load_run_config", lambda path: {})
    code = cli.main(
        [
            "unlearn",
            "--config",
            "c.yaml",
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
            "x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3
    assert "out of GPU memory" in err and "method_params.<method>.batch_size" in err and "sampler.batch_size" in err


def test_unknown_method_file(tmp_path):
    from unlearnbench.method_api import load_method

    with pytest.raises(UserError, match=f"method 'nope' not found: no file .*nope.py. Available: {SHIPPED}"):
        load_method("nope")
    (tmp_path / "broken.py").write_text("DEFAULTS = {}\n")
    with pytest.raises(UserError, match="must define unlearn\\(ctx\\)"):
        load_method("broken", tmp_path)


def test_a_failed_job_shows_its_error_in_snakemakes_output(root, tmp_path):
    """Rules write their output to a log; the workflow profile (profiles/default) prints a failed job's log, so
    the user sees the message and what to do without opening results/<run>/logs/ by hand."""
    for name in ("Snakefile", "rules", "config", "methods", "profiles"):
        src = root / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    # device: the paper's cuda stops a run on a machine without one before its first job
    (tmp_path / "offline.yaml").write_text(f"data: {{download: false, root: {tmp_path / 'nowhere'}}}\ndevice: cpu\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "results/table.csv",
            "--configfile",
            "config/paper.yaml",
            "offline.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule prepare_data" in out and "CIFAR-10 not found under" in out, out[-3000:]


def test_forget_class_out_of_range_names_the_range():
    from types import SimpleNamespace

    with pytest.raises(UserError, match=r"forget class 12 is out of range: the dataset's classes are 0..9"):
        stages._context(
            {}, "safemax", {}, SimpleNamespace(num_classes=10), torch.device("cpu"), 0, None, None, forget_class=12
        )


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, tiny_config):
    from unlearnbench.errors import DivergedError

    config = json.loads(json.dumps(tiny_config))
    with pytest.raises(
        DivergedError,
        match=r"'base.checkpoint' .*mine/unet: 3 of [\d,]+ values are NaN or inf\. "
        r"Its weights are unusable",
    ):
        adopted_original(tmp_path, config, poison=True)
    assert not (tmp_path / "original" / "unet").exists()


def test_a_diverged_unlearning_run_fails_and_saves_nothing(tmp_path, tiny_config):
    """Before, NaN weights were saved, their samples quantised to black images, and the metrics looked real."""
    from unlearnbench.errors import DivergedError

    config = json.loads(json.dumps(tiny_config))
    adopted_original(tmp_path, config)
    config["method_params"]["safemax"].update(lr=1e30, steps=3)
    out = tmp_path / "unlearned"
    with pytest.raises(
        DivergedError,
        match=r"safemax \(forget class 2, seed 0\) ended with non-finite weights: [\d,]+ "
        r"of [\d,]+ values are NaN or inf\. Its training diverged: lower its "
        r"learning rate \(method_params.safemax.lr = 1e\+30\)",
    ):
        stages.run_unlearning(config, "safemax", 2, 0, tmp_path / "data.npz", tmp_path / "original", out)
    assert not out.exists()
    # an ablation run is named with its value (its job is one of several of the method per class)
    with pytest.raises(DivergedError, match=r"safemax with lambda=0.0 \(forget class 2, seed 0\) ended with"):
        stages.run_unlearning(
            config, "safemax", 2, 0, tmp_path / "data.npz", tmp_path / "original", out, overrides={"lambda": 0.0}
        )


def test_nan_images_are_refused_not_quantised_to_black():
    from unlearnbench.data import to_uint8
    from unlearnbench.errors import DivergedError

    images = torch.zeros(2, 1, 4, 4)
    assert (to_uint8(images) == 128).all()
    images[1, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(DivergedError, match="generated images hold 2 NaN or inf values of 32"):
        to_uint8(images)


AUTHOR_MISTAKES = {
    "no_return": "def unlearn(ctx):\n    model = ctx.load_original()\n    ctx.run_steps(1, lambda i: None, desc='x')\n",
    "state_dict": "def unlearn(ctx):\n    model = ctx.load_original()\n    ctx.run_steps(1, lambda i: None, desc='x')\n"
    "    return model.state_dict()\n",
    "untimed": "def unlearn(ctx):\n    return ctx.load_original(ema=True)\n",
    "reads_prior": "def unlearn(ctx):\n    return ctx.priors['stats']\n",
    "reads_sampler": "def unlearn(ctx):\n    return ctx.config['sampler']\n",
    "no_op": "def unlearn(ctx):\n    model = ctx.load_original(ema=True)\n    ctx.run_steps(3, lambda i: None, desc='x')\n"
    "    return model\n",
    "other_copy": "import torch\n\ndef unlearn(ctx):\n    model, other = ctx.load_original(), ctx.load_original()\n"
    "    opt = torch.optim.SGD(other.parameters(), lr=0.1)\n\n    def step(i):\n"
    "        opt.zero_grad()\n        sum(p.sum() for p in other.parameters()).backward()\n"
    "        opt.step()\n\n    ctx.run_steps(2, step, desc='x')\n    return model\n",
    "reads_no_param": "DEFAULTS = {'steps': 2}\n\ndef unlearn(ctx):\n    return ctx.params['lr']\n",
    "misspells_param": "DEFAULTS = {'steps': 2, 'retain_weight': 1}\n\ndef unlearn(ctx):\n"
    "    return ctx.params['retain_wieght']\n",
}


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_return", "unlearn() of method 'no_return' returned NoneType; it must return the unlearned UNet"),
        ("state_dict", "unlearn() of method 'state_dict' returned OrderedDict"),
        ("untimed", "unlearn() of method 'untimed' ran no timed step: run its loop through ctx.run_steps"),
        ("reads_prior", "ctx.priors['stats']: this stage did not require prior 'stats'"),
        (
            "reads_sampler",
            "unlearn() of method 'reads_sampler' reads config section 'sampler', which it does not declare",
        ),
        ("no_op", "unlearn() of method 'no_op' returned the original model's weights (unet_ema/) unchanged"),
        (
            "other_copy",
            "unlearn() of method 'other_copy' returned the original model's weights (unet/) unchanged: its "
            "loop changed nothing. Check that its optimizer holds the parameters of the model it returns",
        ),
        (
            "reads_no_param",
            "method 'reads_no_param' reads param 'lr', which is not one of its params (steps): add it to "
            "DEFAULTS in its method file",
        ),
        (
            "misspells_param",
            "reads param 'retain_wieght', which is not one of its params (retain_weight, steps): did "
            "you mean retain_weight? (else add it to DEFAULTS in its method file)",
        ),
    ],
)
def test_a_method_authors_mistakes_are_named_and_nothing_is_saved(tmp_path, method_workdir, name, message):
    """Before: the base model scored as unlearned with RTE 0 (untimed), or a bare TypeError/KeyError traceback."""
    config = method_workdir({name: AUTHOR_MISTAKES[name]}, distinct_ema=True)
    with pytest.raises(UserError) as err:
        stages.run_unlearning(config, name, 2, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out")
    assert message in str(err.value) and not str(err.value).startswith("'")  # not a KeyError's quoted text
    assert not (tmp_path / "out" / "unet").exists()


def test_a_bug_in_a_method_file_ends_its_log_with_the_line_and_what_to_do_and_leaves_no_old_grid(
    tmp_path, method_workdir, capsys
):
    """A method's own exception is no UserError: the traceback stays, and the last line names the method file's line
    (before: the traceback, then the progress bar redrawn as the log's last line)."""
    from unlearnbench.config import write_resolved

    config = method_workdir(
        {
            "buggy": (
                "DEFAULTS = {'steps': 3}\n\n\ndef unlearn(ctx):\n    model = ctx.load_original(ema=False)\n\n"
                "    def step(i):\n        return [1, 2][i + 5]\n\n    ctx.run_steps(ctx.params['steps'], step, desc='buggy')\n"
                "    return model\n"
            )
        },
        shipped=True,
    )
    write_resolved({**config, "methods": ["buggy"]}, tmp_path / "config.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "eval_samples.png").write_bytes(b"the grid of the model this job replaces")
    capsys.readouterr()
    assert (
        cli.main(
            [
                "unlearn",
                "--config",
                "config.yaml",
                "--method",
                "buggy",
                "--forget-class",
                "2",
                "--seed",
                "0",
                "--data",
                "data.npz",
                "--original",
                "original",
                "--out",
                "out",
                "--presample",
                "out/eval_samples.npz",
            ]
        )
        == 1
    )
    assert not (tmp_path / "out" / "eval_samples.png").exists()  # no picture of a model that is gone
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == (
        "error: methods/buggy.py line 8 (return [1, 2][i + 5]) raised IndexError: list index out of range. Fix the "
        "method file (the traceback above shows the calls), then rerun: only the failed jobs run again"
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ("    pass\n", "prior 'stats' of method 'm' wrote nothing to ctx.out_dir"),
        ("    (ctx.out_dir / 'stats.txt').write_text('1')\n", "prior 'stats' of method 'm' timed nothing"),
    ],
)
def test_a_prior_that_writes_or_times_nothing_is_refused(tmp_path, method_workdir, body, message):
    config = method_workdir(
        {
            "m": "from unlearnbench.method_api import Prior\n\ndef stats(ctx):\n"
            + body
            + "\nPRIORS = [Prior('stats', stats)]\n\ndef unlearn(ctx):\n    pass\n"
        }
    )
    with pytest.raises(UserError, match=re.escape(message)):
        stages.run_prior(config, "m", "stats", tmp_path / "data.npz", tmp_path / "original", tmp_path / "prior")
    assert not (tmp_path / "prior").exists()


def test_a_prior_file_lost_after_its_job_is_named_with_what_to_do(tmp_path, method_workdir):
    """A prior job's output is its cost.json: a file of the folder deleted or cut short later is not redone by a
    plain rerun, so the next job names it and says to delete the folder (before: "re-run the step that writes it")."""
    from unlearnbench.errors import MissingResourceError

    config = method_workdir(
        {
            "m": (
                "from unlearnbench.method_api import Prior\n\ndef stats(ctx):\n    with ctx.meter.timed():\n"
                "        (ctx.out_dir / 'stats.txt').write_text('12345')\n\nPRIORS = [Prior('stats', stats)]\n\n"
                "def unlearn(ctx):\n    raise RuntimeError('reached unlearn')\n"
            )
        }
    )
    stages.run_prior(config, "m", "stats", tmp_path / "data.npz", tmp_path / "original", tmp_path / "prior")
    priors = {"stats": tmp_path / "prior"}

    def unlearn():
        stages.run_unlearning(config, "m", 2, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out", priors)

    with pytest.raises(RuntimeError, match="reached unlearn"):  # intact: the check lets it through
        unlearn()
    (tmp_path / "prior" / "stats.txt").write_text("12")
    with pytest.raises(
        MissingResourceError,
        match=re.escape(
            f"prior 'stats' in {tmp_path / 'prior'} no longer holds what its job wrote: stats.txt (2 bytes, written 5). "
            f"Delete the folder {tmp_path / 'prior'} and run snakemake again"
        ),
    ):
        unlearn()
    (tmp_path / "prior" / "stats.txt").unlink()
    with pytest.raises(MissingResourceError, match=re.escape("stats.txt (missing)")):
        unlearn()


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "import no_such_package\n",
            "broken.py cannot be loaded: ModuleNotFoundError: No module named 'no_such_package' "
            "(line 1); fix it, or take 'broken' out of 'methods'",
        ),
        ("DEFAULTS = {}\nSTEPS = 1 / 0\n", "broken.py cannot be loaded: ZeroDivisionError: division by zero (line 2)"),
        ("DEFAULTS = {}\n", "must define unlearn(ctx)"),
        (
            "from unlearnbench.method_api import Prior\nPRIORS = [Prior('a', print, requires=('b',)), "
            "Prior('b', print, requires=('a',))]\ndef unlearn(ctx): pass\n",
            "priors require each other in a cycle: a -> b -> a",
        ),
        (
            "from unlearnbench.method_api import Prior\nPRIORS = [Prior('a', print, scope='per_class'), "
            "Prior('b', print, requires=('a',))]\ndef unlearn(ctx): pass\n",
            "prior 'b' is shared but requires per-class prior(s) ['a']",
        ),
        (
            "from unlearnbench.method_api import Prior\nDEFAULTS = {'batch_size': 4}\nPRIORS = [Prior('a', print, "
            "params=('batchsize',))]\ndef unlearn(ctx): pass\n",
            "prior 'a' declares params ['batchsize'], which DEFAULTS lacks",
        ),
        (
            "from unlearnbench.method_api import Prior\nPRIORS = [Prior('MyPrior', print)]\ndef unlearn(ctx): pass\n",
            "prior 'MyPrior': a prior's name is lower-case letters",
        ),
        ("DISPLAY_NAME = 3\ndef unlearn(ctx): pass\n", "DISPLAY_NAME must be a non-empty string, got 3"),
        # else the method silently has no params, and fails with a bare KeyError inside its loop
        (
            "DEFAULT = {'lr': 1.0}\ndef unlearn(ctx): pass\n",
            "defines DEFAULT, which the suite does not read, and no DEFAULTS: rename it DEFAULTS",
        ),
        (
            "param_schema = {'lr': {}}\nDEFAULTS = {'lr': 1.0}\ndef prior(): pass\ndef unlearn(ctx): pass\n",
            "defines param_schema, which the suite does not read, and no PARAM_SCHEMA: rename it PARAM_SCHEMA",
        ),
        ("CONTROL = 'yes'\ndef unlearn(ctx): pass\n", "CONTROL must be True or False, got 'yes'"),
        (
            "DEFAULTS = ['steps', 'lr']\ndef unlearn(ctx): pass\n",
            "DEFAULTS must be a dict keyed by parameter name, e.g. DEFAULTS = {\"lr\": 1.0e-4}; it is ['steps', 'lr']",
        ),
        (
            "DEFAULTS = {'lr': 1.0}\nPARAM_SCHEMA = {'lr': {'type': 'float'}}\ndef unlearn(ctx): pass\n",
            "PARAM_SCHEMA['lr'] = {'type': 'float'} is not a JSON Schema ('float' is not valid under any of the given "
            "schemas)",
        ),
        (
            "DEFAULTS = {'lr': 0.0}\nPARAM_SCHEMA = {'lr': {'type': 'number', 'exclusiveMinimum': 0}}\n"
            "def unlearn(ctx): pass\n",
            "its DEFAULTS break its PARAM_SCHEMA: 'DEFAULTS.lr' = 0.0 is not allowed; allowed: type number, > 0",
        ),
    ],
)
def test_a_broken_method_file_is_refused_every_time(tmp_path, source, message):
    """A failed load is a UserError naming the file (a job prints it without a traceback), and leaves no
    half-initialised module behind for the next caller to use."""
    from unlearnbench.method_api import load_method

    (tmp_path / "broken.py").write_text(source)
    for _ in range(2):
        with pytest.raises(UserError, match=re.escape(message)):
            load_method("broken", tmp_path)


def test_a_broken_listed_method_is_a_config_problem(tmp_path, root):
    """Listed in 'methods' (not only under method_params), a broken file is named when the config is validated,
    before any job, not by a traceback from some rule's input function."""
    from unlearnbench.config import ConfigError, load_config

    shutil.copytree(root / "methods", tmp_path / "methods")
    (tmp_path / "methods" / "syntax.py").write_text("DEFAULTS = {\n")
    (tmp_path / "methods" / "imports.py").write_text("import no_such_package\ndef unlearn(ctx): pass\n")
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"methods": ["sa", "syntax", "imports"]}, methods_dir=tmp_path / "methods")
    assert (
        f"method file {tmp_path / 'methods' / 'syntax.py'} cannot be loaded: SyntaxError: '{{' was never closed "
        "(line 1); fix it, or take 'syntax' out of 'methods'"
    ) in str(err.value)
    assert "imports.py cannot be loaded: ModuleNotFoundError: No module named 'no_such_package'" in str(err.value)


def test_two_methods_shown_under_one_name_are_a_config_problem(tmp_path, root):
    """Their columns in the tables would be one: the later would overwrite the earlier."""
    from unlearnbench.config import ConfigError, load_config

    shutil.copytree(root / "methods", tmp_path / "methods")
    (tmp_path / "methods" / "sa_v2.py").write_text("DISPLAY_NAME = 'SA'\ndef unlearn(ctx): pass\n")
    (tmp_path / "methods" / "base.py").write_text("DISPLAY_NAME = 'Original'\ndef unlearn(ctx): pass\n")
    for methods, message in (
        (["sa", "sa_v2"], "methods 'sa' and 'sa_v2' are both called 'SA' in the tables"),
        (["base"], "methods 'original' and 'base' are both called 'Original'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(overrides={"methods": methods}, methods_dir=tmp_path / "methods")
    load_config(overrides={"methods": ["sa_v2"]}, methods_dir=tmp_path / "methods")  # alone, its name is free


def test_a_method_file_named_in_capitals_is_told_to_be_renamed(tmp_path, root):
    from unlearnbench.config import ConfigError, load_config

    shutil.copytree(root / "methods", tmp_path / "methods")
    (tmp_path / "methods" / "GradAscent.py").write_text("def unlearn(ctx): pass\n")
    with pytest.raises(ConfigError, match="GradAscent.py: 'GradAscent' cannot name a method .*rename the file"):
        load_config(overrides={"methods": ["GradAscent"]}, methods_dir=tmp_path / "methods")
    with pytest.raises(ConfigError) as err:  # the list of what is allowed leaves it out
        load_config(overrides={"methods": ["gradascent"]}, methods_dir=tmp_path / "methods")
    assert f"allowed: {SHIPPED} (a method" in str(err.value)


def test_original_cannot_name_a_method(tmp_path):
    from unlearnbench.method_api import load_method

    (tmp_path / "original.py").write_text("def unlearn(ctx): pass\n")
    with pytest.raises(UserError, match="'original' cannot name a method"):
        load_method("original", tmp_path)


def test_an_ablation_of_a_param_a_prior_reads_is_refused(root):
    """SalUn's mask is made once, with the main mask_ratio: an ablation of it would reuse that mask."""
    from unlearnbench.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'ablation.param' = 'mask_ratio' is read by prior\\(s\\) mask of salun"):
        load_config(
            overrides={"ablation": {"method": "salun", "param": "mask_ratio", "values": [0.1, 0.9], "forget_class": 0}},
            methods_dir=root / "methods",
        )
    load_config(
        overrides={"ablation": {"method": "salun", "param": "alpha", "values": [0.1], "forget_class": 0}},
        methods_dir=root / "methods",
    )  # unlearn() alone reads alpha


def test_an_ablation_of_a_param_whose_main_value_is_null_is_refused_with_what_to_set(root):
    """The main run is the curve's point at its own value: a null one (SAFEMax's ema_decay) is no point; before,
    reading the Snakefile failed with a bare TypeError."""
    from unlearnbench.config import ConfigError, load_config

    ablation = {"method": "safemax", "param": "ema_decay", "values": [0.99, 0.999], "forget_class": 0}
    with pytest.raises(
        ConfigError,
        match="'ablation.param' = 'ema_decay' is null in safemax's main runs .* method_params.safemax.ema_decay",
    ):
        load_config(overrides={"ablation": ablation}, methods_dir=root / "methods")
    load_config(
        overrides={"ablation": ablation, "method_params": {"safemax": {"ema_decay": 0.9999}}},
        methods_dir=root / "methods",
    )


def test_an_unlearning_state_resumes_only_from_the_same_original_and_priors(tmp_path, tiny_config):
    """Regenerated priors (e.g. after a sampler change) or a new original model restart a killed SA run; before,
    it resumed with steps trained on the old ones."""
    config = json.loads(json.dumps(tiny_config))
    adopted_original(tmp_path, config)
    for name in ("generated", "fisher"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cost.json").write_text("{}")
    priors = {"generated": tmp_path / "generated", "fisher": tmp_path / "fisher"}
    params = {"steps": 4}

    def key():
        return stages.unlearning_state_key(config, "sa", params, 0, 2, tmp_path / "original", priors)

    before = key()
    assert key() == before  # nothing changed: the killed run resumes
    (tmp_path / "fisher" / "fisher.safetensors").write_bytes(b"new")
    changed_prior = key()
    assert changed_prior != before
    save_unet(
        build_unet(config["model"]["preset"], 10, config["model"].get("overrides")), tmp_path / "original" / "unet"
    )
    assert key() != changed_prior  # same config, other original weights
    assert stages.unlearning_state_key(config, "sa", {"steps": 5}, 0, 2, tmp_path / "original", priors) != key()


def test_unlearning_by_hand_without_the_priors_says_which_to_pass(tmp_path, tiny_config):
    with pytest.raises(
        UserError, match="method 'sa' needs its prior\\(s\\) generated, fisher: pass --priors generated=DIR fisher=DIR"
    ):
        stages.run_unlearning(tiny_config, "sa", 0, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out")


def test_a_failed_write_leaves_no_temporary_file_and_names_a_full_disk(tmp_path, monkeypatch):
    import errno

    from unlearnbench import checkpoints

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="could not write .*: no space left on its disk"):
        checkpoints.save_state(tmp_path / "state.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []  # before: a stray .state.pt.tmp-<pid> (hundreds of MB at paper scale)

    def broken(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("some other failure")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="some other failure"):  # not called a full disk
        checkpoints.save_state(tmp_path / "state.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_guidance_sweep_by_hand_names_what_it_needs(tmp_path, tiny_config):
    with pytest.raises(UserError, match=r"guidance weight -1.0: it is a finite number >= 0"):
        stages.with_guidance(tiny_config, -1.0)
    with pytest.raises(UserError, match=r"2 guidance weights and 1 forget classes need 2 --samples and 2 --out paths"):
        stages.evaluate_at_weights(
            tiny_config,
            [0.0, 1.0],
            tmp_path / "m",
            tmp_path / "data.npz",
            tmp_path / "ev",
            {0: tmp_path / "ref.npz"},
            0,
            "safemax",
            "safemax",
            None,
            [tmp_path / "s.npz"],
            [tmp_path / "a.json"],
        )
    with pytest.raises(
        UserError, match=r"an unlearned model \(safemax\) forgot one class; got --forget-class \[0, 1\]"
    ):
        stages.evaluate_at_weights(
            tiny_config,
            [0.0],
            tmp_path / "m",
            tmp_path / "data.npz",
            tmp_path / "ev",
            {0: tmp_path / "r0.npz", 1: tmp_path / "r1.npz"},
            0,
            "safemax",
            "safemax",
            None,
            [tmp_path / "s.npz"],
            [tmp_path / "a.json", tmp_path / "b.json"],
        )
    assert stages.with_guidance(tiny_config, 0)["sampler"]["guidance_w"] == 0.0
    assert tiny_config["sampler"]["guidance_w"] == 2.0  # the run's own config is left as it was


@pytest.mark.parametrize(
    "imported, message",
    [
        (
            {"sa": "theirs/class{forget_class}/unet"},
            "'imported.sa': 'sa' is the name of a method file; give the imported "
            "models another name (e.g. sa_imported)",
        ),
        ({"original": "theirs/class{forget_class}/unet"}, "'original' is the name of the base model"),
        ({"retrain": "theirs/class{forget_class}/unet"}, "'retrain' is the name of Retrain, the base recipe without"),
        ({"theirs": "theirs/unet"}, "lacks {forget_class}: a model forgets one class"),
        ({"theirs": "theirs/class{forget_class}/{run}"}, "has unknown field(s) {run}; allowed: {forget_class}, {seed}"),
        ({"theirs": "theirs/class{forget_class/unet"}, "is not a folder pattern"),
        (
            {"Theirs": "theirs/class{forget_class}/unet"},
            "'imported' has a key 'Theirs', which is not allowed; allowed: text matching ^[a-z][a-z0-9_]*$",
        ),
    ],
)
def test_a_bad_imported_model_entry_is_a_config_problem(imported, message):
    from unlearnbench.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides={"imported": imported})


def test_imported_models_missing_on_disk_are_named_before_any_job_runs(tmp_path, tiny_config):
    from unlearnbench.workflow import check_model_folders

    save_unet(build_unet("tiny", 10), tmp_path / "theirs" / "class0" / "unet")
    config = {**tiny_config, "imported": {"theirs": str(tmp_path / "theirs" / "class{forget_class}" / "unet")}}
    with pytest.raises(
        UserError,
        match=r"'imported' names 1 model\(s\) that are not there .*: no \S*theirs/class1/unet/"
        r"config.json\. Each is the folder of a UNet",
    ):
        check_model_folders(config)  # forget_classes [0, 1]: class 1's folder is missing
    save_unet(build_unet("tiny", 10), tmp_path / "theirs" / "class1" / "unet")
    check_model_folders(config)
    config["imported"]["theirs"] = str(tmp_path / "theirs" / "class{forget_class}")  # the folders holding unet/
    with pytest.raises(
        UserError,
        match=r"that are not there .*: no \S*class0/config\.json, \S*class1/config\.json "
        r"\(\S*theirs/class0 holds unet/config\.json: end the pattern with /unet\)\. "
        r".* Fix the pattern, or unlearn the missing classes with that method too",
    ):
        check_model_folders(config)


def test_an_imported_model_is_checked_against_the_run_before_use(tmp_path, tiny_config):
    """The wrong folder fails its job with what to do, and nothing is saved: not the config's model, the original,
    or weights that are not finite."""
    config = json.loads(json.dumps(tiny_config))
    adopted_original(tmp_path, config)
    config["imported"] = {"theirs": str(tmp_path / "theirs" / "class{forget_class}" / "unet")}
    save_unet(build_unet("tiny", 5), tmp_path / "theirs" / "class0" / "unet")
    shutil.copytree(tmp_path / "original" / "unet", tmp_path / "theirs" / "class1" / "unet")
    out = tmp_path / "imported"
    with pytest.raises(
        MissingResourceError,
        match=r"theirs/class0/unet is not the config's model: num_class_embeds is 6"
        r".*\. An imported model is unlearned from this run's original model"
        r".*: point 'imported.theirs' to models unlearned from it",
    ):
        stages.import_model(config, "theirs", 0, 0, tmp_path / "data.npz", tmp_path / "original", out)
    with pytest.raises(
        UserError,
        match=r"theirs/class1/unet \(theirs, forget class 1\) holds the run's original model "
        r"\(unet/\) unchanged: point 'imported.theirs' to the unlearned models",
    ):
        stages.import_model(config, "theirs", 1, 0, tmp_path / "data.npz", tmp_path / "original", out)
    poisoned = build_unet("tiny", 10)
    with torch.no_grad():
        next(poisoned.parameters()).view(-1)[:2] = float("nan")
    save_unet(poisoned, tmp_path / "theirs" / "class2" / "unet")
    from unlearnbench.errors import DivergedError

    with pytest.raises(
        DivergedError,
        match=r"imported model \S*theirs/class2/unet: 2 of [\d,]+ values are NaN or inf\. "
        r"Its weights are unusable: replace the folder, or take 'theirs' out",
    ):
        stages.import_model(config, "theirs", 2, 0, tmp_path / "data.npz", tmp_path / "original", out)
    assert not out.exists()


def test_a_model_folder_replaced_keeping_its_old_file_times_is_not_kept_scored(tmp_path, tiny_config, monkeypatch):
    """Snakemake compares times, so a user's folder overwritten by `cp -p` (older files than the run's record of it)
    would keep the replaced model's scores; the workflow refuses to go on until its files are touched."""
    import os

    from unlearnbench.workflow import check_scored_copies

    monkeypatch.chdir(tmp_path)
    config = json.loads(json.dumps(tiny_config))
    models = tmp_path / "results" / config["run_name"] / "models"
    mine = tmp_path / "mine"
    adopted_original(tmp_path, config)
    stages.train_base(config, tmp_path / "data.npz", models / "original")  # the run adopts base.checkpoint
    config["imported"] = {"theirs": "theirs/class{forget_class}/unet"}
    config["forget_classes"] = [0]
    torch.manual_seed(2)
    save_unet(build_unet("tiny", 10), tmp_path / "theirs" / "class0" / "unet")
    stages.import_model(
        config, "theirs", 0, 0, tmp_path / "data.npz", models / "original", models / "theirs/class0/seed0"
    )
    check_scored_copies(config)  # as adopted: nothing to say
    old = (models / "original" / "train.json").stat().st_mtime - 60
    for folder in (tmp_path / "theirs" / "class0" / "unet", mine / "unet_ema"):  # other weights, files kept old
        torch.manual_seed(3)
        save_unet(build_unet("tiny", 10), folder)
        for path in folder.iterdir():
            os.utime(path, (old, old))
    with pytest.raises(
        UserError,
        match=r"2 model folder\(s\) changed since this run adopted them, but their files "
        r"are older .*: \S*mine/unet_ema \(adopted as \S*models/original\); "
        r"theirs/class0/unet \(adopted as \S*models/theirs/class0/seed0\)\. Run "
        r"`touch \S*mine/unet_ema/\* theirs/class0/unet/\*`",
    ):
        check_scored_copies(config)
    for path in (tmp_path / "theirs" / "class0" / "unet").iterdir():
        path.touch()  # newer than the record: Snakemake reimports it itself
    with pytest.raises(UserError, match=r"^1 model folder\(s\) .*: \S*mine/unet_ema "):
        check_scored_copies(config)
    config["base"]["checkpoint"] = str(tmp_path / "elsewhere")  # another folder: the jobs' params change, so no check
    shutil.copytree(mine, tmp_path / "elsewhere", copy_function=shutil.copy2)
    check_scored_copies(config)


def test_validate_config_names_a_missing_model_folder_as_the_workflow_does(tmp_path):
    (tmp_path / "mine.yaml").write_text("imported: {theirs: 'theirs/class{forget_class}/unet'}\n")
    code, out = run_cli(["validate-config", "mine.yaml"], tmp_path)
    assert code == 2 and "'imported' names 10 model(s) that are not there" in out and "Traceback" not in out, out
    (tmp_path / "mine.yaml").write_text("base: {checkpoint: nowhere}\n")
    code, out = run_cli(["validate-config", "mine.yaml"], tmp_path)
    assert code == 2 and "'base.checkpoint' = 'nowhere' is not a folder" in out, out
    (tmp_path / "empty" / "unet").mkdir(parents=True)  # a folder, but no saved UNet in it
    (tmp_path / "mine.yaml").write_text("base: {checkpoint: empty}\n")
    code, out = run_cli(["validate-config", "mine.yaml"], tmp_path)
    assert code == 2 and "'base.checkpoint' = 'empty' has no unet/config.json and no unet_ema/config.json" in out, out
    # a saved UNet of another architecture: refused from its config.json, before a job would load its weights
    for sub in ("unet", "unet_ema"):
        save_unet(build_unet("tiny", 10, {"dropout": 0.1}), tmp_path / "other" / sub)
    (tmp_path / "mine.yaml").write_text("base: {checkpoint: other}\n")
    code, out = run_cli(["validate-config", "mine.yaml"], tmp_path)
    assert code == 2 and "other/unet is not the config's model: dropout is 0.1, the config needs 0.0" in out, out
    assert "describe this one in the config's model.overrides" in out and "Traceback" not in out
    (tmp_path / "mine.yaml").write_text("base: {checkpoint: other}\nmodel: {overrides: {dropout: 0.1}}\n")
    assert run_cli(["validate-config", "mine.yaml"], tmp_path)[0] == 0
    (tmp_path / "mine.yaml").write_text("imported: {theirs: 'other/unet{forget_class}'}\nforget_classes: [0]\n")
    (tmp_path / "other" / "unet").rename(tmp_path / "other" / "unet0")
    code, out = run_cli(["validate-config", "mine.yaml"], tmp_path)
    assert code == 2 and "other/unet0 is not the config's model: dropout is 0.1" in out, out
    assert "point 'imported.theirs' to models unlearned from it" in out and "model.overrides" not in out, out


def test_a_cut_short_record_or_data_file_is_named_with_what_to_do(tmp_path, tiny_config):
    """An emptied metrics record, evaluator record or data.npz: the job says which file and to delete it and rerun,
    not a JSONDecodeError or BadZipFile traceback."""
    from unlearnbench.checkpoints import read_json
    from unlearnbench.data import ImageData
    from unlearnbench.report import collect_records

    record = tmp_path / "metrics" / "sa" / "class1" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text("")
    with pytest.raises(
        MissingResourceError,
        match=r"seed0\.json is not a valid JSON record \(.*\): it was cut short "
        r"or overwritten\. Delete it and rerun",
    ):
        collect_records([record])
    record.write_text('{"method": "sa", "forget')
    with pytest.raises(MissingResourceError, match="is not a valid JSON record"):
        read_json(record)
    data = tmp_path / "data.npz"
    stages.prepare_data(tiny_config, data)
    ImageData.load(data)
    data.write_bytes(data.read_bytes()[:500])
    with pytest.raises(
        MissingResourceError,
        match=r"prepared data \S*data\.npz cannot be read \(BadZipFile: .*\)"
        r".* Delete it and rerun: the workflow's prepare_data step remakes it",
    ):
        ImageData.load(data)


def test_set_overrides_are_checked_like_method_params(tmp_path, tiny_config):
    """`unlearnbench unlearn --set` (ablation values) meets the method's PARAM_SCHEMA before any work, and a name the
    method lacks is refused, as in a config's method_params."""
    with pytest.raises(UserError, match=r"safemax: '--set.steps' = \"abc\" is not allowed; allowed: type integer"):
        stages.run_unlearning(
            tiny_config,
            "safemax",
            0,
            0,
            tmp_path / "data.npz",
            tmp_path / "original",
            tmp_path / "out",
            None,
            stages.parse_overrides(["steps=abc"]),
        )
    with pytest.raises(UserError, match=r"safemax: unknown key\(s\) stepz under '--set'; allowed: .*steps"):
        stages.run_unlearning(
            tiny_config,
            "safemax",
            0,
            0,
            tmp_path / "data.npz",
            tmp_path / "original",
            tmp_path / "out",
            None,
            {"stepz": 3},
        )
    assert not (tmp_path / "out").exists()


def test_an_unclosed_list_on_the_command_line_is_named():
    from unlearnbench.config import ConfigError, load_config

    with pytest.raises(
        ConfigError,
        match=r"'methods' = \"\[sa,salun\" is not allowed; allowed: type array \(its '\[' "
        r"is not closed: \[a, b\]\)",
    ):
        load_config(overrides={"methods": "[sa,salun"})


def test_a_command_typed_by_hand_does_not_overwrite_a_finished_model(tmp_path, tiny_config):
    """`unlearnbench train-base --out <a trained model>` would replace it (the workflow's jobs never meet one:
    Snakemake deletes a job's outputs first)."""
    config = write_config(tmp_path, tiny_config)
    stages.prepare_data(tiny_config, tmp_path / "data.npz")
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "train.json").write_text("{}")
    code, out = run_cli(["train-base", "--config", str(config), "--data", "data.npz", "--out", "original"], tmp_path)
    assert code == 2 and "original holds a finished result (original/train.json): train-base would replace it" in out, (
        out
    )
    assert (tmp_path / "original" / "train.json").read_text() == "{}" and "Traceback" not in out
