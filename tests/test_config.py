"""Config validation: bad values stop the run with a message naming key, value and what is allowed."""

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnbench.config import ConfigError, load_config, method_params

# the shipped method files, as every "allowed:" message lists them
SHIPPED = ", ".join(
    sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "methods").glob("*.py") if p.stem != "__init__")
)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"dataset": "mnist"}, "'dataset' = \"mnist\" is not allowed; allowed: one of 'digits', 'cifar10'"),
        ({"forget_classes": [0, 12]}, "'forget_classes[1]' = 12 is not allowed; allowed: type integer, >= 0, <= 9"),
        ({"forget_classes": ["a"]}, "'forget_classes[0]' = \"a\" is not allowed; allowed: type integer"),
        ({"seeds": [0, 0]}, "'seeds' = [0, 0] is not allowed; allowed: no repeated entries"),
        ({"seeds": []}, "'seeds' = [] is not allowed; allowed: at least 1 entry"),
        ({"methods": ["nope"]}, f"'methods[0]' = 'nope' is not a method; allowed: {SHIPPED}"),
        (
            {"methods": "safemax"},
            "'methods' = \"safemax\" is not allowed; allowed: type array (a list, even of one: [safemax]",
        ),
        ({"sampler": {"steps": 0}}, "'sampler.steps' = 0 is not allowed; allowed: type integer, >= 1"),
        ({"sampler": {"steps": 2000}}, "'sampler.steps' = 2000 exceeds 'diffusion.timesteps' = 1000"),
        (
            {"fid": {"backend": "clip"}},
            "'fid.backend' = \"clip\" is not allowed; allowed: one of 'classifier', 'inception'",
        ),
        ({"typo_key": 1}, "unknown key(s) typo_key under '(top level)'"),
        (
            {"samplr": {"steps": 3}},
            "unknown key(s) samplr under '(top level)'; allowed: only the keys ablation, base, ",
        ),
        ({"samplr": {"steps": 3}}, "; did you mean sampler?"),  # a slip is named as one
        ({"sampler": {"stesp": 3}}, "guidance_w, steps; did you mean steps?"),
        ({"method_params": {"safemax": {"lamda": 2, "stpes": 5}}}, "did you mean lambda for lamda, steps for stpes?"),
        ({"device": "tpu"}, "'device' = \"tpu\" is not allowed; allowed: one of 'auto', 'cpu', 'cuda'"),
        (
            {"run_name": 123},
            "'run_name' = 123 is not allowed; allowed: type string (text: quote it in a YAML file as "
            'run_name: "..."; --config cannot give text of digits only)',
        ),
        # NaN passes every bound of a schema (each comparison with it is False)
        ({"sampler": {"guidance_w": float("nan")}}, "'sampler.guidance_w' is nan; allowed: a finite number"),
        (
            {"method_params": {"safemax": {"lr": float("inf")}}},
            "'method_params.safemax.lr' is inf; allowed: a finite number",
        ),
        # the model section must make a UNet for the dataset's images, else train_base fails in torch
        (
            {"model": {"preset": "paper"}},
            "in_channels 3 (needs 1), out_channels 3 (needs 1), sample_size 32 (needs 8), "
            "not one for the 1x8x8 images of digits; use 'model.preset' 'tiny' for digits",
        ),
        ({"dataset": "cifar10"}, "'model.preset' = 'tiny' makes a UNet with in_channels 1 (needs 3)"),
        (
            {"model": {"overrides": {"sample_size": 16}}},
            "sample_size 16 (needs 8), not one for the 1x8x8 images of "
            "digits; correct or remove sample_size in 'model.overrides'",
        ),
        (
            {"model": {"overrides": {"dropot": 0.1}}},
            "'model.overrides' = {\"dropot\": 0.1}: UNet config keys ['dropot'] are not UNet2DModel arguments",
        ),
        (
            {"model": {"overrides": {"norm_num_groups": 5}}},
            "does not make a UNet that runs on the 1x8x8 images of digits "
            "(ValueError: num_channels (16) must be divisible by num_groups (5))",
        ),
        # four halvings of 8x8: the fourth leaves 1x1 again, whose upsampled 2x2 does not meet its 1x1 skip connection
        (
            {
                "model": {
                    "overrides": {
                        "block_out_channels": [16, 32, 32, 32, 32],
                        "down_block_types": ["DownBlock2D"] * 5,
                        "up_block_types": ["UpBlock2D"] * 5,
                    }
                }
            },
            "does not make a UNet that runs on the 1x8x8 images of digits (RuntimeError: Sizes of tensors must match",
        ),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(root, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override, methods_dir=root / "methods")
    assert expected in str(err.value)


def test_model_overrides_that_fit_the_data_are_kept(root):
    config = load_config(
        overrides={"model": {"overrides": {"dropout": 0.1, "block_out_channels": [16, 16]}}},
        methods_dir=root / "methods",
    )
    assert config["model"]["overrides"] == {"dropout": 0.1, "block_out_channels": [16, 16]}
    from unlearnbench.networks import build_unet  # and the UNet the jobs build has them

    unet = build_unet(config["model"]["preset"], 10, config["model"]["overrides"])
    assert unet.config.dropout == 0.1 and tuple(unet.config.block_out_channels) == (16, 16)


def test_shipped_configs_are_valid(root):
    for name in ("test.yaml", "paper.yaml"):
        load_config(root / "config" / name, methods_dir=root / "methods")
    load_config(methods_dir=root / "methods")


def test_paper_config_restates_the_methods_paper_defaults(root):
    """paper.yaml must reset every param default.yaml scales down, to the method files' (paper) DEFAULTS."""
    from unlearnbench.method_api import load_method

    config = load_config(root / "config" / "paper.yaml", methods_dir=root / "methods")
    for method in ("sa", "salun", "safemax"):
        module = load_method(method, root / "methods")
        defaults = module.DEFAULTS
        resolved = method_params(config, method, module)
        differing = {k: (resolved[k], defaults[k]) for k in defaults if resolved[k] != defaults[k]}
        assert differing == {}, (method, differing)
        assert config["method_params"][method].get("steps") == defaults["steps"]


def test_paper_config_sets_every_key_the_defaults_scale_down(root):
    """paper.yaml is merged onto default.yaml: a key it leaves out keeps the digits value."""
    from unlearnbench.config import read_yaml

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else key
            yield from leaves(value, path) if isinstance(value, dict) else [path]

    paper = set(leaves(read_yaml(root / "config" / "paper.yaml")))
    inherited = set(leaves(read_yaml(root / "config" / "default.yaml"))) - paper
    assert inherited == {"data.test_fraction", "data.split_seed"}  # the digits split only; CIFAR-10 has its own


def test_paper_config_plans_the_whole_dag(root, tmp_path):
    for name in ("Snakefile", "rules", "config", "methods"):
        src = root / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--configfile=config/paper.yaml",
            "results/table.csv",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    # 10 forget classes x 3 methods, SA's two shared priors, SalUn's mask per class, from training up
    # each unlearning job draws its model's samples; one job per method and seed scores the 10 models
    assert counts["unlearn"] == "30" and counts["evaluate_method"] == "3", counts
    assert counts["prior_shared"] == "2" and counts["prior_per_class"] == "10", counts
    assert counts["train_base"] == "1" and counts["train_evaluator"] == "1", counts
    assert "results/paper/" in out
    # --config passes list items as text: seeds=[0,1] means two integer seeds (twice the jobs per method)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--configfile=config/paper.yaml",
            "--config",
            "seeds=[0,1]",
            "--",
            "results/table.csv",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert counts["unlearn"] == "30" and counts["evaluate_method"] == "6", counts  # a job per class does both seeds


def test_method_params_reject_unknown_keys(root, tmp_path):
    with pytest.raises(ConfigError, match="unknown key\\(s\\) stpes under 'method_params.safemax'; allowed: .*steps"):
        load_config(overrides={"method_params": {"safemax": {"stpes": 3}}}, methods_dir=root / "methods")
    shutil.copytree(root / "methods", tmp_path / "methods")
    (tmp_path / "methods" / "plain.py").write_text("def unlearn(ctx): pass\n")
    with pytest.raises(
        ConfigError, match=re.escape("under 'method_params.plain'; allowed: none (the method file's DEFAULTS is empty)")
    ):
        load_config(overrides={"method_params": {"plain": {"lr": 3}}}, methods_dir=tmp_path / "methods")


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"safemax": {"steps": 0}}, "'method_params.safemax.steps' = 0 is not allowed; allowed: type integer, >= 1"),
        ({"safemax": {"steps": -5}}, "'method_params.safemax.steps' = -5 is not allowed"),
        ({"safemax": {"steps": 60.5}}, "'method_params.safemax.steps' = 60.5 is not allowed; allowed: type integer"),
        ({"safemax": {"steps": None}}, "'method_params.safemax.steps' = null is not allowed"),
        ({"safemax": {"lr": -1}}, "'method_params.safemax.lr' = -1 is not allowed; allowed: type number, > 0"),
        (
            {"safemax": {"target": "bogus"}},
            "'method_params.safemax.target' = \"bogus\" is not allowed; allowed: one of",
        ),
        ({"salun": {"batch_size": 0}}, "'method_params.salun.batch_size' = 0 is not allowed"),
        (
            {"salun": {"mask_ratio": 1.5}},
            "'method_params.salun.mask_ratio' = 1.5 is not allowed; allowed: type number, > 0, <= 1",
        ),
        ({"salun": {"grad_clip": 0}}, "'method_params.salun.grad_clip' = 0 is not allowed"),
        ({"sa": {"fisher_images": "many"}}, "'method_params.sa.fisher_images' = \"many\" is not allowed"),
        ({"sa": {"ema_decay": 1.0}}, "'method_params.sa.ema_decay' = 1.0 is not allowed"),
        ({"safemx": {"steps": 5}}, f"unknown method 'safemx' under 'method_params'; allowed: {SHIPPED}"),
    ],
)
def test_method_params_are_checked_against_the_methods_schemas(root, params, expected):
    """A bad value stops the run before any job: 0 steps would pass the original model off as unlearned."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"method_params": params}, methods_dir=root / "methods")
    assert expected in str(err.value)


def test_ablation_is_checked_against_its_method(root):
    with pytest.raises(ConfigError, match="'ablation.method' = 'safemx' is not a method"):
        load_config(overrides={"ablation": {"method": "safemx"}}, methods_dir=root / "methods")
    with pytest.raises(ConfigError, match=r"'ablation.values\[1\]' = -1 is not allowed; allowed: type number, >= 0"):
        load_config(
            overrides={"ablation": {"method": "safemax", "param": "lambda", "values": [0, -1]}},
            methods_dir=root / "methods",
        )
    # the figure plots metrics against the value: text (target) or null (grad_clip's "no clipping") cannot be a point
    with pytest.raises(
        ConfigError,
        match="'ablation.param' = 'target' is not a number parameter of safemax: the "
        "ablation figure plots the metrics against a number; allowed: batch_size, ",
    ):
        load_config(overrides={"ablation": {"param": "target", "values": ["x_t"]}}, methods_dir=root / "methods")
    with pytest.raises(ConfigError, match=r"'ablation.values\[1\]' = null is not allowed; allowed: type number, > 0"):
        load_config(overrides={"ablation": {"param": "grad_clip", "values": [1, None]}}, methods_dir=root / "methods")
    config = load_config(
        overrides={"ablation": {"param": "grad_clip", "values": ["0.5", 2]}}, methods_dir=root / "methods"
    )
    assert config["ablation"]["values"] == [0.5, 2]


def test_numbers_given_as_text_become_numbers(root):
    """Snakemake's --config passes list items as text and YAML 1.1 reads 1e-3 as text: both mean numbers."""
    config = load_config(
        overrides={
            "seeds": ["0", "1"],
            "base": {"lr": "1e-3"},
            "run_name": "2024",
            "method_params": {
                "safemax": {"steps": "60", "lr": "2e-4"},
                "sa": {"steps": 30.0},
                "salun": {"mask_ratio": "0.25"},
            },
            "ablation": {"values": ["0", "2.5"]},
        },
        methods_dir=root / "methods",
    )
    assert config["seeds"] == [0, 1] and config["base"]["lr"] == 1e-3 and config["run_name"] == "2024"
    assert config["method_params"]["safemax"]["steps"] == 60 and config["method_params"]["safemax"]["lr"] == 2e-4
    assert (
        type(config["method_params"]["sa"]["steps"]) is int and config["method_params"]["salun"]["mask_ratio"] == 0.25
    )
    assert config["ablation"]["values"] == [0, 2.5]
    with pytest.raises(ConfigError, match="'seeds\\[0\\]' = \"x\" is not allowed"):
        load_config(overrides={"seeds": ["x"]}, methods_dir=root / "methods")
    # ... and `--config 'base={checkpoint: null}'` means null, where the key allows it, not a folder named "null"
    config = load_config(
        overrides={"base": {"checkpoint": "null"}, "method_params": {"sa": {"fisher_images": "~"}}},
        methods_dir=root / "methods",
    )
    assert config["base"]["checkpoint"] is None and config["method_params"]["sa"]["fisher_images"] is None
    with pytest.raises(ConfigError, match="'seeds' = \"null\" is not allowed; allowed: type array$"):
        load_config(overrides={"seeds": "null"}, methods_dir=root / "methods")


def test_a_method_without_a_schema_is_checked_by_its_defaults_types(root, tmp_path):
    for shipped in ("sa", "salun", "safemax", "finetune"):  # default.yaml sets their params
        shutil.copy(root / "methods" / f"{shipped}.py", tmp_path)
    (tmp_path / "plain.py").write_text(
        'DEFAULTS = {"steps": 20, "lr": 1.0e-4, "mode": "a", "extra": None}\ndef unlearn(ctx):\n    pass\n'
    )
    ok = load_config(
        overrides={
            "methods": ["plain"],
            "ablation": None,
            "method_params": {"plain": {"steps": "7", "lr": 1, "mode": "b", "extra": [1]}},
        },
        methods_dir=tmp_path,
    )
    assert ok["method_params"]["plain"] == {"steps": 7, "lr": 1, "mode": "b", "extra": [1]}
    with pytest.raises(ConfigError) as err:
        load_config(
            overrides={
                "methods": ["plain"],
                "ablation": None,
                "method_params": {"plain": {"steps": 2.5, "lr": "fast", "mode": 3}},
            },
            methods_dir=tmp_path,
        )
    for key, allowed in (("steps", "integer"), ("lr", "number"), ("mode", "string")):
        assert f"'method_params.plain.{key}'" in str(err.value) and f"type {allowed}" in str(err.value)
    (tmp_path / "stray.py").write_text(
        'DEFAULTS = {"steps": 1}\nPARAM_SCHEMA = {"stesp": {}}\ndef unlearn(ctx):\n    pass\n'
    )
    from unlearnbench.errors import UserError
    from unlearnbench.method_api import load_method

    with pytest.raises(UserError, match="PARAM_SCHEMA names stesp, which DEFAULTS lacks"):
        load_method("stray", tmp_path)


def fake_method(defaults, scaled=None, changes=None):
    from types import SimpleNamespace

    return SimpleNamespace(
        DEFAULTS={**defaults, **(changes or {})},
        PUBLISHED_DEFAULTS=defaults,
        SCALED=scaled or {},
        VARIANT_CHANGES=changes or {},
    )


def test_method_params_layering(tiny_config):
    module = fake_method({"steps": 1, "lr": 2.0, "batch_size": 9})
    cfg = copy.deepcopy(tiny_config)
    cfg["method_params"]["safemax"] = {"steps": 5}
    assert method_params(cfg, "safemax", module, {"lr": 3.0}) == {"steps": 5, "lr": 3.0, "batch_size": 9}


def test_scale_rules_turn_paper_defaults_into_the_configs_values(tiny_config):
    """Each rule by hand: steps and batches x the scale factors, an EMA decay keeping its share of the start weights
    after the steps that run, a pixel-summed loss weight x 3072 / d (digits: d = 64)."""
    module = fake_method(
        {"steps": 20000, "batch_size": 128, "ema_decay": 0.9999, "alpha": 1e-3, "lr": 1e-4},
        {"steps": "steps", "batch_size": "batch", "ema_decay": "ema", "alpha": "pixel_sum_weight"},
    )
    cfg = {**copy.deepcopy(tiny_config), "scale": {"steps": 0.06, "batch": 0.5}}
    cfg["method_params"] = {}
    params, origins = method_params(cfg, "m", module, with_origins=True)
    assert params["steps"] == 1200 and params["batch_size"] == 64 and params["lr"] == 1e-4
    assert params["alpha"] == pytest.approx(1e-3 * 3072 / 64) == pytest.approx(0.048)
    assert params["ema_decay"] ** 1200 == pytest.approx(0.9999**20000)
    assert set(origins) == {"steps", "batch_size", "ema_decay", "alpha"} and all(
        o.startswith("rule") for o in origins.values()
    )
    # A value set by hand wins and is recorded as such; the EMA follows the steps that run.
    cfg["method_params"] = {"m": {"steps": 120, "batch_size": 64}}
    params, origins = method_params(cfg, "m", module, with_origins=True)
    assert params["steps"] == 120 and params["ema_decay"] ** 120 == pytest.approx(0.9999**20000)
    assert origins["steps"].startswith("config") and "1200" in origins["steps"]
    assert origins["batch_size"].startswith("rule")  # the rule's own value restated is no deviation
    # Under mean reduction both of SalUn's terms are element means: the balance needs x 3072.
    cfg["diffusion"] = {**cfg["diffusion"], "loss_reduction": "mean"}
    assert method_params(cfg, "m", module)["alpha"] == pytest.approx(3.072)
    # At the paper's scale (CIFAR-10, factors 1) every rule gives the published value.
    paper = {
        **cfg,
        "dataset": "cifar10",
        "scale": {"steps": 1, "batch": 1},
        "method_params": {},
        "diffusion": {**cfg["diffusion"], "loss_reduction": "sum"},
    }
    assert method_params(paper, "m", module, with_origins=True) == (module.DEFAULTS, {})


def test_the_default_config_runs_the_shipped_methods_by_the_rules(root):
    """SalUn's alpha and SA's Fisher in the default run: 1e-3 x 3072 / 64, and the sum over all T."""
    from unlearnbench.method_api import load_method

    config = load_config(methods_dir=root / "methods")
    salun = method_params(config, "salun", load_method("salun", root / "methods"))
    assert salun["alpha"] == pytest.approx(0.048)
    sa, origins = method_params(config, "sa", load_method("sa", root / "methods"), with_origins=True)
    assert sa["fisher_timesteps"] is None and sa["lambda"] == 10.0
    assert "lambda" not in origins and "fisher_timesteps" not in origins
    for method in ("safemax", "safemax_r", "salun", "sa"):
        params = method_params(config, method, load_method(method, root / "methods"))
        assert params["lr"] == 1e-4, method  # one learning rate for every method, as the paper
    safemax, safemax_r = (method_params(config, m, load_method(m, root / "methods")) for m in ("safemax", "safemax_r"))
    assert safemax["retain_weight"] == 0.0 and safemax_r["retain_weight"] == 1.0
    assert {k: v for k, v in safemax_r.items() if safemax[k] != v} == {"retain_weight": 1.0}


def test_a_variant_is_its_base_with_its_changes_under_its_own_name(tmp_path):
    from unlearnbench.errors import UserError
    from unlearnbench.method_api import load_method, method_sources

    (tmp_path / "base.py").write_text(
        'DEFAULTS = {"steps": 3, "w": 0.0}\nSCALED = {"steps": "steps"}\ndef unlearn(ctx):\n    return ctx\n'
    )
    (tmp_path / "base_w.py").write_text(
        'VARIANT_OF = "base"\nDISPLAY_NAME = "Base+W"\nNOTE = "w = 1"\nCHANGES = {"w": 1.0}\n'
    )
    variant, base = load_method("base_w", tmp_path), load_method("base", tmp_path)
    assert variant.unlearn is base.unlearn and variant.DEFAULTS == {"steps": 3, "w": 1.0}
    assert variant.PUBLISHED_DEFAULTS == base.DEFAULTS and variant.VARIANT_CHANGES == {"w": 1.0}
    assert variant.SCALED == base.SCALED and variant.NOTE == "w = 1" and variant.DISPLAY_NAME == "Base+W"
    assert method_sources("base_w", tmp_path) == [tmp_path / "base_w.py", tmp_path / "base.py"]
    for name, text, message in [
        (
            "no_steps",
            'DEFAULTS = {"decay": 0.9}\nSCALED = {"decay": "ema"}\ndef unlearn(ctx):\n    pass\n',
            "'ema' needs a 'steps' param",
        ),
        (
            "bad_rule",
            'DEFAULTS = {"steps": 9}\nSCALED = {"steps": "stepz"}\ndef unlearn(ctx):\n    pass\n',
            "SCALED maps params of DEFAULTS to scale rules",
        ),
        ("no_note", 'VARIANT_OF = "base"\nCHANGES = {"w": 1.0}\n', "give it NOTE"),
        (
            "own_code",
            'VARIANT_OF = "base"\nNOTE = "x"\nCHANGES = {"w": 1.0}\ndef unlearn(ctx):\n    pass\n',
            "also defines unlearn",
        ),
        ("typo", 'VARIANT_OF = "base"\nNOTE = "x"\nCHANGES = {"ww": 1.0}\n', "CHANGES names ww"),
        ("bad_base", 'VARIANT_OF = "nothere"\nNOTE = "x"\nCHANGES = {"w": 1.0}\n', "not found"),
    ]:
        (tmp_path / f"{name}.py").write_text(text)
        with pytest.raises(UserError, match=message):
            load_method(name, tmp_path)


def test_snakemake_refuses_bad_config_before_any_job(root, tmp_path):
    """`snakemake --config forget_classes=[42]` stops at parse time, no traceback, nothing run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: badrun\nforget_classes: [0, 42]\nmethods: [safemax, unknown_method]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", f"--configfile={bad}", "results/table.csv"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'forget_classes[1]' = 42 is not allowed" in out
    assert "Traceback" not in out
    assert not (root / "results" / "badrun").exists()
    bad.write_text(f"run_name: badrun\nbase: {{checkpoint: {tmp_path / 'no-such-model'}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", f"--configfile={bad}", "results/table.csv"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "'base.checkpoint' = " in out and "is not a folder" in out, out[-2000:]
    assert not (root / "results" / "badrun").exists()
    # Snakemake reads an overlay's repeated key as its last value; the workflow refuses it
    bad.write_text("run_name: badrun\nseeds: [0]\nthreads: 1\nseeds: [0, 1]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", f"--configfile={bad}", "results/table.csv"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "key 'seeds' is given twice (first on line 2)" in out, out[-2000:]
    assert not (root / "results" / "badrun").exists()


def test_an_overlays_params_for_a_method_not_run_get_a_note(tmp_path, monkeypatch, capsys):
    """Params set for a method that 'methods' forgets would be silently unused; the shipped configs, which set
    every method file's params (paper.yaml: finetune's too), give no note."""
    from unlearnbench.workflow import DEFAULT_CONFIG, load_workflow_config

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text("method_params: {finetune: {steps: 7}, safemax: {steps: 9}}\n")
    load_workflow_config({"method_params": {"finetune": {"steps": 7}}}, [str(DEFAULT_CONFIG), str(mine)])
    assert (
        "note: "
        + str(mine)
        + " sets method_params for finetune, which 'methods' (sa, salun, safemax, safemax_r) leaves "
        "out: those params are unused; add it to 'methods' to run it"
    ) in capsys.readouterr().err
    load_workflow_config({"methods": ["safemax", "finetune"]}, [str(DEFAULT_CONFIG), str(mine)])
    assert "method_params" not in capsys.readouterr().err
    paper = DEFAULT_CONFIG.parent / "paper.yaml"
    load_workflow_config(
        {"method_params": {"finetune": {"steps": 7}}, "run_name": "p"}, [str(DEFAULT_CONFIG), str(paper)]
    )
    assert "method_params" not in capsys.readouterr().err
    copied = tmp_path / "my_workflow" / "config"  # a copy of the workflow, run from its folder as Snakemake names it
    shutil.copytree(DEFAULT_CONFIG.parent, copied)
    monkeypatch.chdir(copied.parent)
    load_workflow_config({"method_params": {"finetune": {"steps": 7}}}, ["config/default.yaml", "config/test.yaml"])
    assert "method_params" not in capsys.readouterr().err


def test_an_imported_model_scored_for_several_seeds_gets_a_note():
    """A seed-free pattern reuses one model per class for every seed: its std is not the methods' kind."""
    from unlearnbench.workflow import config_notes

    config = load_config(
        overrides={
            "seeds": [0, 1],
            "imported": {"theirs": "t/class{forget_class}", "ours": "o/class{forget_class}/seed{seed}"},
        }
    )
    notes = config_notes(config)
    assert notes == [
        "'imported.theirs' has no {seed}: each class's one model is scored for each of the 2 seeds "
        "[0, 1], so its std over seeds is the sampling noise alone (the methods' also comes from their "
        "training); give one folder per seed, as .../seed{seed}/..., to compare like with like"
    ], notes
    assert config_notes({**config, "seeds": [0]}) == []


def test_an_ablation_whose_method_is_not_run_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    """`methods: [sa]` leaves SAFEMax's lambda ablation out of the figures, and says so (not silently)."""
    from unlearnbench.workflow import ablation_variants, load_workflow_config

    monkeypatch.chdir(tmp_path)  # the resolved config is written under results/<run>/configs/
    config = load_workflow_config({"run_name": "only-sa", "methods": ["sa"]})
    assert ablation_variants(config) == []
    err = capsys.readouterr().err
    assert "note: the safemax ablation (figures/only-sa/psi_ablation.png) is skipped" in err
    assert "'safemax' is not in 'methods'" in err and "ablation: null" in err
    for overrides in ({"methods": ["sa"], "ablation": None}, {"methods": ["sa", "safemax"]}):
        config = load_workflow_config({"run_name": "only-sa", **overrides})
        assert "ablation" not in capsys.readouterr().err
    # lambda = 1 is SAFEMax's own value: its main runs are that point of the ablation, not trained twice
    assert ablation_variants(config) == ["safemax-lambda=0", "safemax-lambda=50", "safemax-lambda=100"]
    config = load_workflow_config({"run_name": "only-sa", "method_params": {"safemax": {"lambda": 50}}})
    assert ablation_variants(config) == ["safemax-lambda=0", "safemax-lambda=1", "safemax-lambda=100"]
    assert "ablation" not in capsys.readouterr().err
    # an ablation of the main value alone would be a figure of one point, drawn from no run of its own
    config = load_workflow_config({"run_name": "only-sa", "ablation": {"values": [1.0]}})
    assert ablation_variants(config) == []
    assert (
        "is skipped: 'ablation.values' = [1.0] has no value but the main runs' own (lambda = 1.0)"
        in capsys.readouterr().err
    )


def test_a_config_that_is_not_yaml_text_is_refused(tmp_path):
    from unlearnbench.config import read_yaml

    binary = tmp_path / "data.npz"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="data.npz is not a text file; pass a YAML config"):
        read_yaml(binary)
    broken = tmp_path / "broken.yaml"
    broken.write_text("seeds: [0, 1\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML: line 2, column 1: expected ','"):
        read_yaml(broken)
    # PyYAML alone keeps the second value; the first would be lost without a word
    twice = tmp_path / "twice.yaml"
    twice.write_text("method_params:\n  salun:\n    steps: 2\n    lr: 1.0e-4\n    steps: 5\n")
    with pytest.raises(
        ConfigError,
        match=r"twice.yaml is not valid YAML: line 5, column 5: key 'steps' is given twice "
        r"\(first on line 3\)",
    ):
        read_yaml(twice)
    # the same key in different mappings, and YAML merge keys, are fine
    fine = tmp_path / "fine.yaml"
    fine.write_text("a: &base {steps: 1}\nb: {<<: *base, steps: 2}\nc: {steps: 3}\n")
    assert read_yaml(fine) == {"a": {"steps": 1}, "b": {"steps": 2}, "c": {"steps": 3}}


def test_rule_inputs_keep_a_linked_methods_folder_relative(tmp_path, monkeypatch):
    """A methods/ folder that is a symlink stays `methods/<name>.py` (resolving it would change, and rerun, every
    method job); files outside the workflow folder are absolute."""
    from unlearnbench.workflow import workflow_relative

    (tmp_path / "real_methods").mkdir()
    (tmp_path / "real_methods" / "sa.py").write_text("")
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "methods").symlink_to(tmp_path / "real_methods")
    monkeypatch.chdir(tmp_path / "wf")
    assert workflow_relative(Path.cwd() / "methods" / "sa.py") == "methods/sa.py"
    assert workflow_relative("methods/sa.py") == "methods/sa.py"
    assert workflow_relative(tmp_path / "real_methods" / "sa.py") == str(tmp_path / "real_methods" / "sa.py")


def test_an_unwritable_results_folder_is_named(tmp_path, monkeypatch, capsys):
    """The run writes the resolved config before its first job (Snakemake's onstart, never while the Snakefile is
    parsed): a folder it may not write is an error naming it, not a traceback."""
    import unlearnbench.workflow as workflow

    def refuse(config, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(workflow, "write_resolved", refuse)
    with pytest.raises(SystemExit):
        workflow.start_run({"run_name": "locked", "device": "cpu"})
    err = capsys.readouterr().err
    assert "error: cannot write the run's config to results/locked/configs/" in err
    assert "(Permission denied)" in err and "make results/locked/ writable" in err and "nothing was run" in err


def test_guidance_sweep_weights_are_checked_and_keep_their_digits(root):
    from unlearnbench.workflow import guidance_labels

    with pytest.raises(ConfigError, match=r"'guidance_sweep\[1\]' = -1 is not allowed"):
        load_config(overrides={"guidance_sweep": [0, -1]}, methods_dir=root / "methods")
    config = load_config(overrides={"guidance_sweep": [0, 0.5, 2, 4, 0.1234567]}, methods_dir=root / "methods")
    # the sampler's own w = 2 is the main evaluation; a label is a path part that reads back as the same weight
    assert guidance_labels(config) == ["0", "0.5", "4", "0.1234567"]
    assert [float(w) for w in guidance_labels(config)] == [0, 0.5, 4, 0.1234567]
    assert guidance_labels(load_config(overrides={"guidance_sweep": None}, methods_dir=root / "methods")) == []


def test_yaml_text_forms_of_numbers_and_keys_are_read_or_explained():
    """YAML 1.1 reads 1.0e3 as text (its exponent lacks a sign): a whole number for an integer key. `{steps:5}` (no
    space) is one key named "steps:5": the error says what YAML needs."""
    assert load_config(overrides={"evaluation": {"n_forget": "1.0e3"}})["evaluation"]["n_forget"] == 1000
    with pytest.raises(ConfigError, match=r"'evaluation.n_forget' = \"2.5\" is not allowed"):
        load_config(overrides={"evaluation": {"n_forget": "2.5"}})
    with pytest.raises(
        ConfigError,
        match=r"unknown key\(s\) steps:5 under 'sampler'; .* \(YAML needs a space after "
        r"':', as in \{steps: 5\}\)",
    ):
        load_config(overrides={"sampler": {"steps:5": None}})
