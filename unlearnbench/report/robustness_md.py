"""robustness.md, rendered from robustness.csv's rows (report/robustness.py makes them): the forgotten class under
every evaluator (table A), the attacks (table B) with their verdicts against Retrain, and whether the noise-aware
UA changes any verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..workflow import noise_aware_evaluator
from .comparison import PAIRED_CONFIDENCE, paired_difference
from .records import _is_missing
from .robustness import NO_ATTACK, ORIGINAL, RECOVERED_BELOW, RELEARN_PREFIX, RETRAIN, model_label, models_of


def _class_values(units: pd.DataFrame, model: str, column: str) -> pd.Series:
    """A model's seed-averaged values per forgotten class (the report's unit of spread, as in the paper's)."""
    rows = units[units["method"] == model]
    if column not in rows.columns or rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby("forget_class")[column].mean(skipna=False).astype(float)


def _mean_std(values: pd.Series, decimals: int) -> str:
    if values.empty or values.isna().any():
        return "–"
    std = values.std(ddof=1) if len(values) > 1 else np.nan
    mean = f"{values.mean():.{decimals}f}"
    return mean if _is_missing(std) else f"{mean} ± {std:.{decimals}f}"


def _evaluator_columns(config: dict) -> list[tuple[str, str, int]]:
    """Table A's columns: (label, robustness.csv column, decimals)."""
    extras = list((config.get("robustness") or {}).get("evaluators") or {})
    noise_aware = noise_aware_evaluator(config)
    columns = [("UA [%]", "ua_main", 1)]
    if noise_aware:
        columns += [
            ("UA noise-aware [%]", f"ua_{noise_aware}", 1),
            ("No-class share [%]", f"no_class_share_{noise_aware}", 1),
        ]
    columns += [(f"UA {name} [%]", f"ua_{name}", 1) for name in extras if name != noise_aware]
    columns += [(f"Agreement {name} [%]", f"ua_agreement_{name}", 1) for name in extras]
    return columns + [
        ("H [nats]", "H", 3),
        ("Forget FID", "forget_fid", 2),
        ("Forget KID", "forget_kid", 2),
        ("Precision", "forget_precision", 3),
        ("Recall", "forget_recall", 3),
        ("FID (remaining)", "fid_remaining", 2),
    ]


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def _table_a(config: dict, units: pd.DataFrame, models: Sequence[str]) -> list[str]:
    columns = _evaluator_columns(config)
    body = [
        [
            model_label(m) + (" (reference)" if m == ORIGINAL else ""),
            *(_mean_std(_class_values(units, m, column), d) for _, column, d in columns),
        ]
        for m in models
    ]
    classes, seeds = units["forget_class"].nunique(), units["seed"].nunique()
    k = units["forget_pr_k"].dropna()
    return [
        "## A. Forgetting under every evaluator",
        "",
        *_markdown_table(["Model", *(c[0] for c in columns)], body),
        "",
        f"Mean ± std (sample, ddof=1) over the {classes} forgotten classes of the values averaged over "
        f"{seeds} seed(s); no value is bold (Retrain and the original are references). UA: the share of the "
        "forgotten class's generations an evaluator does not call that class (the noise-aware evaluator's "
        '"no class" counts as forgotten); no-class share: the share it calls "no class"; agreement: the share '
        "of images on which that evaluator and the main one agree whether they show the class. Forget FID, KID, "
        f"precision and recall (k = {int(k.iloc[0]) if len(k) else '–'}): the generations against the real "
        "images of the forgotten class (higher FID and lower precision: farther from the class). FID "
        "(remaining): the main evaluation's, on the other classes. – = no value (the original model's main "
        "record is not an input here).",
    ]


def _steps(value: float) -> str:
    return "–" if _is_missing(value) else f"{value:g}"


def _median_cell(values: pd.Series, budget: float) -> str:
    from metrics.robustness import median_steps_to_recover  # here: it brings torch, which only this needs

    if values.empty or values.isna().any() or _is_missing(budget):
        return "–"
    median = median_steps_to_recover([None if math.isinf(v) else float(v) for v in values], budget)
    recovered = int(np.isfinite(values).sum())
    text = f"> budget ({budget:g})" if math.isinf(median) else f"{median:g}"
    return f"{text} ({recovered} / {len(values)})"


def _budget(units: pd.DataFrame, column: str) -> float:
    values = units.loc[units["attacked"].astype(bool), column].dropna().unique()
    if len(values) > 1:
        raise UserError(
            f"the attack records have several {column.replace('_', ' ')} ({sorted(values)}): they come "
            "from different configurations; remake them under one config (`snakemake --forcerun attack "
            "robustness`)"
        )
    return float(values[0]) if len(values) else np.nan


def _table_b(df: pd.DataFrame, units: pd.DataFrame, models: Sequence[str], ks: Sequence[int]) -> list[str]:
    attacked = units[units["attacked"].astype(bool)]
    models = [m for m in models if m in set(attacked["method"])]
    budget = _budget(units, "relearn_budget_steps")
    strengths = sorted(df.loc[df["attack"] == "partial_diffusion", "attack_value"].dropna().unique())
    header = [
        "Model",
        *(f"Relearn k = {k}: median steps to recover (recovered / units)" for k in ks),
        "Resurgence: final UA [%]",
        "Partial diffusion: mean UA [%]",
        *(f"UA at s = {s:g} [%]" for s in strengths),
    ]
    body = []
    for m in models:
        rows = attacked[attacked["method"] == m]
        cells = [
            model_label(m),
            *(_median_cell(rows[f"{RELEARN_PREFIX}{k}"], budget) for k in ks),
            _mean_std(_class_values(attacked, m, "resurgence_ua_final"), 1),
            _mean_std(_class_values(attacked, m, "partial_diffusion_ua_mean"), 1),
        ]
        probe = df[(df["method"] == m) & (df["attack"] == "partial_diffusion")]
        for s in strengths:
            at = probe[probe["attack_value"] == s].groupby("forget_class")["ua"].mean()
            cells.append(_mean_std(at, 1))
        body.append(cells)
    seeds = ", ".join(str(s) for s in sorted(attacked["seed"].unique()))
    line = _budget(units, "recovered_below_ua")
    return [
        "## B. Attacks",
        "",
        *_markdown_table(header, body),
        "",
        f"Attacked: seed(s) {seeds} of each forgotten class. Steps to recover: the first measured fine-tuning step "
        f"on k real images of the class at which UA falls below {_steps(line)}%, median over the (class, seed) "
        f"units; a unit not recovered within the budget of {_steps(budget)} steps counts as longer than any "
        '(metrics.robustness.median_steps_to_recover), and "> budget" means half of the units or more did not '
        f"recover. Resurgence: UA after {_steps(_budget(units, 'resurgence_budget_steps'))} steps of fine-tuning "
        "on the remaining classes only. Partial diffusion: real images of the class noised to s T and denoised "
        "under its label; its mean over the strengths s. UA columns: mean ± std over classes of seed-averaged "
        "values.",
    ]


def _paired(attacked: pd.DataFrame, model: str, column: str) -> tuple[pd.Series, pd.Series]:
    """A model's and Retrain's values of `column` on the (class, seed) units both have."""
    mine = attacked[attacked["method"] == model].set_index(["forget_class", "seed"])[column].astype(float)
    ref = attacked[attacked["method"] == RETRAIN].set_index(["forget_class", "seed"])[column].astype(float)
    both = mine.index.intersection(ref.index)
    return mine[both].sort_index(), ref[both].sort_index()


def _relearn_verdict(attacked: pd.DataFrame, model: str, k: int, budget: float, units: str) -> str:
    from metrics.robustness import median_steps_to_recover  # torch, as above

    mine, ref = _paired(attacked, model, f"{RELEARN_PREFIX}{k}")
    if mine.empty or mine.isna().any() or ref.isna().any():
        return f"relearning on k = {k} images: not measured on the units of both."

    def median(values):
        value = median_steps_to_recover([None if math.isinf(v) else float(v) for v in values], budget)
        return f"> {budget:g}" if math.isinf(value) else f"{value:g}"

    fewer, more = int((mine < ref).sum()), int((mine > ref).sum())
    return (
        f"relearning on k = {k} images: recovers in fewer steps than Retrain in {fewer} of {len(mine)} {units} "
        f"(in more in {more}, as many in {len(mine) - fewer - more}; median {median(mine)} vs {median(ref)} "
        f"steps; not recovered within {budget:g} steps: {int(np.isinf(mine).sum())} vs "
        f"{int(np.isinf(ref).sum())})."
    )


def _mean_outcome(attacked: pd.DataFrame, model: str, column: str, level: float):
    """The paired difference of `column` between a model and Retrain, and what it says: "back" (the class comes back
    more than under Retrain), "away" (it stays away more), "none" (no difference holds) or None (not measured)."""
    mine, ref = _paired(attacked, model, column)
    d = paired_difference(mine, ref, lower_is_better=False, confidence=level)
    outcome = None if _is_missing(d.mean) else "none" if not d.holds else "back" if d.mean < 0 else "away"
    return d, mine, ref, outcome


FINDINGS = {
    "none": "no difference holds",
    "back": "**the class comes back more than under Retrain**",
    "away": "**the class stays away more than under Retrain**",
}


def _mean_verdict(attacked: pd.DataFrame, model: str, column: str, what: str, units: str, level: float) -> str:
    d, mine, ref, outcome = _mean_outcome(attacked, model, column, level)
    if outcome is None:
        return f"{what}: not measured on the units of both."
    interval = (
        "no interval from one unit"
        if _is_missing(d.ci_low)
        else f"[{d.ci_low:+.1f}, {d.ci_high:+.1f}] at {100 * level:.2f}%"
    )
    return (
        f"{what}: {mine.mean():.1f}% vs Retrain's {ref.mean():.1f}% on the same {d.n} {units}, paired difference "
        f"{d.mean:+.1f} points ({interval}; Retrain higher in {d.reference_better}, lower in "
        f"{d.reference_worse}): {FINDINGS[outcome]}."
    )


# the attack verdicts against Retrain, each under the main evaluator's UA and the noise-aware one's
MEAN_VERDICTS = (
    ("resurgence_ua_final", "resurgence_ua_noise_aware_final", "resurgence, final UA"),
    ("partial_diffusion_ua_mean", "partial_diffusion_ua_noise_aware_mean", "partial diffusion, mean UA"),
)


def _verdict_level(n_methods: int) -> float:
    return 1 - (1 - PAIRED_CONFIDENCE) / (len(MEAN_VERDICTS) * n_methods)  # Bonferroni over the mean differences


def _verdicts(units: pd.DataFrame, models: Sequence[str], ks: Sequence[int]) -> list[str]:
    attacked = units[units["attacked"].astype(bool)]
    methods = [m for m in models if m not in (ORIGINAL, RETRAIN) and m in set(attacked["method"])]
    lines = ["## Verdicts against Retrain", ""]
    if RETRAIN not in set(attacked["method"]) or not methods:
        return lines + [
            "No verdicts: Retrain and a method must both be attacked (robustness.retrain and robustness.attacks.seeds)."
        ]
    one_seed = attacked["seed"].nunique() == 1
    units_word = "classes" if one_seed else "(class, seed) units"
    comparisons = len(MEAN_VERDICTS) * len(methods)
    level = _verdict_level(len(methods))
    budget = _budget(units, "relearn_budget_steps")
    lines += [
        f"Each method against Retrain on the same attacked {units_word}. The mean differences' intervals are "
        f"paired t intervals at {100 * level:.2f}% each, {100 * PAIRED_CONFIDENCE:.0f}% for all "
        f"{comparisons} together (Bonferroni); a difference holds where its interval excludes 0.",
        "",
    ]
    for m in methods:
        name = model_label(m)
        lines += [f"- {name}, {_relearn_verdict(attacked, m, k, budget, units_word)}" for k in ks]
        for column, _, what in MEAN_VERDICTS:
            lines.append(f"- {name}, {_mean_verdict(attacked, m, column, what, units_word, level)}")
    return lines


def _attack_verdict_changes(units: pd.DataFrame, models: Sequence[str]) -> list[str]:
    """The attack verdicts against Retrain that the noise-aware UA turns: each as it reads under both."""
    attacked = units[units["attacked"].astype(bool)]
    methods = [m for m in models if m not in (ORIGINAL, RETRAIN) and m in set(attacked["method"])]
    if RETRAIN not in set(attacked["method"]) or not methods:
        return []
    level, changes = _verdict_level(len(methods)), []
    for m in methods:
        for plain_column, aware_column, what in MEAN_VERDICTS:
            d_plain, mine, ref, plain = _mean_outcome(attacked, m, plain_column, level)
            d_aware, mine_a, ref_a, aware = _mean_outcome(attacked, m, aware_column, level)
            if None not in (plain, aware) and plain != aware:
                changes.append(
                    f"{model_label(m)}, {what}: under the UA {mine.mean():.1f}% vs Retrain's "
                    f"{ref.mean():.1f}% ({FINDINGS[plain]}); under the noise-aware UA {mine_a.mean():.1f}% "
                    f"vs {ref_a.mean():.1f}% ({FINDINGS[aware]})"
                )
    return changes


def _forgotten(values: pd.Series, line: float) -> pd.Series:
    return values >= line


def _noise_aware_section(config: dict, df: pd.DataFrame, units: pd.DataFrame, models: Sequence[str]) -> list[str]:
    noise_aware = noise_aware_evaluator(config)
    lines = ["## Does the noise-aware UA change a verdict?", ""]
    column = f"ua_{noise_aware}"
    if not noise_aware or column not in units.columns or units[column].isna().all():
        return lines + [
            "No noise-aware evaluator (robustness.evaluators has none with no_class_images): nothing to compare."
        ]
    line = _budget(units, "recovered_below_ua")
    line = RECOVERED_BELOW if _is_missing(line) else line
    rows = [m for m in models if m != ORIGINAL]
    means = {
        m: (round(_class_values(units, m, "ua_main").mean(), 1), round(_class_values(units, m, column).mean(), 1))
        for m in rows
    }
    pairs, flipped = 0, []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            pairs += 1
            plain, aware = (np.sign(means[a][j] - means[b][j]) for j in (0, 1))
            if not (np.isnan(plain) or np.isnan(aware)) and plain != aware:
                sign = {-1.0: "<", 0.0: "=", 1.0: ">"}
                flipped.append(
                    f"{model_label(a)} {sign[plain]} {model_label(b)} under UA ({means[a][0]:.1f} vs "
                    f"{means[b][0]:.1f}), {model_label(a)} {sign[aware]} {model_label(b)} under the "
                    f"noise-aware UA ({means[a][1]:.1f} vs {means[b][1]:.1f})"
                )
    order = (
        f"The noise-aware UA orders {len(flipped)} of the {pairs} pairs of rows differently from the UA (mean "
        "over classes, at the table's precision): " + "; ".join(flipped) + "."
        if flipped
        else f"The noise-aware UA orders all {pairs} pairs of rows as the UA does (mean over classes, at the "
        "table's precision)."
        if pairs
        else "One row: no ordering of rows to compare."
    )
    lines += [
        order,
        "",
        f"Verdicts at the {line:g}% line (forgotten: UA >= {line:g}%), per model, on its own "
        "generations (units) and at every attack point:",
        "",
    ]
    unit_changes = point_changes = 0
    for m in rows:
        own = units[units["method"] == m].dropna(subset=["ua_main", column])
        plain, aware = _forgotten(own["ua_main"], line), _forgotten(own[column], line)
        flips = int((plain != aware).sum())
        points = df[(df["method"] == m) & (df["attack"] != NO_ATTACK)].dropna(subset=["ua", "ua_noise_aware"])
        point_flips = int((_forgotten(points["ua"], line) != _forgotten(points["ua_noise_aware"], line)).sum())
        unit_changes, point_changes = unit_changes + flips, point_changes + point_flips
        lines.append(
            f"- {model_label(m)}: {flips} of {len(own)} units change verdict ({int((aware & ~plain).sum())} "
            f"forgotten only under the noise-aware UA, {int((plain & ~aware).sum())} only under the UA)"
            + (f"; {point_flips} of {len(points)} attack points" if len(points) else "")
            + "."
        )
    turned = _attack_verdict_changes(units, models)
    lines += [
        "",
        "The attack verdicts against Retrain (above) under the noise-aware UA: "
        + (f"{len(turned)} read otherwise: " + "; ".join(turned) + "." if turned else "every one reads the same."),
    ]
    changes = len(flipped) + unit_changes + point_changes + len(turned)
    lines += [
        "",
        "**No verdict changes**: the noise-aware UA orders the rows as the UA does, calls the same "
        "units and attack points forgotten and gives the same verdicts against Retrain."
        if changes == 0
        else f"**The noise-aware UA changes {changes} verdict(s)** ({len(flipped)} ordering(s) of rows, "
        f"{unit_changes} unit(s) and {point_changes} attack point(s) at the {line:g}% line, {len(turned)} "
        "verdict(s) against Retrain): a forgetting that hangs on them is the evaluator's, not the model's.",
    ]
    return lines


def render_robustness(config: dict, df: pd.DataFrame) -> str:
    """robustness.md from robustness.csv's rows."""
    models = [m for m in models_of(config) if m in set(df["method"])]
    units = df[df["attack"] == NO_ATTACK]
    ks = sorted(int(c[len(RELEARN_PREFIX) :]) for c in df.columns if c.startswith(RELEARN_PREFIX))
    beside = (
        " each beside Retrain (the base recipe trained without the class)"
        if RETRAIN in models
        else " (no Retrain: robustness.retrain is off)"
    )
    lines = [
        "# Robustness of the forgetting",
        "",
        f"Beyond the paper's evaluation: every model's generations of its forgotten class judged by every "
        f"evaluator and set against the real class, then attacks that try to bring the class back,{beside}. "
        f"{units['forget_class'].nunique()} forgotten class(es) x {units['seed'].nunique()} seed(s); "
        "robustness.csv holds every value.",
        "",
        *_table_a(config, units, models),
        "",
    ]
    if units["attacked"].astype(bool).any():
        lines += [*_table_b(df, units, models, ks), "", *_verdicts(units, models, ks), ""]
    else:
        lines += ["## B. Attacks", "", "No attacks (robustness.attacks.seeds is empty).", ""]
    lines += _noise_aware_section(config, df, units, models)
    return "\n".join(lines) + "\n"
