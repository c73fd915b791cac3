"""Every rule that runs a network on the device declares a GPU (`resources: gpu=GPU_JOB`, rules/common.smk), none
where the config says `device: cpu`; the profiles only cap or map it, so a new rule needs no profile entry."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# CLI commands that train or sample a UNet (or train an evaluator) on config `device`; scoring, FID references
# and tables are CPU stages by design (docs/cluster.md).
DEVICE_COMMANDS = {
    "train-base",
    "train-evaluator",
    "prior",
    "unlearn",
    "import-model",
    "sample",
    "evaluate",
    "evaluate-guidance",
    "denoiser-norms",
    "attack",
}


def rule_blocks() -> dict[str, str]:
    """{rule name: its text} for every rule in rules/*.smk."""
    blocks = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for match in re.finditer(r"^\s*rule (\w+):(.*?)(?=^\s*rule \w+:|\Z)", path.read_text(), re.M | re.S):
            blocks[match.group(1)] = match.group(2)
    return blocks


def rule_commands() -> dict[str, str]:
    """{rule name: the `unlearnbench` command its shell runs}."""
    commands = {}
    for rule, text in rule_blocks().items():
        command = re.search(r"[\"']unlearnbench ([a-z-]+)", text)  # a shell string that calls it
        if command:
            commands[rule] = command.group(1)
    return commands


def test_rules_are_found():
    commands = rule_commands()
    assert commands["unlearn"] == "unlearn" and commands["sweep_unlearned"] == "evaluate-guidance"
    assert commands["aggregate"] == "aggregate" and commands["attack"] == "attack"


def test_every_rule_that_runs_a_network_declares_a_gpu_and_no_other_does():
    blocks = rule_blocks()
    declares = {rule for rule, text in blocks.items() if re.search(r"^\s*resources:.*\bgpu=GPU_JOB\b", text, re.M)}
    device_rules = {rule for rule, command in rule_commands().items() if command in DEVICE_COMMANDS}
    assert declares == device_rules, (
        f"missing: {sorted(device_rules - declares)}; not a network: {sorted(declares - device_rules)}"
    )


@pytest.mark.parametrize("profile", ["slurm", "local-gpu", "slurm-test"])
def test_no_profile_keeps_a_second_list_of_gpu_rules(profile):
    resources = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text()).get("set-resources") or {}
    assert not [rule for rule, values in resources.items() if "gpu" in (values or {})], profile


@pytest.mark.parametrize("device, gpus", [("auto", "1"), ("cpu", "0")])
def test_snakemake_gives_each_device_job_the_gpus_the_config_allows(device, gpus):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--configfile=config/test.yaml",
            "results/table.csv",
            "--config",
            f"device={device}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, re.M | re.S)
    seen = {rule: re.search(r"gpu=(\d+)", text) for rule, text in jobs}
    assert seen["train_base"] and seen["train_base"].group(1) == gpus
    assert seen["unlearn"].group(1) == gpus and seen["aggregate"] is None
