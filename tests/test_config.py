"""Config validation: bad values stop the run with a message naming key, value and what is allowed."""
import copy
import subprocess
import sys

import pytest

from unlearnbench.config import ConfigError, load_config, method_params


@pytest.mark.parametrize("override, expected", [
    ({"dataset": "mnist"}, "'dataset' = \"mnist\" is not allowed; allowed: one of 'digits', 'cifar10'"),
    ({"forget_classes": [0, 12]}, "'forget_classes[1]' = 12 is not allowed; allowed: type integer, >= 0, <= 9"),
    ({"forget_classes": ["a"]}, "'forget_classes[0]' = \"a\" is not allowed; allowed: type integer"),
    ({"seeds": [0, 0]}, "'seeds' = [0, 0] is not allowed; allowed: no repeated entries"),
    ({"methods": ["nope"]}, "'methods[0]' = 'nope' is not a method; allowed: sa, safemax, salun"),
    ({"methods": "safemax"}, "'methods' = \"safemax\" is not allowed; allowed: type array"),
    ({"sampler": {"steps": 0}}, "'sampler.steps' = 0 is not allowed; allowed: type integer, >= 1"),
    ({"sampler": {"steps": 2000}}, "'sampler.steps' = 2000 exceeds 'diffusion.timesteps' = 1000"),
    ({"fid": {"backend": "clip"}}, "'fid.backend' = \"clip\" is not allowed; allowed: one of 'classifier', 'inception'"),
    ({"typo_key": 1}, "unknown key(s) typo_key under '(top level)'"),
    ({"device": "tpu"}, "'device' = \"tpu\" is not allowed; allowed: one of 'auto', 'cpu', 'cuda'"),
])
def test_bad_values_are_refused_with_a_clear_message(root, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override, methods_dir=root / "methods")
    assert expected in str(err.value)


def test_shipped_configs_are_valid(root):
    for name in ("test.yaml",):
        load_config(root / "config" / name, methods_dir=root / "methods")
    load_config(methods_dir=root / "methods")


def test_method_params_reject_unknown_keys(root):
    with pytest.raises(ConfigError, match="unknown key\\(s\\) stpes under 'method_params.safemax'; allowed: .*steps"):
        load_config(overrides={"method_params": {"safemax": {"stpes": 3}}}, methods_dir=root / "methods")


def test_method_params_layering(tiny_config):
    defaults = {"steps": 1, "lr": 2.0, "batch_size": 9}
    cfg = copy.deepcopy(tiny_config)
    cfg["method_params"]["safemax"] = {"steps": 5}
    assert method_params(cfg, "safemax", defaults, {"lr": 3.0}) == {"steps": 5, "lr": 3.0, "batch_size": 9}


def test_snakemake_refuses_bad_config_before_any_job(root, tmp_path):
    """`snakemake --config forget_classes=[42]` stops at parse time, no traceback, nothing run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: badrun\nforget_classes: [0, 42]\nmethods: [safemax, unknown_method]\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", f"--configfile={bad}",
                           "results/table.csv"], cwd=root, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'forget_classes[1]' = 42 is not allowed" in out
    assert "Traceback" not in out
    assert not (root / "results" / "badrun").exists()
