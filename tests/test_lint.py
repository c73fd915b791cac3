"""`snakemake --lint` on the workflow in place: every lint is one of the accepted exceptions below, each with its
reason (docs/architecture.md). A new lint fails the test: a rule's shell that reads a global such as {RUN} (pass it
through `params:`, made from the rule's input or output where it is a path), a rule without `log:`, a path added with
`+`. Snakemake lints every snakefile the Snakefile includes and every rule defined under the config given;
config/test.yaml turns on every optional part (ablation, guidance sweep, finding study), so a rule or a rules/*.smk
file added later is linted with no change here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVERY_RULE = "every rule"

# (lint title, what it applies to: EVERY_RULE, a rule's name or a snakefile's path from the repo root) -> why
ALLOWED = {
    (
        "Shell command directly uses variable CFG from outside of the rule",
        EVERY_RULE,
    ): "the resolved config (results/<run>/configs/<hash>.yaml): as a params value it would rerun every job at each "
    "config edit (each rule's `fp` param reruns it for the sections it reads), and as an input it does not exist "
    "when the DAG is built (onstart writes it)",
    (
        "Specify a conda environment or container for each rule.",
        EVERY_RULE,
    ): "environment.yml installs the suite itself (-e .[test], -r requirements.lock, both relative to the repo), "
    "which a per-rule environment cannot: Snakemake creates it from a copy of the yaml under .snakemake/conda/",
}

# `snakemake --lint json` as the command line runs it (same arguments, workflow profile, cwd), printing JSON.
# Snakemake 9.27 prints text whatever the format (cli.py calls lint() without it) and cannot write a snakefile's
# lint as JSON (its path is a SourceFile): this runs the same two linters as Workflow.lint and prints their JSON,
# with the rules and snakefiles they read.
LINT_AS_JSON = """
import json, sys
from snakemake import cli
from snakemake.linting.rules import RuleLinter
from snakemake.linting.snakefiles import SnakefileLinter
from snakemake.workflow import Workflow

def lint(workflow, **_):
    snakefiles, _ = SnakefileLinter(workflow, workflow.included).lint(json=True)
    rules, _ = RuleLinter(workflow, workflow.rules).lint(json=True)
    print(json.dumps({"snakefiles": snakefiles, "rules": rules, "linted_rules": [r.name for r in workflow.rules],
                      "linted_snakefiles": list(workflow.included)}, default=str))
    return False

Workflow.lint = lint
cli.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def lint():
    proc = subprocess.run(
        [sys.executable, "-c", LINT_AS_JSON, "--lint", "json", "--configfile", "config/test.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def relative(path: str) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def lints(report) -> list[tuple[str, str, str]]:
    """(title, rule name or "", snakefile from the repo root) of every lint."""
    found = []
    for kind in ("rules", "snakefiles"):
        for item in report[kind]:
            where = item["for"]
            found += [(lint["title"], where.get("rule", ""), relative(where["snakefile"])) for lint in item["lints"]]
    return found


def accepted_by(title: str, rule: str, snakefile: str):
    for allowed_title, scope in ALLOWED:
        if allowed_title == title and (scope == snakefile or (rule and scope in (EVERY_RULE, rule))):
            return allowed_title, scope
    return None


def test_every_lint_is_an_accepted_exception(lint):
    new = [
        f"{snakefile}: {f'rule {rule}: ' if rule else ''}{title}"
        for title, rule, snakefile in lints(lint)
        if not accepted_by(title, rule, snakefile)
    ]
    assert not new, (
        "snakemake --lint: fix these, or add them to ALLOWED in tests/test_lint.py with the reason (and "
        "to docs/architecture.md):\n" + "\n".join(new)
    )


def test_every_accepted_exception_still_occurs(lint):
    """An exception that no lint needs any more is taken out of ALLOWED (and docs/architecture.md)."""
    used = {accepted_by(*found) for found in lints(lint)}
    assert not set(ALLOWED) - used, set(ALLOWED) - used


def test_the_lint_reads_every_rule_and_rules_file(lint):
    """Every rules/*.smk is included, and config/test.yaml defines every rule written in them (none is skipped by
    an `if` on the config), so all of them were linted."""
    snakefiles = {relative(path) for path in lint["linted_snakefiles"]}
    files = ["Snakefile", *(f"rules/{path.name}" for path in sorted((ROOT / "rules").glob("*.smk")))]
    assert not set(files) - snakefiles, f"not included by the Snakefile: {sorted(set(files) - snakefiles)}"
    written = {name for path in files for name in re.findall(r"^\s*rule (\w+):", (ROOT / path).read_text(), re.M)}
    missing = written - set(lint["linted_rules"])
    assert not missing, f"rules config/test.yaml does not define (so not linted): {sorted(missing)}"
