"""Copies of the workflow in temporary folders, and Snakemake run in them as a user runs it (the workflow tests)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ["Snakefile", "rules", "config", "methods", "report"]
METRICS = ["fid", "kid", "H", "UA", "forget_prob", "remaining_acc"]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def copy_library(workdir: Path) -> None:
    """A private copy of the suite's packages (with the config/ and methods/ they find beside them) in workdir/lib,
    which `snakemake()` puts first on the jobs' PYTHONPATH: a test may edit the suite's code there without touching
    the checkout."""
    for package in ("unlearnbench", "metrics", "methods", "config"):
        shutil.copytree(ROOT / package, workdir / "lib" / package, ignore=shutil.ignore_patterns("__pycache__"))


def snakemake(workdir: Path, *args, timeout=900, check=True):
    env = {**os.environ, "UNLEARNBENCH_QUIET": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if (workdir / "lib").is_dir():
        env["PYTHONPATH"] = str(workdir / "lib")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted(workdir.glob("results/*/logs/**/*.log")))
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}"
        )
    return proc
