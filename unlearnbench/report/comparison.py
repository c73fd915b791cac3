"""This run beside the paper (comparison.md): means, cost ratios to the reference method, the poster's claims,
and paired differences with Bonferroni-corrected intervals."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from .layout import column_name
from .records import (
    ENTROPY,
    FID,
    GPU,
    GPU_RATIO,
    GPU_SAVING,
    METRICS,
    REMAINING,
    RTE,
    RTE_RATIO,
    RTE_WITH_AMORTISED_PRIORS_RATIO,
    RTE_WITH_PRIORS_RATIO,
    UA,
    _is_missing,
    display_name,
    load_paper_numbers,
    paper_claims,
    paper_errata,
)

# ---------------------------------------------------------------------------- paper comparison


def _ratio_rows(
    method: str,
    mean: Mapping[str, Mapping[str, float]],
    reference: str,
    prior: float = np.nan,
    shared_prior: float = np.nan,
    n_classes: int = 10,
) -> dict:
    """The headline ratios of one method against the reference, from one source of per-method means. With priors,
    the ratio as the paper counts it (every prior charged to each class) and amortised (the shared priors, made once
    for all forget classes, divided among `n_classes`)."""
    ref = mean[reference]
    rows = {
        RTE_RATIO: mean[method][RTE.label] / ref[RTE.label],
        GPU_RATIO: mean[method][GPU.label] / ref[GPU.label],
        GPU_SAVING: 100.0 * (1.0 - ref[GPU.label] / mean[method][GPU.label]),
    }
    if not _is_missing(prior):
        rows[RTE_WITH_PRIORS_RATIO] = (mean[method][RTE.label] + prior) / ref[RTE.label]
        shared = 0.0 if _is_missing(shared_prior) else shared_prior
        rows[RTE_WITH_AMORTISED_PRIORS_RATIO] = (mean[method][RTE.label] + prior - shared + shared / n_classes) / ref[
            RTE.label
        ]
    return rows


def paper_comparison(
    table: pd.DataFrame,
    methods: Sequence[str],
    prior_min: Mapping[str, float] | None = None,
    prior_shared_min: Mapping[str, float] | None = None,
    reference: str | None = None,
) -> pd.DataFrame:
    """This run's class means beside the paper's, and both sides' ratios to `reference` (none without one).

    Columns: method, quantity, this_run, paper (the paper's tables, averaged over the same forgotten
    classes as this run), paper_claim (the poster's headline figure, where it states one). `prior_min`
    (minutes per method) adds the ratio counting priors, the poster's 230x for SA.
    """
    paper = load_paper_numbers()
    paper = paper[paper["forget_class"].isin(run_classes(table))].groupby("method").mean(numeric_only=True)
    means_row = table.set_index("forget_class").loc["mean"]
    run_mean = {m: {metric.label: float(means_row[column_name(m, metric)]) for metric in METRICS} for m in methods}
    paper_mean = {
        m: {
            metric.label: float(paper.loc[m, metric.paper_column]) if m in paper.index else np.nan for metric in METRICS
        }
        for m in methods
    }
    rows = []
    for method in methods:
        for metric in METRICS:
            rows.append((method, metric.label, run_mean[method][metric.label], paper_mean[method][metric.label]))
    if reference in methods:
        for method in methods:
            if method in ("original", reference) or _is_missing(run_mean[method][RTE.label]):
                continue  # an imported model has no cost: no ratio to the reference's
            prior = (prior_min or {}).get(method, np.nan)
            shared = (prior_shared_min or {}).get(method, np.nan)
            ours = _ratio_rows(method, run_mean, reference, prior, shared, len(run_classes(table)))
            theirs = _ratio_rows(method, paper_mean, reference)
            rows += [(method, quantity, value, theirs.get(quantity, np.nan)) for quantity, value in ours.items()]
    df = pd.DataFrame(rows, columns=["method", "quantity", "this_run", "paper"])
    claims = paper_claims(reference)
    df["paper_claim"] = [claims.get((m, q), np.nan) for m, q in zip(df["method"], df["quantity"])]
    return df


# ---------------------------------------------------------------------------- paired differences

PAIRED_METRICS = (FID, ENTROPY, UA, REMAINING)  # the quality metrics; the costs have their ratios above
PAIRED_CONFIDENCE = 0.95  # for the whole family of comparisons of one table (Bonferroni)


class PairedDifference(NamedTuple):
    """A method minus the reference over paired units (forgotten class and seed)."""

    n: int
    mean: float
    ci_low: float  # the paired t interval; NaN with fewer than 2 units
    ci_high: float
    reference_better: int  # units where the reference's value is strictly better
    reference_worse: int  # ... strictly worse (the rest are ties)

    @classmethod
    def missing(cls, n: int = 0) -> "PairedDifference":
        """No difference to report (no units, or a value missing in one)."""
        return cls(n, np.nan, np.nan, np.nan, 0, 0)

    @property
    def holds(self) -> bool:
        """The interval excludes 0: the difference holds across the units."""
        return not _is_missing(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0)


def paired_difference(
    values, reference, lower_is_better: bool, confidence: float = PAIRED_CONFIDENCE
) -> PairedDifference:
    """Mean of `values - reference` with its paired t interval (the units are the sample)."""
    from scipy import stats  # here: the other importers of this module never need it

    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    n = len(diff)
    if n == 0 or np.isnan(diff).any():
        return PairedDifference.missing(n)
    mean = float(diff.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else np.nan
    reference_better = diff > 0 if lower_is_better else diff < 0
    reference_worse = diff < 0 if lower_is_better else diff > 0
    return PairedDifference(n, mean, mean - half, mean + half, int(reference_better.sum()), int(reference_worse.sum()))


def _paired_values(metrics: pd.DataFrame, method: str, column: str) -> pd.Series:
    """A method's main-run values of `column` indexed by (forget_class, seed)."""
    main = metrics[(metrics["method"] == method) & (metrics["variant"] == metrics["method"])]
    return main.set_index(["forget_class", "seed"])[column].astype(float).sort_index()


def paired_comparison(metrics: pd.DataFrame, methods: Sequence[str], reference: str | None = None) -> pd.DataFrame:
    """Each method minus `reference` over the (forgotten class, seed) cells both have, for FID, H, UA and the remaining
    classes' recognition: this run's and the paper's (its tables, over this run's classes, one unit per class).
    Intervals are Bonferroni-corrected: each at 1 - (1 - PAIRED_CONFIDENCE) / m for the m comparisons of this
    run's side, so that all of them hold together with PAIRED_CONFIDENCE. Empty when the reference is not in
    `methods`.

    Columns: method, metric, confidence, then the fields of `PairedDifference` for this run and, prefixed
    `paper_`, the paper, and `holds` / `paper_holds`.
    """
    fields = list(PairedDifference._fields)
    columns = ["method", "metric", "confidence", *fields, "holds", *(f"paper_{f}" for f in fields), "paper_holds"]
    others = [m for m in methods if m != reference]
    if reference not in methods or not others:
        return pd.DataFrame(columns=columns)
    comparisons = len(others) * len(PAIRED_METRICS)
    level = 1 - (1 - PAIRED_CONFIDENCE) / comparisons
    main = metrics[metrics["variant"] == metrics["method"]]
    classes = sorted(int(c) for c in main.loc[main["method"] == reference, "forget_class"].unique())
    paper = load_paper_numbers().set_index(["method", "forget_class"])
    in_paper = set(paper.index.get_level_values("method"))
    rows = []
    for method in others:
        for metric in PAIRED_METRICS:
            ours_values = _paired_values(metrics, method, metric.column)
            ref_values = _paired_values(metrics, reference, metric.column)
            both = ours_values.index.intersection(ref_values.index)
            ours = paired_difference(ours_values[both], ref_values[both], metric.lower_is_better, level)
            if method in in_paper and metric.paper_column and reference in in_paper:
                theirs = paired_difference(
                    paper.loc[[(method, c) for c in classes], metric.paper_column],
                    paper.loc[[(reference, c) for c in classes], metric.paper_column],
                    metric.lower_is_better,
                    level,
                )
            else:
                theirs = PairedDifference.missing()
            rows.append((method, metric.label, level, *ours, ours.holds, *theirs, theirs.holds))
    return pd.DataFrame(rows, columns=columns)


def _format_counts(mean: float, n: int, better: int, worse: int) -> str:
    return "–" if _is_missing(mean) else f"{better} / {n - better - worse} / {worse}"


def _format_paired(mean: float, low: float, high: float, decimals: int) -> str:
    if _is_missing(mean):
        return "–"

    def signed(value):  # + 0.0: a rounding residue (-1e-15) shows as +0.00, not -0.00
        return f"{round(value, decimals) + 0.0:+.{decimals}f}"

    interval = "" if _is_missing(low) else f" [{signed(low)}, {signed(high)}]"
    return signed(mean) + interval


def _verdict(row, ref: str) -> str:
    """One sentence: does the difference hold, and in whose favour."""
    metric = next(m for m in PAIRED_METRICS if m.label == row.metric)
    name = display_name(row.method)
    if _is_missing(row.mean):
        return f"{name} vs {ref}, {metric.label}: not measured."
    if not row.holds:
        return (
            f"{name} vs {ref}, {metric.label}: no difference holds (the interval contains 0; {ref} better in "
            f"{row.reference_better} of {row.n} cells, worse in {row.reference_worse})."
        )
    better = ref if (row.mean > 0) == metric.lower_is_better else name  # the sign of method - reference
    return (
        f"{name} vs {ref}, {metric.label}: **{better} is better** ({name} - {ref} "
        f"{_format_paired(row.mean, row.ci_low, row.ci_high, metric.decimals)}; {ref} better in "
        f"{row.reference_better} of {row.n} cells)."
    )


def render_paired(paired: pd.DataFrame, reference: str) -> str:
    """Markdown: the paired differences to the reference, this run's beside the paper's, then which hold, in words."""
    ref = display_name(reference)
    level = float(paired["confidence"].iloc[0]) if len(paired) else PAIRED_CONFIDENCE
    comparisons = len(paired)
    cells = int(paired["n"].max()) if len(paired) else 0
    lines = [
        f"## Paired differences to {ref}",
        "",
        f"Per (forgotten class, seed) cell, a method's value minus {ref}'s ({cells} cells; the methods of a cell "
        f"are sampled from the same noise): the mean, its paired t interval at {100 * level:.2f}% each, which is "
        f"{100 * PAIRED_CONFIDENCE:.0f}% for all {comparisons} comparisons of this run together (Bonferroni), and "
        f"in how many cells {ref} is better, tied and worse (better: FID lower; H, UA and remaining classes "
        "recognised higher). A difference holds where its interval excludes 0. The two seeds of a class share "
        "its forgotten class, so the intervals treat cells as more independent than they may be; the cell "
        "counts do not assume normality, and a t interval may pass a bounded metric's bounds (UA: 0-100 %). "
        "The paper's side: its tables, one unit per class, at the same level.",
        "",
        f"| Method | Metric | This run: mean [CI] | {ref} better / tied / worse | holds | "
        f"Paper: mean [CI] | {ref} better / tied / worse |",
        "|---|---|---:|---:|:---:|---:|---:|",
    ]
    decimals = {metric.label: metric.decimals for metric in PAIRED_METRICS}
    for row in paired.itertuples(index=False):
        d = decimals[row.metric]
        lines.append(
            "| "
            + " | ".join(
                [
                    display_name(row.method),
                    row.metric,
                    _format_paired(row.mean, row.ci_low, row.ci_high, d),
                    _format_counts(row.mean, row.n, row.reference_better, row.reference_worse),
                    "–" if _is_missing(row.mean) else ("yes" if row.holds else "no"),
                    _format_paired(row.paper_mean, row.paper_ci_low, row.paper_ci_high, d),
                    _format_counts(row.paper_mean, row.paper_n, row.paper_reference_better, row.paper_reference_worse),
                ]
            )
            + " |"
        )
    lines += ["", "In words (this run):", ""]
    lines += [f"- {_verdict(row, ref)}" for row in paired.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def run_classes(table: pd.DataFrame) -> list[int]:
    """The forgotten classes of a paper-layout table (its rows before "mean" and "std")."""
    return [int(c) for c in table["forget_class"] if str(c) not in ("mean", "std")]


def _format_quantity(quantity: str, value: float) -> str:
    if _is_missing(value):
        return "–"
    if quantity.endswith("[x]"):
        return f"{value:.1f}x"
    if quantity == GPU_SAVING:
        return f"{value:.0f}%"
    decimals = next((m.decimals for m in METRICS if m.label == quantity), 2)
    return f"{value:.{decimals}f}"


def render_comparison(
    comparison: pd.DataFrame,
    scale_note: str | None = None,
    classes: Sequence[int] | None = None,
    cost_note: str | None = None,
    paired: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
    reference: str | None = None,
) -> str:
    """Markdown: the comparison table, with the caveat that this run's scale may not be the paper's, then the
    paired differences to the reference (`paired_comparison`) when given."""
    classes = list(range(10)) if classes is None else list(classes)
    over = (
        "all 10"
        if len(classes) == 10
        else f"class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes))} only"
    )
    lines = [
        "# This run vs the paper",
        "",
        "Means over forgotten classes (seed-averaged); the paper's are over the same classes as this run's "
        f"({over}). The paper's numbers are CIFAR-10 with a ~36M-parameter "
        "DDPM, 1000-step sampling and Inception FID; this run's scale (dataset, model, sampler, FID features, "
        "hardware) may differ, so compare directions and ratios rather than absolute values.",
    ]
    if scale_note:
        lines += ["", f"This run: {scale_note}."]
    if cost_note:
        lines += ["", f"**{cost_note}**"]
    lines += ["", "| Method | Quantity | This run | Paper (tables) | Paper (claim) |", "|---|---|---:|---:|---:|"]
    ref = display_name(reference) if reference else ""
    for row in comparison.itertuples(index=False):
        cells = [display_name(row.method), row.quantity.format(reference=ref)] + [
            _format_quantity(row.quantity, value) for value in (row.this_run, row.paper, row.paper_claim)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    claims = "; ".join(
        f"{display_name(m)}: {q.format(reference=ref).rsplit(' [', 1)[0]} = {_format_quantity(q, v)}"
        for (m, q), v in paper_claims(reference).items()
    )
    lines += [
        "",
        (f"Ratios are relative to {ref}" if reference else "No reference method: no ratios")
        + (f"; the claims are the poster's headline figures ({claims})" if claims else "")
        + ". With priors, two counts: as the paper's (every prior charged to one class), and amortised (a "
        f"shared prior, made once for all forgotten classes, divided among this run's {len(classes)}). "
        "The paper's RTE is taken to be minutes and GPU memory GB. The paper's means are computed from its "
        f"per-class numbers (the claims are over all 10 classes); {paper_errata()}",
    ]
    lines += [line for note in notes for line in ("", note)]
    if paired is not None and len(paired):
        lines += ["", render_paired(paired, reference).rstrip("\n")]
    return "\n".join(lines) + "\n"
