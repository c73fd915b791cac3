"""The shipped profiles give a GPU to every rule that runs a network on the device (sampling included)."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# CLI commands that train or sample a UNet (or train the evaluator) on config `device`; scoring, FID references
# and tables are CPU stages by design (docs/cluster.md).
DEVICE_COMMANDS = {"train-base", "train-evaluator", "prior", "unlearn", "import-model", "sample", "evaluate",
                   "evaluate-guidance", "denoiser-norms"}
GPUS_PER_PROFILE = {"slurm": 1, "local-gpu": 1, "slurm-test": 0}  # slurm-test: its node has none


def rule_commands() -> dict[str, str]:
    """{rule name: the `unlearnbench` command its shell runs} for every rule in rules/*.smk."""
    commands = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"^\s*rule (\w+):(.*?)(?=^\s*rule \w+:|\Z)", text, re.M | re.S):
            command = re.search(r"[\"']unlearnbench ([a-z-]+)", match.group(2))  # a shell string that calls it
            if command:
                commands[match.group(1)] = command.group(1)
    return commands


def test_rules_are_found():
    commands = rule_commands()
    assert commands["unlearn"] == "unlearn" and commands["sweep_unlearned"] == "evaluate-guidance"
    assert commands["aggregate"] == "aggregate"


@pytest.mark.parametrize("profile, gpus", GPUS_PER_PROFILE.items())
def test_every_rule_that_runs_a_network_gets_a_gpu(profile, gpus):
    resources = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())["set-resources"]
    device_rules = sorted(rule for rule, command in rule_commands().items() if command in DEVICE_COMMANDS)
    missing = [rule for rule in device_rules if (resources.get(rule) or {}).get("gpu") != gpus]
    assert not missing, f"profiles/{profile}: set gpu: {gpus} for {missing}"
