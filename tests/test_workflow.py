"""The real workflow, end to end through Snakemake, on the tiny test config (a few minutes on 2 cores).

One copy of the workflow runs the whole DAG; the tests here reuse it: a second invocation does nothing,
an independent run gives identical metrics, and a method added as one file (the README's walk-through,
followed literally) runs through the same DAG. Runs that need a fresh copy each (killed jobs, a user's
checkpoint, the paper config) are in test_workflow_isolated.py, which another xdist worker runs meanwhile.
"""

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_copies import METRICS, ROOT, copy_library, copy_workflow, snakemake

pytestmark = pytest.mark.slow  # minutes: `pytest -m "not slow"` is the quick loop


@pytest.fixture(scope="module")
def test_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    copy_library(workdir)
    snakemake(workdir, "--configfile=config/test.yaml", "results/table.csv")
    return workdir


def test_full_dag_produces_the_tables(test_run):
    results = test_run / "results"
    table = pd.read_csv(results / "table.csv", dtype={"forget_class": str})
    assert table["forget_class"].tolist() == ["0", "1", "mean", "std"]
    for method in ("SA", "SalUn", "SAFEMax", "SAFEMax+R"):
        for col in ("FID", "RTE [min]", "GPU [GB]", "H [nats]", "UA [%]"):
            assert f"{method} {col}" in table.columns
    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 5 * 2  # (original + 4 methods) x 2 classes x 1 seed
    assert set(metrics["method"]) == {"original", "sa", "salun", "safemax", "safemax_r"}
    # every row says what ran: the params in effect, and where each one off the published value came from
    params = {m: json.loads(p) for m, p in zip(metrics["method"], metrics["params"]) if m != "original"}
    origins = {m: json.loads(o) for m, o in zip(metrics["method"], metrics["param_origins"]) if m != "original"}
    assert params["safemax"]["retain_weight"] == 0.0 and params["safemax_r"]["retain_weight"] == 1.0
    assert {k for k in params["safemax"] if params["safemax"][k] != params["safemax_r"][k]} == {"retain_weight"}
    assert origins["safemax_r"]["retain_weight"].startswith("variant")
    assert params["salun"]["alpha"] == pytest.approx(1e-3 * 3072 / 64) and origins["salun"]["alpha"].startswith("rule")
    assert origins["safemax"]["steps"].startswith("config")  # test.yaml's 5 steps, set by hand
    table1 = (results / "table1.md").read_text()
    assert "SAFEMax+R: SAFEMax plus the standard loss on the remaining classes" in table1
    assert "Set by hand, not by the scale rules" in table1 and "steps = 5" in table1
    for col in (
        "rte_min",
        "prior_min",
        "gpu_peak_gb",
        "config_hash",
        "sampler_steps",
        "guidance_w",
        "n_forget_samples",
        "n_fid_real",
        "fid_backend",
        "device_name",
        "version_torch",
    ):
        assert col in metrics.columns, col
    unlearned = metrics[metrics.method != "original"]
    # each row names the weights it sampled: one original for both classes, a model of its own for every other row
    assert metrics["model_digest"].str.fullmatch("[0-9a-f]{64}").all()
    assert metrics.loc[metrics.method == "original", "model_digest"].nunique() == 1
    assert unlearned["model_digest"].nunique() == len(unlearned)
    assert (unlearned["rte_min"] > 0).all()
    assert unlearned["gpu_peak_gb"].isna().all() and (unlearned["gpu_null_reason"] == "device is cpu").all()
    assert (metrics["speed_switches"] == "none").all()  # on CPU no performance switch acts (base training's too)
    assert (metrics.loc[metrics.method == "sa", "prior_min"] > 0).all()  # SA's priors timed on their own
    assert metrics[METRICS].notna().all().all()
    for name in ("evaluator.json", "original.json", "table1.md", "table1.tex", "table2.md", "comparison.md"):
        assert (results / name).stat().st_size > 0
    assert json.loads((results / "evaluator.json").read_text())["test_accuracy"] > 80
    assert "sample_accuracy" in json.loads((results / "original.json").read_text())
    # the shared SA priors ran once for both classes; SalUn's mask once per class
    assert len(list((results / "test" / "priors" / "sa" / "fisher").glob("*/cost.json"))) == 1
    assert len(list((results / "test" / "priors" / "salun" / "mask").glob("class*/cost.json"))) == 2


def test_guidance_sweep_reevaluates_every_main_model_at_each_weight(test_run):
    """results/<run>/guidance.csv (not a default target): the main models, none retrained, sampled again at w = 0;
    the sampler's own w = 2 is the main evaluation itself."""
    import numpy as np

    proc = snakemake(test_run, "--configfile=config/test.yaml", "guidance")  # the README's target
    out = proc.stdout + proc.stderr
    for rule, count in (("sweep_original", 1), ("sweep_unlearned", 8), ("guidance_table", 1), ("figure_guidance", 1)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-3000:])
    for rule in ("train_base", "unlearn", "prior_shared", "prior_per_class", "evaluate_method", "score_original"):
        assert not re.search(rf"^{rule}\s+\d+", out, re.M), rule
    table = pd.read_csv(test_run / "results/test/guidance.csv").set_index(["guidance_w", "method", "forget_class"])
    main = pd.read_csv(test_run / "results/test/metrics.csv").set_index(["method", "forget_class"])
    assert sorted(table.index.get_level_values(0).unique()) == [0.0, 2.0]
    assert len(table) == 2 * 5 * 2  # weights x (original + 4 methods) x classes
    for column in ("fid", "H", "UA", "remaining_acc"):
        assert np.allclose(table.loc[2.0][column].sort_index(), main[column].sort_index()), column
    assert (table.loc[0.0]["fid"].sort_index() != main["fid"].sort_index()).all()  # other samples, other FIDs
    record = json.loads((test_run / "results/test/guidance/w0/metrics/safemax/class0/seed0.json").read_text())
    assert record["provenance"]["guidance_w"] == 0.0
    from unlearnbench.config import config_hash, load_config

    swept = test_run / record["provenance"]["config_path"]  # the config these records were made with, on disk
    assert swept.stem == record["provenance"]["config_hash"] == config_hash(load_config(swept))
    assert load_config(swept)["sampler"]["guidance_w"] == 0.0
    for column in (
        "config_hash",
        "provenance_seed",
        "sampler_steps",
        "n_forget_samples",
        "fid_backend",
        "sampling_device_name",
        "version_torch",
        "model_digest",
    ):  # each row says what made it
        assert table[column].notna().all(), column
    with np.load(test_run / "results/test/guidance/w0/samples/safemax/class0/seed0.npz") as f:
        assert json.loads(str(f["meta"]))["guidance_w"] == 0.0
    assert (test_run / "figures/test/guidance.png").stat().st_size > 0
    (kept,) = (test_run / "results/test/history/guidance").iterdir()  # a rerun of the sweep would not lose them
    assert (kept / "guidance.csv").read_bytes() == (test_run / "results/test/guidance.csv").read_bytes()


def test_the_finding_study_runs_its_points_and_checks_each_models_noise(test_run):
    """`snakemake finding` (test.yaml: SAFEMax on class 0, retain_weight 1 and target x_t): two new models, each
    point's denoiser check; the main run and the original are the main run's, not trained again."""
    proc = snakemake(test_run, "--configfile=config/test.yaml", "finding")
    out = proc.stdout + proc.stderr
    for rule, count in (
        ("unlearn", 2),
        ("evaluate_unlearned", 2),
        ("denoiser_norms", 3),
        ("denoiser_norms_original", 1),
        ("finding_table", 1),
        ("figure_finding", 1),
    ):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-3000:])
    for rule in ("train_base", "evaluate_method", "score_original", "prior_per_class"):
        assert not re.search(rf"^{rule}\s+\d+", out, re.M), rule
    table = pd.read_csv(test_run / "results/test/finding.csv")
    assert table["variant"].tolist() == ["original", "safemax", "safemax-retain_weight=1", "safemax-target=x_t"]
    assert table["point"].tolist()[:2] == ["Original", "SAFEMax (as in the config)"]
    assert json.loads(table.loc[3, "params"])["target"] == "x_t" and table["forget_class"].eq(0).all()
    main = pd.read_csv(test_run / "results/test/metrics.csv").set_index(["method", "forget_class"])
    assert table.loc[1, "fid"] == main.loc[("safemax", 0), "fid"]  # the main point is the main run's record
    assert table[["eps_forget", "eps_remaining", "eps_null"]].gt(0).all().all()
    assert "| SAFEMax (as in the config) |" in (test_run / "results/test/finding.md").read_text()
    assert (test_run / "figures/test/finding.png").stat().st_size > 0


def test_the_robustness_target_scores_retrain_and_attacks_every_model(test_run):
    """`snakemake robustness`: the extra evaluators, Retrain per forgotten class (evaluated as the methods are), every
    model's forgotten class scored, the attacks on the attacked seed, and the tables and figures published."""
    snakemake(test_run, "--configfile=config/test.yaml", "robustness")
    run = test_run / "results" / "test"
    table = pd.read_csv(test_run / "results" / "robustness.csv")
    methods = {"sa", "salun", "safemax", "safemax_r"}
    for column in (
        "method",
        "forget_class",
        "seed",
        "ua",
        "ua_noise_aware",
        "no_class_share",
        "forget_fid",
        "forget_kid",
        "relearn_steps_to_recover_k2",
        "relearn_steps_to_recover_k5",
        "resurgence_ua_final",
        "config_hash",
        "model_digest",
    ):
        assert column in table.columns, column
    units = table[table.attack == "none"]
    assert sorted(map(tuple, units[["method", "forget_class"]].values)) == sorted(
        (m, c) for m in (*methods, "original", "retrain") for c in (0, 1)
    )
    attacked = table[table.attack != "none"]
    assert set(attacked.method) == methods | {"retrain"}
    assert set(attacked.attack) == {"relearning", "resurgence", "partial_diffusion"}
    # Retrain: the base recipe without its class, then the methods' evaluation (a metrics record of the same schema)
    for c in (0, 1):
        assert json.loads((run / "retrain" / f"class{c}" / "train.json").read_text())["without_class"] == c
        record = json.loads((run / "metrics" / "retrain" / f"class{c}" / "seed0.json").read_text())
        assert record["method"] == "retrain" and set(METRICS) <= set(record)
    assert "Retrain" in (test_run / "results" / "robustness.md").read_text()
    for name in ("relearning", "partial_diffusion", "noise_aware"):
        assert (test_run / "figures" / "test" / f"robustness_{name}.png").stat().st_size > 5000
    again = snakemake(test_run, "-n", "--configfile=config/test.yaml", "robustness")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_snakemakes_benchmark_of_each_unlearning_job_bounds_its_measured_rte(test_run):
    """The `benchmark:` directive measures each whole job (start-up, every seed, presampling): a check on the cost
    meter, whose RTE covers only the timed loops, so it can never be longer."""
    run = test_run / "results" / "test"
    for tsv in sorted((run / "benchmarks" / "unlearn").glob("*_class*.tsv")):
        variant, c = tsv.stem.rsplit("_class", 1)
        wall_s = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        rte_s = sum(
            json.loads(cost.read_text())["rte_s"] for cost in run.glob(f"models/{variant}/class{c}/seed*/cost.json")
        )
        assert 0 < rte_s < wall_s, (tsv.name, rte_s, wall_s)
    assert len(list((run / "benchmarks" / "unlearn").glob("*.tsv"))) >= 8  # 4 methods x 2 classes, and the studies'
    assert (run / "benchmarks" / "train_base.tsv").is_file()


def test_second_invocation_does_nothing(test_run):
    proc = snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_record_lost_after_the_tables_were_made_is_remade_not_ignored(test_run):
    """Snakemake alone redoes no missing intermediate file while the tables after it exist: a record that a failed or
    killed evaluation removed would leave the old tables standing. The run remakes it, then reruns nothing."""
    record = test_run / "results" / "test" / "metrics" / "sa" / "class1" / "seed0.json"
    before = json.loads(record.read_text())
    record.unlink()
    proc = snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv")
    out = proc.stdout + proc.stderr
    for rule in ("evaluate_method", "aggregate", "publish"):  # SA's seed-0 models of both classes: one job
        assert re.search(rf"^{rule}\s+1$", out, re.M), (rule, out[-3000:])
    assert {k: json.loads(record.read_text())[k] for k in METRICS} == {k: before[k] for k in METRICS}
    proc = snakemake(test_run, "-n", "--configfile=config/test.yaml", "results/table.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_moved_workflow_folder_reruns_nothing(test_run, tmp_path):
    """Inputs are relative to the folder (the method files were absolute: a move reran every method job)."""
    moved = tmp_path / "moved"
    shutil.copytree(test_run, moved, symlinks=True)
    proc = snakemake(moved, "-n", "--configfile=config/test.yaml", "results/table.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_changing_evaluation_reevaluates_without_retraining(test_run):
    (test_run / "config" / "eval16.yaml").write_text("evaluation: {n_forget: 16}\n")
    # --configfile takes several files: the target goes before it
    proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/eval16.yaml")
    out = proc.stdout + proc.stderr
    assert re.search(r"^evaluate_method\s+4$", out, re.M), out[-3000:]  # a job per method and seed, all classes
    for rule in ("train_base", "unlearn", "prior_shared", "prior_per_class", "train_evaluator"):
        assert not re.search(rf"^{rule}\s+\d+", out, re.M), rule


def test_lost_weights_are_remade_by_their_job_not_a_load_error(test_run, tmp_path):
    """Weights are declared files: a model folder deleted after its job finished (to free disk, say) gets that job
    redone when a later change needs the model, instead of failing the job that loads it."""
    run = test_run / "results" / "test"
    lost = [run / "models" / "sa" / "class1" / "seed0" / "unet", run / "evaluator" / "model.safetensors"]
    for i, path in enumerate(lost):
        path.rename(tmp_path / str(i))
    try:
        (test_run / "config" / "eval12.yaml").write_text("evaluation: {n_forget: 12}\n")
        proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/eval12.yaml")
        out = proc.stdout + proc.stderr
        assert re.search(r"^unlearn\s+1$", out, re.M) and re.search(r"^train_evaluator\s+1$", out, re.M), out[-3000:]
        assert not re.search(r"^(train_base|prior_shared|prior_per_class)\s+\d+", out, re.M), out[-3000:]
    finally:
        for i, path in enumerate(lost):
            (tmp_path / str(i)).rename(path)


def test_a_dry_run_with_another_config_writes_nothing(test_run):
    """Jobs read results/<run>/configs/<hash>.yaml, written when a run starts its jobs (Snakemake's onstart), never
    while the Snakefile is parsed: previewing a change while a run goes on leaves the run's files alone."""
    run = test_run / "results" / "test"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    (test_run / "config" / "preview.yaml").write_text("sampler: {steps: 9}\n")
    (run / "metrics" / "sa" / "class1" / "seed0.json").rename(test_run / "kept.json")  # as a failed job leaves it
    try:
        proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/preview.yaml")
        assert re.search(r"^evaluate_method\s+4$", proc.stdout + proc.stderr, re.M)
    finally:
        (test_run / "kept.json").rename(run / "metrics" / "sa" / "class1" / "seed0.json")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    metrics = pd.read_csv(test_run / "results" / "metrics.csv")
    assert len(set(metrics["config_hash"])) == 1  # the records name the file their jobs read
    assert (run / "configs" / f"{metrics['config_hash'][0]}.yaml").is_file()


def test_a_failed_aggregate_leaves_no_published_table_older_than_its_records(test_run):
    """The issue's recipe: an aggregate that fails (on a cut-short record) deletes the run's tables; once the record
    is removed, as its message says, the next run remakes it, the tables and their published copies. Before, the
    copies under results/ kept the old numbers and Snakemake said 'Nothing to be done'."""
    run = test_run / "results" / "test"
    record = run / "metrics" / "sa" / "class0" / "seed0.json"
    report = test_run / "lib" / "unlearnbench" / "report" / "layout.py"  # an edit makes the aggregate run again
    text, stat = report.read_text(), report.stat()
    report.write_text(text + "# an edit that makes the aggregate run\n")
    try:
        record.write_bytes(record.read_bytes()[:20])
        proc = snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv", check=False)
        assert proc.returncode != 0 and not (run / "table.csv").exists()
        assert "is not a valid JSON record" in (run / "logs" / "aggregate.log").read_text()
        record.unlink()
        proc = snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv")
        out = proc.stdout + proc.stderr
        for rule in ("evaluate_method", "aggregate", "publish"):
            assert re.search(rf"^{rule}\s+1$", out, re.M), (rule, out[-3000:])
    finally:
        report.write_text(text)
        os.utime(report, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    newest_record = max(p.stat().st_mtime_ns for p in (run / "metrics").rglob("*.json"))
    for name in ("metrics.csv", "table.csv", "tables.sha256"):
        published = test_run / "results" / name
        assert published.stat().st_mtime_ns >= newest_record and published.read_bytes() == (run / name).read_bytes()
    proc = snakemake(test_run, "-n", "--configfile=config/test.yaml", "results/table.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_hand_edited_table_is_not_published(test_run):
    """results/<run>/metrics.csv edited by hand: its publication is refused with what to do (and the failed job's
    copies are gone, not left with other numbers); put back, it is published again."""
    table = test_run / "results" / "test" / "metrics.csv"
    text = table.read_text()
    table.write_text(text + text.splitlines()[-1] + "\n")  # a row pasted twice
    try:
        proc = snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "metrics.csv is not what the aggregate wrote" in out, out[-3000:]
        assert not (test_run / "results" / "metrics.csv").exists()
    finally:
        table.write_text(text)
    snakemake(test_run, "--configfile=config/test.yaml", "results/table.csv")
    assert (test_run / "results" / "metrics.csv").read_text() == text


def test_the_figures_target_publishes_the_tables_it_draws(test_run):
    """`snakemake figures` after a change of methods also refreshes results/*.csv, not only results/<run>/."""
    proc = snakemake(test_run, "-n", "figures", "--configfile=config/test.yaml", "--config", "methods=[sa,safemax]")
    out = proc.stdout + proc.stderr
    for rule in ("aggregate", "publish", "figure_summary"):
        assert re.search(rf"^{rule}\s+1$", out, re.M), (rule, out[-3000:])


def test_the_html_report_holds_the_tables_and_figures(test_run, tmp_path):
    """`snakemake --report`: Snakemake's own report of the run (the outputs marked with report() in the rules, with
    their captions from report/), one self-contained HTML file."""
    snakemake(test_run, "--configfile=config/test.yaml", "figures")
    snakemake(test_run, "--configfile=config/test.yaml", "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    for name in (
        "table.csv",
        "cost.png",
        "per_class.png",
        "samples_class0.png",
        "psi_ablation.png",
        "The paper's layout: per forgotten class",
    ):
        assert name in html, name


def test_changing_sa_lambda_keeps_its_priors(test_run):
    (test_run / "config" / "lambda.yaml").write_text("method_params: {sa: {lambda: 0.5}}\n")
    proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/lambda.yaml")
    out = proc.stdout + proc.stderr
    assert re.search(r"^unlearn\s+2$", out, re.M), out[-3000:]  # SA on classes 0 and 1
    assert not re.search(r"^prior_shared\s+\d+", out, re.M), out[-3000:]  # replay set and Fisher stay cached
    (test_run / "config" / "fisher.yaml").write_text("method_params: {sa: {fisher_images: 6}}\n")
    proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/fisher.yaml")
    assert re.search(r"^prior_shared\s+1$", proc.stdout + proc.stderr, re.M)  # the Fisher only, not the replay set


def test_changing_the_sampler_retrains_only_what_samples_with_it(test_run):
    (test_run / "config" / "sampler.yaml").write_text("sampler: {steps: 8}\n")
    proc = snakemake(test_run, "-n", "results/table.csv", "--configfile", "config/test.yaml", "config/sampler.yaml")
    out = proc.stdout + proc.stderr
    assert re.search(r"^prior_shared\s+2$", out, re.M), out[-3000:]  # SA's replay set, then its Fisher
    assert re.search(r"^unlearn\s+2$", out, re.M), out[-3000:]  # SA on classes 0 and 1; SalUn and SAFEMax kept
    assert re.search(r"^evaluate_method\s+4$", out, re.M), out[-3000:]  # every model sampled anew
    for rule in ("train_base", "train_evaluator", "prior_per_class"):  # SalUn's masks do not sample
        assert not re.search(rf"^{rule}\s+\d+", out, re.M), rule


def dry_run_after_editing(workdir: Path, relative: str, *targets: str) -> str:
    """The plan of `snakemake -n` once `relative` (a file of the workflow or its lib/) has changed; the edit is undone."""
    source = workdir / relative
    text, before = source.read_text(), source.stat()
    source.write_text(text + "# an edit\n")  # Snakemake compares checksums: touching alone changes nothing
    try:
        proc = snakemake(workdir, "-n", "--configfile=config/test.yaml", *targets)
    finally:
        source.write_text(text)
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    return proc.stdout + proc.stderr


def test_editing_a_method_file_reruns_its_jobs(test_run):
    out = dry_run_after_editing(test_run, "methods/safemax.py", "results/table.csv")
    # safemax and its variant safemax_r (whose code it is) on classes 0 and 1, nothing else
    assert re.search(r"^unlearn\s+4$", out, re.M), out[-3000:]
    assert not re.search(r"^prior_(shared|per_class)\s+\d+", out, re.M), out[-3000:]


def test_editing_the_suites_metric_or_report_code_redoes_what_it_computes(test_run):
    out = dry_run_after_editing(test_run, "lib/metrics/forgetting.py", "results/table.csv")
    assert "Updated input files: lib/metrics/forgetting.py" in out  # the private copy is what the jobs import
    for rule, count in (("fid_reference", 1), ("score_original", 1), ("evaluate_method", 4), ("aggregate", 1)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-3000:])
    for rule in ("train_base", "train_evaluator", "unlearn", "prior_shared", "prior_per_class", "sample_original"):
        assert not re.search(rf"^{rule}\s+\d+", out, re.M), rule
    out = dry_run_after_editing(test_run, "lib/unlearnbench/report/layout.py", "results/table.csv")
    assert re.search(r"^aggregate\s+1$", out, re.M), out[-3000:]
    assert not re.search(r"^(evaluate_method|score_original|fid_reference)\s+\d+", out, re.M), out[-3000:]


def test_independent_runs_give_identical_metrics(test_run, tmp_path):
    other = copy_workflow(tmp_path / "again")
    targets = [f"results/test/metrics/{m}/class0/seed0.json" for m in ("sa", "safemax")]
    snakemake(other, "--configfile=config/test.yaml", *targets)
    for target in targets:
        a = json.loads((test_run / target).read_text())
        b = json.loads((other / target).read_text())
        assert {k: a[k] for k in METRICS} == {k: b[k] for k in METRICS}, target


def readme_method_example() -> tuple[str, str, str]:
    """The file name, code and command of the README's "Add a method" example."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Add a method") :]
    name = re.search(r"Save as `methods/([a-z_]+)\.py`", section).group(1)
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(snakemake [^\n]*)\n```", section).group(1)
    return name, code, command


def test_readme_add_a_method_walkthrough(test_run):
    name, code, command = readme_method_example()
    (test_run / "methods" / f"{name}.py").write_text(code)
    args = [a for a in shlex.split(command)[1:] if a not in ("--cores", "all")]
    snakemake(test_run, "--configfile=config/test.yaml", *args)
    metrics = pd.read_csv(test_run / "results" / "metrics.csv")
    assert name in set(metrics["method"])
    rows = metrics[metrics.method == name]
    assert len(rows) == 2 and (rows["rte_min"] > 0).all() and rows[METRICS].notna().all().all()
    label = re.search(r'DISPLAY_NAME = "([^"]+)"', code).group(1)
    assert f"{label} FID" in pd.read_csv(test_run / "results" / "table.csv").columns


def readme_imported_example() -> dict:
    """The overlay of the README's "Score models unlearned elsewhere" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Score models unlearned elsewhere") :]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_models_made_elsewhere_are_imported_and_scored_as_the_suites_own(test_run):
    """The README's `imported` overlay, followed literally with copies of SalUn's models saved where it says: they
    get the run's evaluation beside the methods, nothing else reruns, and the same weights score the same."""
    overlay = readme_imported_example()
    ((name, pattern),) = overlay["imported"].items()
    for c in (0, 1):
        shutil.copytree(
            test_run / f"results/test/models/salun/class{c}/seed0/unet", test_run / pattern.format(forget_class=c)
        )
    (test_run / "config" / "imported.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(test_run, "results/table.csv", "--configfile", "config/test.yaml", "config/imported.yaml")
    out = proc.stdout + proc.stderr
    for rule, count in (("import_model", 2), ("evaluate_method", 1), ("aggregate", 1)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-3000:])
    assert not re.search(r"^(train_base|unlearn|prior_shared|prior_per_class|score_original)\s+\d+", out, re.M)
    assert "Exception" not in out  # rule unlearn is not tried for an imported name (it has no method file)
    metrics = pd.read_csv(test_run / "results" / "metrics.csv").set_index(["method", "forget_class"])
    theirs, salun = metrics.loc[name], metrics.loc["salun"]
    assert (theirs[METRICS] == salun[METRICS]).all().all()
    assert theirs["rte_min"].isna().all() and salun["rte_min"].notna().all()
    assert theirs["device_name"].isna().all() and theirs["sampling_device_name"].notna().all()  # no cost device
    assert theirs["imported_from"].tolist() == [
        str((test_run / pattern.format(forget_class=c)).resolve()) for c in (0, 1)
    ]
    assert f"{name}: imported, unlearned outside the suite" in (test_run / "results" / "table1.md").read_text()
    assert f"{name} FID" in pd.read_csv(test_run / "results" / "table.csv").columns
    # the tables before the import stay in the run's history, beside the new ones
    from unlearnbench.report import history_snapshots

    history = history_snapshots(test_run / "results" / "test" / "history")
    assert (history[-1] / "metrics.csv").read_bytes() == (test_run / "results" / "test" / "metrics.csv").read_bytes()
    assert name not in set(pd.read_csv(history[-2] / "metrics.csv")["method"])
