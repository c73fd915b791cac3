"""Opt-in end-to-end test under a real single-node SLURM: runs scripts/slurm_test.sh.

It installs packages and starts daemons, so it runs only where asked for, as root:
    sudo UNLEARNBENCH_SLURM_TEST=1 /path/to/venv/bin/python -m pytest tests/test_slurm.py
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_test.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("UNLEARNBENCH_SLURM_TEST") != "1",
        reason="SLURM end-to-end test is opt-in: set UNLEARNBENCH_SLURM_TEST=1 (as root)",
    ),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="SLURM end-to-end test needs root (apt-get install, slurmctld/slurmd/munged)",
    ),
]


def test_workflow_under_slurm_matches_local_run():
    env = dict(os.environ)
    # SLURM jobs inherit the submitting environment: put this interpreter's environment (snakemake,
    # the executor plugin, unlearnbench) first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("REPO", str(ROOT))
    # The script bounds each workflow run itself (SLURM_TEST_TIMEOUT, default 1080 s); this is a last resort.
    timeout = 2 * int(env.get("SLURM_TEST_TIMEOUT", "1080")) + 300
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script's trap stops its runs, cancels its jobs and stops its daemons
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"scripts/slurm_test.sh still running after {timeout} s:\n{out[-6000:]}")
    print(out)
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"scripts/slurm_test.sh exited {proc.returncode}:\n{tail}"
    assert "PASSED" in out
