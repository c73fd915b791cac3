"""robustness.csv, robustness.md and the robustness figures from synthetic records with hand-chosen numbers:
2 methods (sa, safemax) + Retrain + the original, 3 forgotten classes, 2 seeds, attacks on seed 0."""

import hashlib
import json
import math

import pandas as pd
import pytest

from unlearnbench.config import load_config
from unlearnbench.errors import UserError
from unlearnbench.files import check_unedited
from unlearnbench.report import aggregate_robustness

METHODS = ["sa", "safemax"]
CLASSES, SEEDS = [0, 1, 2], [0, 1]
BUDGET, EVERY = 60, 15
STRENGTHS = [0.1, 0.5, 0.9]

# Main-evaluator UA of each model's own generations, per (class, seed).
UA = {
    "original": {(c, s): 2.0 for c in CLASSES for s in SEEDS},
    "sa": {(c, s): 60.0 + 10 * c + 2 * s for c in CLASSES for s in SEEDS},  # class means 61, 71, 81
    "safemax": {**{(c, s): 90.0 for c in CLASSES for s in SEEDS}, (0, 0): 40.0},  # class means 65, 90, 90
    "retrain": {(c, s): 95.0 for c in CLASSES for s in SEEDS},
}
# Noise-aware UA: sa 99 everywhere (ordered above safemax and Retrain: two orderings flip), safemax's (0, 0) unit
# forgotten only under it (one verdict flips at the 50% line), the rest 92, Retrain 96.
NOISE_AWARE = {
    "original": {(c, s): 3.0 for c in CLASSES for s in SEEDS},
    "sa": {(c, s): 99.0 for c in CLASSES for s in SEEDS},
    "safemax": {**{(c, s): 92.0 for c in CLASSES for s in SEEDS}, (0, 0): 80.0},
    "retrain": {(c, s): 96.0 for c in CLASSES for s in SEEDS},
}
# Attacks (seed 0), per class: the step at which relearning on k images brings the class back (None: not within
# the budget), the final UA of resurgence, the centre of the partial-diffusion curve (its mean).
RECOVER = {
    "sa": {5: [15, 15, 15], 50: [15, 15, 15]},  # relearns faster than Retrain in every class
    "safemax": {5: [30, None, 60], 50: [15, 15, 15]},
    "retrain": {5: [None, None, 45], 50: [15, 15, 15]},
}
RESURGENCE = {"sa": [20.0, 30.0, 40.0], "safemax": [85.0, 95.0, 90.0], "retrain": [90.0, 92.0, 94.0]}
PARTIAL = {"sa": [40.0, 50.0, 60.0], "safemax": [85.0, 80.0, 95.0], "retrain": [80.0, 85.0, 90.0]}


@pytest.fixture
def config(root):
    config = load_config(root / "config" / "default.yaml", methods_dir=root / "methods")
    config.update(methods=list(METHODS), forget_classes=list(CLASSES), seeds=list(SEEDS), imported={})
    assert config["robustness"]["attacks"]["seeds"] == [0] and config["robustness"]["retrain"]
    return config


def provenance(config_hash="cfg0001"):
    return {
        "run_name": "test",
        "config_hash": config_hash,
        "dataset": "digits",
        "fid_backend": "classifier",
        "model_digest": "d" * 64,
    }


def score_record(method, c, s, ua, noise_aware):
    return {
        "method": method,
        "forget_class": c,
        "seed": s,
        "n_generated": 500,
        "evaluators": {
            "main": {"ua": ua, "entropy": 0.1 * (c + 1)},
            "noise_aware": {
                "ua": noise_aware,
                "entropy": 0.2,
                "ua_agreement": 90.0 + c,
                "no_class_share": noise_aware - ua if noise_aware > ua else 0.0,
            },
            "second": {"ua": ua + 1.0, "entropy": 0.3, "ua_agreement": 95.0},
        },
        "forget_distance": {
            "fid": 100.0 + 10 * c + s,
            "kid": 50.0,
            "precision": 0.1 * c,
            "recall": 0.5,
            "k": 3,
            "n_real": 146,
        },
        "provenance": provenance(),
    }


def main_record(method, c, s):
    return {
        "method": method,
        "variant": method,
        "forget_class": c,
        "seed": s,
        "fid": 10.0 + c,
        "kid": 1.0,
        "H": 0.5,
        "UA": UA[method][(c, s)],
        "remaining_acc": 97.0,
        "cost": {"rte_s": 6.0, "rte_min": 0.1},
        "provenance": {"run_name": "test", "config_hash": "older0000001"},
    }


def curve(recover):
    """UA 90 until the class comes back at step `recover` (None: never within the budget), 10 from then on."""
    return [(step, 10.0 if recover is not None and step >= recover else 90.0) for step in range(0, BUDGET + 1, EVERY)]


def attack_record(method, c):
    points = []
    for k in (5, 50):
        points += [
            {
                "attack": "relearning",
                "param": "k",
                "value": k,
                "step": step,
                "ua": ua,
                "ua_noise_aware": ua,
                "no_class_share": 0.0,
            }
            for step, ua in curve(RECOVER[method][k][c])
        ]
    final = RESURGENCE[method][c]
    points += [
        {
            "attack": "resurgence",
            "param": None,
            "value": None,
            "step": step,
            "ua": final if step == BUDGET else 90.0,
            "ua_noise_aware": final if step == BUDGET else 90.0,
            "no_class_share": 0.0,
        }
        for step in range(0, BUDGET + 1, EVERY)
    ]
    centre = PARTIAL[method][c]
    points += [
        {
            "attack": "partial_diffusion",
            "param": "s",
            "value": s,
            "step": None,
            "t_start": int(1000 * s) - 1,
            "ua": centre + delta,
            "ua_noise_aware": centre + delta,
            "no_class_share": 1.0,
        }
        for s, delta in zip(STRENGTHS, (-10.0, 0.0, 10.0))
    ]
    cost = {
        name: {"rte_s": 3.0, "rte_min": 0.05}
        for name in ("relearning_k5", "relearning_k50", "resurgence", "partial_diffusion")
    }
    return {
        "method": method,
        "forget_class": c,
        "seed": 0,
        "points": points,
        "summary": {
            "relearn_steps_to_recover_k5": RECOVER[method][5][c],
            "relearn_steps_to_recover_k50": RECOVER[method][50][c],
            "resurgence_ua_final": final,
            "partial_diffusion_ua_mean": centre,
        },
        "settings": {
            "relearning": {"k": [5, 50], "steps": BUDGET, "every": EVERY},
            "resurgence": {"steps": BUDGET, "every": EVERY},
            "partial_diffusion": {"strengths": STRENGTHS},
            "recovered_below_ua": 50.0,
        },
        "cost": cost,
        "provenance": {**provenance("cfg0002"), "noise_aware": True},
    }


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def records(tmp, ua=UA, noise_aware=NOISE_AWARE):
    """(scores, attacks, main records) written under `tmp`, as the workflow lays them out."""
    scores = [
        write(
            tmp / "scores" / m / f"class{c}" / f"seed{s}.json",
            score_record(m, c, s, ua[m][(c, s)], noise_aware[m][(c, s)]),
        )
        for m in ("original", *METHODS, "retrain")
        for c in CLASSES
        for s in SEEDS
    ]
    attacks = [
        write(tmp / "attacks" / m / f"class{c}" / "seed0.json", attack_record(m, c))
        for m in (*METHODS, "retrain")
        for c in CLASSES
    ]
    mains = [
        write(tmp / "metrics" / m / f"class{c}" / f"seed{s}.json", main_record(m, c, s))
        for m in (*METHODS, "retrain")
        for c in CLASSES
        for s in SEEDS
    ]
    return scores, attacks, mains


@pytest.fixture
def made(tmp_path, config):
    scores, attacks, mains = records(tmp_path / "records")
    out = tmp_path / "robustness"
    aggregate_robustness(config, scores, attacks, mains, out)
    return out, pd.read_csv(out / "robustness.csv"), (out / "robustness.md").read_text()


def table_row(md, label):
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |")).rstrip(" |").split(" | ")


def test_csv_rows_and_columns(made):
    _, df, _ = made
    units = df[df["attack"] == "none"]
    assert len(units) == 4 * 3 * 2  # original, 2 methods, Retrain x classes x seeds
    assert len(df) - len(units) == 3 * 3 * (2 * 5 + 5 + 3)  # attacked: 2 methods + Retrain x classes x points
    assert list(df["method"].unique()) == ["original", "sa", "safemax", "retrain"]  # the report's order
    required = [
        "method",
        "forget_class",
        "seed",
        "attack",
        "attack_param",
        "attack_value",
        "step",
        "ua",
        "ua_noise_aware",
        "no_class_share",
        "H",
        "ua_noise_aware",
        "h_noise_aware",
        "ua_agreement_noise_aware",
        "ua_second",
        "h_second",
        "ua_agreement_second",
        "forget_fid",
        "forget_kid",
        "forget_precision",
        "forget_recall",
        "fid_remaining",
        "relearn_steps_to_recover_k5",
        "relearn_steps_to_recover_k50",
        "resurgence_ua_final",
        "partial_diffusion_ua_mean",
        "attack_rte_min",
        "run_name",
        "config_hash",
        "model_digest",
        "dataset",
        "fid_backend",
    ]
    assert not set(required) - set(df.columns)
    # the unit's own row: the main evaluator's UA, the noise-aware evaluator's verdicts
    row = units[(units["method"] == "safemax") & (units["forget_class"] == 0) & (units["seed"] == 0)].iloc[0]
    assert (row["ua"], row["ua_noise_aware"], row["no_class_share"]) == (40.0, 80.0, 40.0)
    assert row["fid_remaining"] == 10.0 and row["forget_fid"] == 100.0 and math.isnan(row["step"])
    assert row["relearn_steps_to_recover_k5"] == 30.0
    # censored: inf (not recovered within the budget); a seed not attacked: empty
    retrain = units[(units["method"] == "retrain") & (units["forget_class"] == 0)].set_index("seed")
    assert math.isinf(retrain.loc[0, "relearn_steps_to_recover_k5"])
    assert math.isnan(retrain.loc[1, "relearn_steps_to_recover_k5"])
    assert units.loc[units["method"] == "original", "fid_remaining"].isna().all()  # no main record of it
    points = df[
        (df["method"] == "sa") & (df["attack"] == "relearning") & (df["attack_value"] == 5) & (df["forget_class"] == 1)
    ]
    assert list(points["step"]) == [0, 15, 30, 45, 60] and list(points["ua"]) == [90, 10, 10, 10, 10]
    assert (points["attack_rte_min"] == 0.05).all() and (points["H"] == 0.2).all()  # the unit's columns too


def test_table_a_mean_and_std_by_hand(made):
    _, _, md = made
    sa = table_row(md, "SA")
    # UA per class, seed-averaged: 61, 71, 81 -> mean 71, sample std 10
    assert sa[1] == "71.0 ± 10.0"
    header = table_row(md, "Model")
    assert header[1:4] == ["UA [%]", "UA noise-aware [%]", "No-class share [%]"]
    safemax = table_row(md, "SAFEMax")
    values = pd.Series([65.0, 90.0, 90.0])
    assert safemax[1] == f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" == "81.7 ± 14.4"
    assert table_row(md, "Retrain")[1] == "95.0 ± 0.0"
    assert table_row(md, "Original (reference)")[-1] == "–"  # FID (remaining): no record here
    order = [
        line.split(" | ")[0]
        for line in md.split("## A.")[1].split("## B.")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| Model")
    ]
    assert order == ["| Original (reference)", "| SA", "| SAFEMax", "| Retrain"]
    assert "**" not in md.split("## A.")[1].split("## B.")[0]  # nothing bold, Retrain and the original least


def test_table_b_medians_and_censoring(made):
    _, _, md = made
    attacks = md.split("## B.")[1].split("## Verdicts")[0]
    sa, safemax, retrain = (table_row(attacks, label) for label in ("SA", "SAFEMax", "Retrain"))
    assert sa[1:3] == ["15 (3 / 3)", "15 (3 / 3)"]
    assert safemax[1] == "60 (2 / 3)"  # 30, 60 and one not recovered: the middle one
    assert retrain[1] == "> budget (60) (1 / 3)"  # two of three not recovered: the median is beyond the budget
    assert sa[3] == "30.0 ± 10.0" and sa[4] == "50.0 ± 10.0"  # resurgence final UA, partial diffusion mean UA
    assert sa[5:8] == ["40.0 ± 10.0", "50.0 ± 10.0", "60.0 ± 10.0"]  # UA at s = 0.1, 0.5, 0.9
    assert "Original" not in attacks.split("\n\n")[1]  # the original is not attacked


def test_verdicts_follow_the_numbers(made):
    _, _, md = made
    verdicts = md.split("## Verdicts against Retrain")[1].split("## Does")[0]
    assert (
        "- SA, relearning on k = 5 images: recovers in fewer steps than Retrain in 3 of 3 classes (in more in 0, "
        "as many in 0; median 15 vs > 60 steps; not recovered within 60 steps: 0 vs 2)."
    ) in verdicts
    assert (
        "- SAFEMax, relearning on k = 5 images: recovers in fewer steps than Retrain in 1 of 3 classes (in more "
        "in 1, as many in 1; median 60 vs > 60 steps"
    ) in verdicts
    assert (
        "k = 50 images: recovers in fewer steps than Retrain in 0 of 3 classes (in more in 0, as many in 3" in verdicts
    )
    sa_resurgence = next(line for line in verdicts.splitlines() if line.startswith("- SA, resurgence"))
    assert "30.0% vs Retrain's 92.0% on the same 3 classes, paired difference -62.0 points" in sa_resurgence
    assert "Retrain higher in 3, lower in 0" in sa_resurgence
    assert sa_resurgence.endswith("**the class comes back more than under Retrain**.")
    safemax_probe = next(line for line in verdicts.splitlines() if line.startswith("- SAFEMax, partial diffusion"))
    assert "paired difference +1.7 points" in safemax_probe and safemax_probe.endswith("no difference holds.")


def test_noise_aware_flips_are_found(made):
    _, _, md = made
    section = md.split("## Does the noise-aware UA change a verdict?")[1]
    # plain: SA 71.0 < SAFEMax 81.7 < Retrain 95.0; noise-aware: SA 99.0 > Retrain 96.0 > SAFEMax 90.0
    assert "orders 2 of the 3 pairs of rows differently" in section
    assert "SA < SAFEMax under UA (71.0 vs 81.7), SA > SAFEMax under the noise-aware UA (99.0 vs 90.0)" in section
    assert "SA < Retrain under UA" in section and "SAFEMax < Retrain" not in section
    assert (
        "- SAFEMax: 1 of 6 units change verdict (1 forgotten only under the noise-aware UA, 0 only under the UA)"
        in section
    )
    assert "- SA: 0 of 6 units change verdict" in section
    assert "**The noise-aware UA changes 3 verdict(s)** (2 ordering(s) of rows, 1 unit(s) and 0 attack" in section
    assert "No verdict changes" not in section


def test_no_verdict_changes_when_none_does(tmp_path, config):
    aware = {m: {unit: min(100.0, ua + 2.0) for unit, ua in units.items()} for m, units in UA.items()}
    aware["safemax"][(0, 0)] = 45.0  # below the line under both
    ua = {m: dict(units) for m, units in UA.items()}
    out = tmp_path / "out"
    aggregate_robustness(config, *records(tmp_path / "records", ua, aware), out)
    section = (out / "robustness.md").read_text().split("## Does the noise-aware UA change a verdict?")[1]
    assert "orders all 3 pairs of rows as the UA does" in section
    assert "- SAFEMax: 0 of 6 units change verdict" in section
    assert "**No verdict changes**" in section and "under the noise-aware UA: every one reads the same" in section


def test_an_attack_verdict_against_retrain_that_the_noise_aware_ua_turns_is_named(tmp_path, config):
    scores, attacks, mains = records(tmp_path / "records")
    for path in attacks:  # SA's class is back under the UA, and as far away as Retrain's under the noise-aware UA
        record = json.loads(path.read_text())
        if record["method"] == "sa":
            for point in record["points"]:
                if point["attack"] == "resurgence" and point["step"] == BUDGET:
                    point["ua_noise_aware"] = RESURGENCE["retrain"][record["forget_class"]]
            path.write_text(json.dumps(record))
    out = tmp_path / "out"
    aggregate_robustness(config, scores, attacks, mains, out)
    section = (out / "robustness.md").read_text().split("## Does the noise-aware UA change a verdict?")[1]
    assert (
        "1 read otherwise: SA, resurgence, final UA: under the UA 30.0% vs Retrain's 92.0% (**the class comes "
        "back more than under Retrain**); under the noise-aware UA 92.0% vs 92.0% (no difference holds)."
    ) in section
    assert "1 verdict(s) against Retrain" in section
    df = pd.read_csv(out / "robustness.csv")
    sa = df[(df["method"] == "sa") & (df["attack"] == "none") & (df["seed"] == 0)]
    assert sa["resurgence_ua_noise_aware_final"].tolist() == RESURGENCE["retrain"]
    assert sa["resurgence_ua_final"].tolist() == RESURGENCE["sa"]


def test_digests_are_written(made):
    out, _, _ = made
    lines = (out / "tables.sha256").read_text().splitlines()
    assert lines == [
        f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}"
        for name in ("robustness.csv", "robustness.md")
    ]
    check_unedited(out / "robustness.csv")


def test_scores_of_other_judges_are_refused_but_not_other_config_hashes(tmp_path, config):
    """A run's records carry several config hashes (a job reruns only when a section it reads changes): that is
    fine; scores made with another evaluator are not."""
    scores, attacks, mains = records(tmp_path / "records")
    record = json.loads(scores[5].read_text())
    record["provenance"]["config_hash"] = "another00001"
    scores[5].write_text(json.dumps(record))
    aggregate_robustness(config, scores, attacks, mains, tmp_path / "fine")
    record["provenance"]["fid_backend"] = "inception"
    scores[5].write_text(json.dumps(record))
    with pytest.raises(
        UserError,
        match=r"score records were made with 2 different evaluators or FID features.*"
        r"--forcerun score_robustness",
    ):
        aggregate_robustness(config, scores, attacks, mains, tmp_path / "out")
    assert not (tmp_path / "out" / "robustness.csv").exists()


def test_missing_units_are_refused(tmp_path, config):
    scores, attacks, mains = records(tmp_path / "records")
    missing = [p for p in scores if p.parts[-3:] == ("sa", "class1", "seed1.json")]
    assert len(missing) == 1
    with pytest.raises(UserError, match="no score record for sa class 1 seed 1"):
        aggregate_robustness(config, [p for p in scores if p not in missing], attacks, mains, tmp_path / "out")
    with pytest.raises(UserError, match="no attack record for retrain class 2 seed 0"):
        aggregate_robustness(config, scores, attacks[:-1], mains, tmp_path / "out")
    with pytest.raises(UserError, match="two score records of sa class 1 seed 1"):
        aggregate_robustness(config, [*scores, *missing], attacks, mains, tmp_path / "out")


def test_figures(made, config, tmp_path):
    from unlearnbench.stages.render import render_figures

    out, _, _ = made
    render_figures(config, "robustness", metrics=out / "robustness.csv", out_dir=tmp_path / "figures")
    for name in ("robustness_relearning.png", "robustness_partial_diffusion.png", "robustness_noise_aware.png"):
        path = tmp_path / "figures" / name
        assert path.is_file() and path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


def test_figures_refuse_an_edited_table(made, config, tmp_path):
    from unlearnbench.stages.render import render_figures

    out, df, _ = made
    df.loc[0, "ua"] = 0.0
    df.to_csv(out / "robustness.csv", index=False)
    with pytest.raises(UserError, match="not what the aggregate wrote"):
        render_figures(config, "robustness", metrics=out / "robustness.csv", out_dir=tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
