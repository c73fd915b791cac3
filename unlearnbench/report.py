"""Aggregates of the per-job metrics records: `metrics.csv`, the paper's tables, the paper comparison.

Everything here is a pure function of records or data frames (plus atomic file writes),
so the tests can call it without models or devices.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .config import evaluated_methods
from .errors import UserError
from .files import DIGESTS, atomic_output, write_digests
from .method_api import check_labels, is_control, method_label, method_note
from .workflow import REPORTS, TABLES

display_name = method_label  # a method file's DISPLAY_NAME


class Metric(NamedTuple):
    """A table column: its label, its record column, its paper_numbers.csv column, precision, direction."""

    label: str
    column: str
    paper_column: str
    decimals: int
    lower_is_better: bool


FID = Metric("FID", "fid", "fid", 2, True)
RTE = Metric("RTE [min]", "rte_min", "rte_min", 3, True)
GPU = Metric("GPU [GB]", "gpu_peak_gb", "gpu_gb", 2, True)
ENTROPY = Metric("H [nats]", "H", "H", 3, False)
UA = Metric("UA [%]", "UA", "UA", 2, False)
METRICS = (FID, RTE, GPU, ENTROPY, UA)
# Not in the paper's tables: the share of the remaining classes' samples the evaluator recognises (a model that
# forgets by collapsing every class shows here, where guidance can hide it from FID).
REMAINING = Metric("Remaining recognised [%]", "remaining_acc", "", 1, False)
TABLE1_METRICS = (FID, RTE, GPU)
TABLE2_METRICS = (ENTROPY, UA)

RECORD_COLUMNS = [
    "method", "variant", "forget_class", "seed",
    "fid", "kid", "H", "UA", "forget_prob", "remaining_acc",
    "rte_min", "prior_min", "prior_shared_min", "gpu_peak_gb", "gpu_peak_source", "gpu_null_reason",
    "torch_peak_allocated_gb", "host_rss_peak_gb", "device_name", "speed_switches", "imported_from",
    "params", "param_origins",  # JSON: the effective params of what ran, and where each non-published value came from
]
_REQUIRED = ("method", "forget_class", "seed")
_IDENTITY = ["method", "variant", "forget_class", "seed"]
# Every evaluation writes these, and every unlearning job its RTE: a record without one is broken, and a mean
# taken without it would silently cover fewer classes or seeds than the others.
_MEASURED = ("fid", "H", "UA")
_TOP_LEVEL = ("fid", "kid", "H", "UA", "forget_prob", "remaining_acc", "prior_min", "prior_shared_min", "imported_from")
_JSON = ("params", "param_origins")  # kept whole, as JSON text in one cell each
_FROM_COST = ("rte_min", "gpu_peak_gb", "gpu_peak_source", "gpu_null_reason",
              "torch_peak_allocated_gb", "host_rss_peak_gb", "device_name", "speed_switches")
_NUMERIC = ("fid", "kid", "H", "UA", "forget_prob", "remaining_acc", "rte_min", "prior_min", "prior_shared_min",
            "gpu_peak_gb", "torch_peak_allocated_gb", "host_rss_peak_gb")

# The ratios of a method to the comparison's reference (config `reference_method`), as comparison.md labels them:
# "{reference}" is the reference's display name.
RTE_RATIO = "RTE / {reference} RTE [x]"
RTE_WITH_PRIORS_RATIO = "(RTE + priors) / {reference} RTE [x]"  # as the paper counts: all shared priors on one class
RTE_WITH_AMORTISED_PRIORS_RATIO = "(RTE + priors, shared ones / classes) / {reference} RTE [x]"
GPU_RATIO = "GPU / {reference} GPU [x]"
GPU_SAVING = "{reference} GPU saving [%]"
# paper_claims.csv's names of the quantities the poster states a headline figure for
CLAIMED_QUANTITIES = {"rte_ratio": RTE_RATIO, "rte_with_priors_ratio": RTE_WITH_PRIORS_RATIO, "gpu_saving": GPU_SAVING}


def method_order(methods: Sequence[str] = ()):
    """A sort key: the original first, then `methods` in their order (the config's: the tables' columns follow
    it), then any other method by name."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(["original", *methods]))}
    return lambda method: (rank.get(method, len(rank)), method)


# ---------------------------------------------------------------------------- files


def _write_text(path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_paper_numbers() -> pd.DataFrame:
    """The paper's Tables 1 and 2 as tidy rows (method, forget_class, fid, rte_min, gpu_gb, H, UA)."""
    with resources.files("unlearnbench").joinpath("paper_numbers.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_claims(reference: str | None) -> dict[tuple[str, str], float]:
    """The poster's headline figures (paper_claims.csv) relative to `reference`: {(method, quantity label): value}."""
    with resources.files("unlearnbench").joinpath("paper_claims.csv").open("r", encoding="utf-8") as f:
        claims = pd.read_csv(f)
    return {(row.method, CLAIMED_QUANTITIES[row.quantity]): float(row.claim)
            for row in claims.itertuples(index=False) if row.reference == reference}


def load_paper_ablation() -> pd.DataFrame:
    """The paper's ablations (paper_ablation.csv): method, param, forget_class, value, UA, fid (NaN: not reported)."""
    with resources.files("unlearnbench").joinpath("paper_ablation.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_errata() -> str:
    """What the paper's printed summary cells get wrong against its per-class numbers (paper_errata.txt)."""
    return resources.files("unlearnbench").joinpath("paper_errata.txt").read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------------------- metrics.csv


def _flatten_record(record: Mapping, source) -> dict:
    """One tidy row from one metrics record. Identity keys and the measured metrics are mandatory, numbers must
    be numbers; optional values (GPU memory on a CPU, priors) may be missing and become NaN."""
    missing = [key for key in _REQUIRED if record.get(key) is None]
    if missing:
        raise UserError(f"metrics record {source} lacks {', '.join(missing)}")
    try:
        row = {"method": str(record["method"]), "variant": str(record.get("variant") or record["method"]),
               "forget_class": int(record["forget_class"]), "seed": int(record["seed"])}
    except (TypeError, ValueError) as err:
        raise UserError(f"metrics record {source}: forget_class and seed must be integers ({err})") from None
    cost = record.get("cost") or {}
    provenance = record.get("provenance") or {}
    row.update({key: record.get(key) for key in _TOP_LEVEL})
    row.update({key: cost.get(key) for key in _FROM_COST})
    row.update({key: None if record.get(key) is None else json.dumps(record[key], sort_keys=True) for key in _JSON})
    if row["rte_min"] is None and cost.get("rte_s") is not None:
        row["rte_min"] = cost["rte_s"] / 60.0
    if row["device_name"] is None:
        row["device_name"] = provenance.get("device_name")
    for key in _NUMERIC:
        if row[key] is not None:
            try:
                row[key] = float(row[key])
            except (TypeError, ValueError):
                raise UserError(f"metrics record {source}: {key!r} = {row[key]!r} is not a number") from None
    absent = [key for key in _MEASURED if _is_missing(row[key])]
    if row["method"] != "original" and not row["imported_from"] and _is_missing(row["rte_min"]):
        absent.append("rte_min")
    if absent:
        raise UserError(f"metrics record {source} has no value for {', '.join(absent)}: the job that wrote it did "
                        "not finish measuring; delete the record and rerun the workflow, which redoes it")
    for key, value in provenance.items():
        if key == "versions" and isinstance(value, Mapping):
            row.update({f"version_{pkg}": version for pkg, version in value.items()})
            continue
        name = f"provenance_{key}" if key in RECORD_COLUMNS else key  # e.g. provenance's own seed
        row[name] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return row


def collect_records(paths: Iterable, methods: Sequence[str] = ()) -> pd.DataFrame:
    """Per-job metrics JSON records -> one tidy row each, in method (method_order(methods)), variant, class, seed
    order."""
    from .checkpoints import read_json

    rows, sources = [], {}
    for path in paths:
        row = _flatten_record(read_json(path), path)
        # A model scored at another guidance weight (the sweep) is another measurement, not a second copy.
        key = tuple(row.get(k) for k in (*_IDENTITY, "guidance_w"))
        if key in sources:  # averaged in, it would weigh one job twice (or mix two runs' results)
            raise UserError(f"two metrics records of {dict(zip(_IDENTITY, key))}: {sources[key]} and {path}; "
                            "pass each job's record once, from one run")
        sources[key] = path
        rows.append(row)
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in RECORD_COLUMNS))
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS + extra)
    for column in _NUMERIC:
        df[column] = df[column].astype(float)
    if df.empty:
        return df
    order = pd.DataFrame({"rank": df["method"].map(lambda m: method_order(methods)(m)[0]),
                          "side": df["variant"] != df["method"]})
    df = pd.concat([order, df], axis=1)
    df = df.sort_values(["rank", "method", "side", "variant", "forget_class", "seed"], kind="stable")
    return df.drop(columns=["rank", "side"]).reset_index(drop=True)


def check_coverage(df: pd.DataFrame, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int]) -> None:
    """The main records must be exactly methods x classes x seeds: a table of other classes or seeds than the
    config's, or of fewer, would read like the configured one."""
    main = df[df["variant"] == df["method"]]
    have = set(zip(main["method"], main["forget_class"].astype(int), main["seed"].astype(int)))
    want = {(m, int(c), int(s)) for m in methods for c in classes for s in seeds}
    for problem, keys in (("no record", want - have),
                          ("a record outside the config's methods, forget_classes and seeds", have - want)):
        if keys:
            listed = ", ".join(f"{m} class {c} seed {s}" for m, c, s in sorted(keys)[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            raise UserError(f"{problem} for {listed}{more}; the tables need one record per method, forgotten class "
                            "and seed of the config (the workflow's aggregate rule passes exactly these)")


def write_metrics_csv(df: pd.DataFrame, path) -> None:
    """Write metrics.csv atomically (NaN as empty cells)."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)


# ---------------------------------------------------------------------------- the paper's layout


def per_class_means(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Seed-averaged metrics per (method, forget_class), main variants only: the paper's unit is the class."""
    main = df[df["method"].isin(methods) & (df["variant"] == df["method"])]
    columns = [metric.column for metric in METRICS]
    # skipna=False: a value missing for one seed (e.g. GPU memory of a CPU job) leaves the cell empty, not
    # the mean of the other seeds.
    means = main.groupby(["method", "forget_class"], as_index=False)[columns].mean(skipna=False)
    # The original's cost record is its base training: no unlearning cost to set beside the others.
    means.loc[means["method"] == "original", [RTE.column, GPU.column]] = np.nan
    return means


def column_name(method: str, metric: Metric) -> str:
    return f"{display_name(method)} {metric.label}"


def paper_layout_table(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Rows "0".."9" (classes present), "mean", "std" (ddof=1 over classes); five metric columns per method."""
    check_labels([m for m in methods if m != "original"])  # one column per method, none overwriting another
    means = per_class_means(df, methods)
    classes = sorted(int(c) for c in means["forget_class"].unique())
    # A mean over fewer classes would read like the others: refuse an incomplete method instead.
    for method in methods:
        have = set(means.loc[means["method"] == method, "forget_class"].astype(int))
        if have != set(classes):
            raise UserError(f"no metrics record of method {method!r} for forgotten class(es) "
                             f"{sorted(set(classes) - have)}: its mean would cover other classes than the rest; "
                             "pass every record (the workflow's aggregate rule does)")
    main = df[df["method"].isin(methods) & (df["variant"] == df["method"])]
    for method, rows in main.groupby("method"):
        seeds = rows.groupby("forget_class")["seed"].apply(frozenset)
        if seeds.nunique() > 1:  # a class averaged over fewer seeds would read like the others
            every = frozenset().union(*seeds)
            short = {int(c): sorted(every - s) for c, s in seeds.items() if s != every}
            raise UserError(f"method {method!r} lacks the records of seed(s) {short} (forgotten class: missing "
                            "seeds); pass every record (the workflow's aggregate rule does)")
    columns = {"forget_class": [str(c) for c in classes] + ["mean", "std"]}
    for method in methods:
        per_class = means[means["method"] == method].set_index("forget_class").reindex(classes)
        for metric in METRICS:
            values = per_class[metric.column].astype(float)
            columns[column_name(method, metric)] = [*values, values.mean(skipna=False),
                                                    values.std(ddof=1, skipna=False)]
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------- rendering


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _best_methods(row: pd.Series, methods: Sequence[str], metric: Metric) -> set[str]:
    """Unlearning methods holding the row's best value at display precision (the original and controls do not
    compete); none when fewer than two compete."""
    values = {m: round(float(row[column_name(m, metric)]), metric.decimals) for m in methods
              if m != "original" and not is_control(m) and not _is_missing(float(row[column_name(m, metric)]))}
    if len(values) < 2:
        return set()
    best = min(values.values()) if metric.lower_is_better else max(values.values())
    return {m for m, value in values.items() if value == best}


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
                  "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _cells(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[Metric], bold) -> list[list[str]]:
    """Formatted body cells, row label first, the row's best values wrapped by `bold`."""
    body = []
    for _, row in table.iterrows():
        label = str(row["forget_class"])
        cells = [label]
        for method in methods:
            for metric in metrics:
                value = float(row[column_name(method, metric)])
                text = "" if _is_missing(value) else f"{value:.{metric.decimals}f}"
                if text and label != "std" and method in _best_methods(row, methods, metric):
                    text = bold(text)
                cells.append(text)
        body.append(cells)
    return body


def _legend(body: list[list[str]], methods: Sequence[str], metrics: Sequence[Metric], dash: str) -> list[str]:
    """What the table's marks mean: bold, the mean and std rows, and (where one appears) the empty cell."""
    directions = ", ".join(f"{m.label} {'lower' if m.lower_is_better else 'higher'}" for m in metrics)
    controls = ", ".join(display_name(m) for m in methods if is_control(m))
    not_bold = f"; {controls}: control, never bold" if controls else ""
    lines = [f"Best unlearning method per row in bold ({directions} is better{not_bold}). mean and std (sample, "
             "ddof=1) over forgotten classes of seed-averaged values."]
    if any(not cell for cells in body for cell in cells[1:]):
        lines.append(f"{dash} = no value: the original model has no unlearning cost (it was trained, not unlearned), "
                     "GPU memory is measured on a GPU only, and an imported model's cost is not known.")
    return lines


def _render(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[Metric], fmt: str,
            notes: Sequence[str] = ()) -> str:
    """The table, then its legend and `notes` (paragraphs in markdown, % comments in LaTeX)."""
    if fmt == "markdown":
        header = ["Class"] + [column_name(m, metric) for m in methods for metric in metrics]
        body = _cells(table, methods, metrics, lambda text: f"**{text}**")
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(cell or "–" for cell in cells) + " |" for cells in body]
        lines += ["", " ".join(_legend(body, methods, metrics, "–"))]
        lines += [line for note in notes for line in ("", note)]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        width = len(metrics)
        body = _cells(table, methods, metrics, lambda text: rf"\textbf{{{text}}}")
        groups = " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{_latex_escape(display_name(m))}}}" for m in methods)
        rules = " ".join(rf"\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(methods)))
        labels = " & ".join(_latex_escape(metric.label) for _ in methods for metric in metrics)
        lines = [rf"\begin{{tabular}}{{l{'r' * width * len(methods)}}}", r"\toprule",
                 rf" & {groups} \\", rules, rf"Class & {labels} \\", r"\midrule"]
        for cells in body:
            if cells[0] == "mean":
                lines.append(r"\midrule")
            lines.append(" & ".join(cell or "--" for cell in cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [f"% {line}" for line in (*_legend(body, methods, metrics, "--"), *notes)]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}: use 'markdown' or 'latex'")


def render_table1(table: pd.DataFrame, methods: Sequence[str], fmt: str = "markdown", notes: Sequence[str] = ()) -> str:
    """The paper's Table 1: FID on the remaining classes, RTE, GPU peak memory."""
    return _render(table, methods, TABLE1_METRICS, fmt, notes)


def render_table2(table: pd.DataFrame, methods: Sequence[str], fmt: str = "markdown", notes: Sequence[str] = ()) -> str:
    """The paper's Table 2: entropy H and unlearning accuracy UA on the forgotten class."""
    return _render(table, methods, TABLE2_METRICS, fmt, notes)


def _distinct(metrics: pd.DataFrame, key: str) -> str | None:
    """The values of a provenance column, as text ("20", "25, 50", or "1291-1298" for many numbers); None if absent."""
    if key not in metrics.columns or metrics[key].dropna().empty:
        return None
    values = metrics[key].dropna()
    if pd.api.types.is_numeric_dtype(values):
        if values.nunique() > 3:
            return f"{values.min():g}-{values.max():g}"
        return ", ".join(f"{v:g}" for v in sorted(values.unique()))
    return ", ".join(sorted(values.astype(str).unique()))


def setup_notes(metrics: pd.DataFrame) -> tuple[list[str], list[str]]:
    """What Tables 1 and 2 measured, from metrics.csv's provenance (the sample counts differ from the paper's)."""
    backend, generated, real, forget = (_distinct(metrics, key) for key in
                                        ("fid_backend", "n_fid_gen_per_class", "n_fid_real", "n_forget_samples"))
    table1 = [f"FID: {backend} features of {generated} generated images per remaining class against {real} real "
              "images of the remaining classes. RTE: the timed unlearning loop, without the method's priors "
              "(comparison.md counts them)."] if None not in (backend, generated, real) else []
    table2 = [f"H and UA on {forget} generated images of the forgotten class, labelled by the evaluation classifier "
              "(UA: the share it does not call the forgotten class)."] if forget is not None else []
    return table1, table2


# ---------------------------------------------------------------------------- paper comparison


def _ratio_rows(method: str, mean: Mapping[str, Mapping[str, float]], reference: str, prior: float = np.nan,
                shared_prior: float = np.nan, n_classes: int = 10) -> dict:
    """The headline ratios of one method against the reference, from one source of per-method means. With priors,
    the ratio as the paper counts it (every prior charged to each class) and amortised (the shared priors, made once
    for all forget classes, divided among `n_classes`)."""
    ref = mean[reference]
    rows = {RTE_RATIO: mean[method][RTE.label] / ref[RTE.label],
            GPU_RATIO: mean[method][GPU.label] / ref[GPU.label],
            GPU_SAVING: 100.0 * (1.0 - ref[GPU.label] / mean[method][GPU.label])}
    if not _is_missing(prior):
        rows[RTE_WITH_PRIORS_RATIO] = (mean[method][RTE.label] + prior) / ref[RTE.label]
        shared = 0.0 if _is_missing(shared_prior) else shared_prior
        rows[RTE_WITH_AMORTISED_PRIORS_RATIO] = (mean[method][RTE.label] + prior - shared + shared / n_classes) / ref[RTE.label]
    return rows


def paper_comparison(table: pd.DataFrame, methods: Sequence[str],
                     prior_min: Mapping[str, float] | None = None,
                     prior_shared_min: Mapping[str, float] | None = None, reference: str | None = None) -> pd.DataFrame:
    """This run's class means beside the paper's, and both sides' ratios to `reference` (none without one).

    Columns: method, quantity, this_run, paper (the paper's tables, averaged over the same forgotten
    classes as this run), paper_claim (the poster's headline figure, where it states one). `prior_min`
    (minutes per method) adds the ratio counting priors, the poster's 230x for SA.
    """
    paper = load_paper_numbers()
    paper = paper[paper["forget_class"].isin(run_classes(table))].groupby("method").mean(numeric_only=True)
    means_row = table.set_index("forget_class").loc["mean"]
    run_mean = {m: {metric.label: float(means_row[column_name(m, metric)]) for metric in METRICS} for m in methods}
    paper_mean = {m: {metric.label: float(paper.loc[m, metric.paper_column]) if m in paper.index else np.nan
                      for metric in METRICS} for m in methods}
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


def paired_difference(values, reference, lower_is_better: bool,
                      confidence: float = PAIRED_CONFIDENCE) -> PairedDifference:
    """Mean of `values - reference` with its paired t interval (the units are the sample)."""
    from scipy import stats  # here: the other importers of this module never need it

    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    n = len(diff)
    if n == 0 or np.isnan(diff).any():
        return PairedDifference.missing(n)
    mean = float(diff.mean())
    half = (float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
            if n > 1 else np.nan)
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
                theirs = paired_difference(paper.loc[[(method, c) for c in classes], metric.paper_column],
                                           paper.loc[[(reference, c) for c in classes], metric.paper_column],
                                           metric.lower_is_better, level)
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
        return (f"{name} vs {ref}, {metric.label}: no difference holds (the interval contains 0; {ref} better in "
                f"{row.reference_better} of {row.n} cells, worse in {row.reference_worse}).")
    better = ref if (row.mean > 0) == metric.lower_is_better else name  # the sign of method - reference
    return (f"{name} vs {ref}, {metric.label}: **{better} is better** ({name} - {ref} "
            f"{_format_paired(row.mean, row.ci_low, row.ci_high, metric.decimals)}; {ref} better in "
            f"{row.reference_better} of {row.n} cells).")


def render_paired(paired: pd.DataFrame, reference: str) -> str:
    """Markdown: the paired differences to the reference, this run's beside the paper's, then which hold, in words."""
    ref = display_name(reference)
    level = float(paired["confidence"].iloc[0]) if len(paired) else PAIRED_CONFIDENCE
    comparisons = len(paired)
    cells = int(paired["n"].max()) if len(paired) else 0
    lines = [f"## Paired differences to {ref}", "",
             f"Per (forgotten class, seed) cell, a method's value minus {ref}'s ({cells} cells; the methods of a cell "
             f"are sampled from the same noise): the mean, its paired t interval at {100 * level:.2f}% each, which is "
             f"{100 * PAIRED_CONFIDENCE:.0f}% for all {comparisons} comparisons of this run together (Bonferroni), and "
             f"in how many cells {ref} is better, tied and worse (better: FID lower; H, UA and remaining classes "
             "recognised higher). A difference holds where its interval excludes 0. The two seeds of a class share "
             "its forgotten class, so the intervals treat cells as more independent than they may be; the cell "
             "counts do not assume normality, and a t interval may pass a bounded metric's bounds (UA: 0-100 %). "
             "The paper's side: its tables, one unit per class, at the same level.", "",
             f"| Method | Metric | This run: mean [CI] | {ref} better / tied / worse | holds | "
             f"Paper: mean [CI] | {ref} better / tied / worse |", "|---|---|---:|---:|:---:|---:|---:|"]
    decimals = {metric.label: metric.decimals for metric in PAIRED_METRICS}
    for row in paired.itertuples(index=False):
        d = decimals[row.metric]
        lines.append("| " + " | ".join([
            display_name(row.method), row.metric,
            _format_paired(row.mean, row.ci_low, row.ci_high, d),
            _format_counts(row.mean, row.n, row.reference_better, row.reference_worse),
            "–" if _is_missing(row.mean) else ("yes" if row.holds else "no"),
            _format_paired(row.paper_mean, row.paper_ci_low, row.paper_ci_high, d),
            _format_counts(row.paper_mean, row.paper_n, row.paper_reference_better, row.paper_reference_worse),
        ]) + " |")
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


def render_comparison(comparison: pd.DataFrame, scale_note: str | None = None, classes: Sequence[int] | None = None,
                      cost_note: str | None = None, paired: pd.DataFrame | None = None,
                      notes: Sequence[str] = (), reference: str | None = None) -> str:
    """Markdown: the comparison table, with the caveat that this run's scale may not be the paper's, then the
    paired differences to the reference (`paired_comparison`) when given."""
    classes = list(range(10)) if classes is None else list(classes)
    over = ("all 10" if len(classes) == 10 else
            f"class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes))} only")
    lines = ["# This run vs the paper", "",
             "Means over forgotten classes (seed-averaged); the paper's are over the same classes as this run's "
             f"({over}). The paper's numbers are CIFAR-10 with a ~36M-parameter "
             "DDPM, 1000-step sampling and Inception FID; this run's scale (dataset, model, sampler, FID features, "
             "hardware) may differ, so compare directions and ratios rather than absolute values."]
    if scale_note:
        lines += ["", f"This run: {scale_note}."]
    if cost_note:
        lines += ["", f"**{cost_note}**"]
    lines += ["", "| Method | Quantity | This run | Paper (tables) | Paper (claim) |", "|---|---|---:|---:|---:|"]
    ref = display_name(reference) if reference else ""
    for row in comparison.itertuples(index=False):
        cells = [display_name(row.method), row.quantity.format(reference=ref)] + [
            _format_quantity(row.quantity, value) for value in (row.this_run, row.paper, row.paper_claim)]
        lines.append("| " + " | ".join(cells) + " |")
    claims = "; ".join(f"{display_name(m)}: {q.format(reference=ref).rsplit(' [', 1)[0]} = {_format_quantity(q, v)}"
                       for (m, q), v in paper_claims(reference).items())
    lines += ["", (f"Ratios are relative to {ref}" if reference else "No reference method: no ratios") +
              (f"; the claims are the poster's headline figures ({claims})" if claims else "") +
              ". With priors, two counts: as the paper's (every prior charged to one class), and amortised (a "
              f"shared prior, made once for all forgotten classes, divided among this run's {len(classes)}). "
              "The paper's RTE is taken to be minutes and GPU memory GB. The paper's means are computed from its "
              f"per-class numbers (the claims are over all 10 classes); {paper_errata()}"]
    lines += [line for note in notes for line in ("", note)]
    if paired is not None and len(paired):
        lines += ["", render_paired(paired, reference).rstrip("\n")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- all reports


def _scale_note(metrics: pd.DataFrame) -> str:
    keys = ["dataset", "sampler", "sampler_steps", "guidance_w", "fid_backend", "n_fid_gen_per_class", "n_fid_real",
            "n_forget_samples", "device_name", "speed_switches"]  # the paper: 500 forget-class images (H, UA)
    return "; ".join(f"{key} = {values}" for key in keys if (values := _distinct(metrics, key)) is not None)


def _shared_prior_note(main: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """The shared priors' cost, once per method (every record of the method carries the same figure)."""
    if "prior_shared_min" not in main.columns:
        return []
    shared = main[main["method"].isin(methods)].groupby("method")["prior_shared_min"].first().dropna()
    return [f"{display_name(m)}'s shared priors (made once for all forgotten classes): {minutes:.3f} min."
            for m, minutes in shared.items() if minutes > 0]


def mixed_cost_note(metrics: pd.DataFrame, methods: Sequence[str]) -> str | None:
    """A warning when the unlearning costs averaged in the tables were measured on different hardware or with
    different speed switches (device and `performance` do not rerun finished jobs: results agree up to rounding,
    their RTE and memory do not)."""
    unlearned = metrics[metrics["method"].isin(methods) & (metrics["method"] != "original")
                        & (metrics["variant"] == metrics["method"])]  # what the tables average
    if "imported_from" in unlearned.columns:  # imported models' costs were not measured: no setup of theirs
        unlearned = unlearned[unlearned["imported_from"].isna()]
    keys = [key for key in ("device_name", "speed_switches") if key in unlearned.columns]
    # A missing value (a record from before speed_switches were recorded) is no evidence of another setup.
    if unlearned.empty or not any(unlearned[key].dropna().astype(str).nunique() > 1 for key in keys):
        return None
    setups = unlearned[keys].map(lambda v: "unknown" if _is_missing(v) else str(v)).value_counts()
    parts = "; ".join(f"{' / '.join(setup)} ({count} jobs)" for setup, count in setups.items())
    return (f"The unlearning costs (RTE, GPU) mix {len(setups)} setups ({' / '.join(keys)}): {parts}. Their means "
            "are not one machine's cost: rerun the jobs of the others (`snakemake --forcerun unlearn ...`) to compare "
            "on one setup.")


def imported_note(metrics: pd.DataFrame, methods: Sequence[str]) -> str | None:
    """Which columns are models imported from elsewhere (config `imported`), whose RTE and GPU are empty."""
    if "imported_from" not in metrics.columns:  # a metrics.csv written before models could be imported
        return None
    imported = [m for m in methods if metrics.loc[metrics["method"] == m, "imported_from"].notna().any()]
    if not imported:
        return None
    return (f"{', '.join(display_name(m) for m in imported)}: imported, unlearned outside the suite (config "
            "'imported'); evaluated as the others, cost not measured.")


def method_notes(metrics: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """Under the tables: what each method that is not the published algorithm changes (its file's NOTE), and every
    param set by hand against the scale rules (from the records' `param_origins`, so from what ran)."""
    notes = []
    for method in methods:
        if method == "original":
            continue
        note = method_note(method)
        if note:
            notes.append(f"{display_name(method)}: {note}")
    by_hand = []
    main = metrics[metrics["variant"] == metrics["method"]]
    for method in methods:
        rows = main[main["method"] == method]
        if "param_origins" not in rows.columns or rows.empty:
            continue
        params = [json.loads(p) if isinstance(p, str) else {} for p in rows["params"]]
        origins = [json.loads(o) if isinstance(o, str) else {} for o in rows["param_origins"]]
        hand = sorted({name for o in origins for name, why in o.items() if not why.startswith(("rule", "variant"))})
        if hand:
            values = "; ".join(f"{name} = {params[0].get(name)!r} ({origins[0][name]})" for name in hand
                               if name in origins[0])
            by_hand.append(f"{display_name(method)}: {values}")
    if by_hand:
        notes.append("Set by hand, not by the scale rules (unlearnbench/scaling.py; metrics.csv `params` holds every "
                     "row's values): " + ". ".join(by_hand) + ".")
    elif "params" in main.columns and main["params"].notna().any():
        notes.append("Every method's params are its paper values scaled by the rules of unlearnbench/scaling.py "
                     "(metrics.csv `params` holds every row's values).")
    return notes


def write_reports(metrics_csv, out_dir, methods: Sequence[str] | None = None,
                  reference: str | None = None) -> dict[str, Path]:
    """table.csv, table1/2 (.md, .tex) and comparison.md (ratios and paired differences to `reference`) from
    metrics.csv, each written atomically. The tables' columns follow `methods` (default: the original, then by name)."""
    metrics = pd.read_csv(metrics_csv)
    if methods is None:
        methods = sorted(metrics["method"].unique(), key=method_order())
    methods = list(methods)
    out_dir = Path(out_dir)
    table = paper_layout_table(metrics, methods)
    main = metrics[metrics["variant"] == metrics["method"]]
    prior_min = main.groupby("method")["prior_min"].mean(skipna=False).dropna().to_dict()
    prior_shared_min = (main.groupby("method")["prior_shared_min"].mean(skipna=False).dropna().to_dict()
                        if "prior_shared_min" in main.columns else {})
    paths = {name: out_dir / name for name in REPORTS}
    with atomic_output(paths["table.csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5g")  # 5 significant digits: readable, no false precision
    cost_note = mixed_cost_note(metrics, methods)
    if cost_note:
        print(f"warning: {cost_note}")
    setup1, setup2 = setup_notes(main)
    differ = method_notes(metrics, methods)
    notes1 = [*setup1, *(note for note in (cost_note, imported_note(metrics, methods)) if note), *differ]
    for fmt, suffix in (("markdown", "md"), ("latex", "tex")):
        _write_text(paths[f"table1.{suffix}"], render_table1(table, methods, fmt, notes1))
        _write_text(paths[f"table2.{suffix}"], render_table2(table, methods, fmt, [*setup2, *differ]))
    _write_text(paths["comparison.md"],
                render_comparison(paper_comparison(table, methods, prior_min, prior_shared_min, reference),
                                  _scale_note(metrics), run_classes(table), cost_note,
                                  paired_comparison(metrics, methods, reference),
                                  [*_shared_prior_note(main, methods), *differ], reference))
    return paths


def history_snapshots(history) -> list[Path]:
    """The copies keep_history made in `history`, oldest first: only those (history/ also holds the ablation's and
    the guidance sweep's folders), in time order (a name has whole seconds: copies within one second are told
    apart by their folders' mtimes)."""
    import re

    copies = [p for p in Path(history).glob("*") if p.is_dir() and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", p.name)]
    return sorted(copies, key=lambda p: (p.name[:16], p.stat().st_mtime_ns))


def keep_history(out_dir, names: Sequence[str], folder: str = "history") -> Path | None:
    """A copy of the tables `names` (the first is the one compared) in <out_dir>/<folder>/<UTC time>-<digest of the
    first>/, unless the latest copy has the same first table. Snakemake deletes a job's outputs before redoing it, so
    a rerun after a config change under the same run_name would otherwise leave no trace of the tables it replaced;
    these copies are no job's outputs, so Snakemake never deletes them. Returns the new copy's folder (None if the
    first table is unchanged)."""
    import hashlib
    import shutil
    import time

    out_dir = Path(out_dir)
    key = (out_dir / names[0]).read_bytes()
    history = out_dir / folder
    earlier = history_snapshots(history)
    if earlier and (earlier[-1] / names[0]).is_file() and (earlier[-1] / names[0]).read_bytes() == key:
        return None
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{hashlib.sha256(key).hexdigest()[:8]}"
    tmp = history / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in names:
        shutil.copy(out_dir / file, tmp / file)
    os.replace(tmp, history / name)  # whole, or not at all
    return history / name


def aggregate(config: dict, records: Iterable, out_dir) -> Path | None:
    """The aggregate job: the records, checked to be the config's methods x forget classes x seeds, into
    metrics.csv and the reports made from it; returns the copy kept in history/ (None if metrics.csv is as before)."""
    out_dir = Path(out_dir)
    methods = ["original", *evaluated_methods(config)]
    df = collect_records(records, methods)
    check_coverage(df, methods, config["forget_classes"], config["seeds"])
    write_metrics_csv(df, out_dir / "metrics.csv")
    write_reports(out_dir / "metrics.csv", out_dir, methods, config.get("reference_method"))
    write_digests(out_dir, [name for name in TABLES if name != DIGESTS])
    return keep_history(out_dir, TABLES)


def aggregate_ablation(records: Iterable, out_path) -> Path | None:
    """ablation.csv: the ablation's records and the main run's of its class; returns the copy kept in
    history/ablation/ (None if unchanged)."""
    out_path = Path(out_path)
    write_metrics_csv(collect_records(records), out_path)
    return keep_history(out_path.parent, [out_path.name], folder="history/ablation")


# ---------------------------------------------------------------------------- guidance sweep

# What the sweep shows per guidance weight: FID and KID of the remaining classes, what the forgotten class became.
GUIDANCE_COLUMNS = ["fid", "kid", "H", "UA", "remaining_acc"]
GUIDANCE_LABELS = {"fid": "FID (remaining classes)", "kid": "KID (remaining classes)", "H": "H [nats] (forgotten class)",
                   "UA": "UA [%]", "remaining_acc": "remaining classes recognised [%]"}
GUIDANCE_FORMATS = {"fid": ".2f", "kid": ".4g", "H": ".3f", "UA": ".1f", "remaining_acc": ".1f"}


def guidance_table(paths: Iterable, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int]) -> pd.DataFrame:
    """Seed-averaged metrics per (method, guidance weight, forget class) from records of several weights (their
    provenance says which); every weight must cover exactly the config's methods, classes and seeds, so that each
    point of a curve averages the same cells."""
    df = collect_records(paths, methods)
    unweighted = df[df["guidance_w"].isna()] if "guidance_w" in df else df
    if len(unweighted):
        first = unweighted.iloc[0]
        raise UserError(f"{len(unweighted)} metrics record(s) do not say their guidance weight (provenance.guidance_w), "
                        f"e.g. {first['variant']} class {first['forget_class']} seed {first['seed']}; rerun the jobs "
                        "that wrote them")
    df["guidance_w"] = df["guidance_w"].astype(float)
    for w, group in df.groupby("guidance_w"):
        try:
            check_coverage(group, methods, classes, seeds)
        except UserError as err:
            raise UserError(f"guidance weight {w:g}: {err}") from None
    df = df[df["variant"] == df["method"]]
    keys = ["method", "guidance_w", "forget_class"]
    means = df.groupby(keys, as_index=False)[GUIDANCE_COLUMNS].mean(skipna=False)
    # each row's provenance (config hash, seeds, sampler, sample counts, features, device, versions, model digests):
    # the distinct values of the records it averages, joined by ";"
    provenance = [c for c in df.columns if c not in RECORD_COLUMNS and c not in keys]
    joined = df.groupby(keys)[provenance].agg(lambda v: ";".join(dict.fromkeys(str(x) for x in v.dropna())))
    means = means.merge(joined.reset_index(), on=keys)
    means["rank"] = means["method"].map(lambda m: method_order(methods)(m)[0])
    return means.sort_values(["rank", "method", "guidance_w", "forget_class"]).drop(columns="rank").reset_index(drop=True)


def guidance_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over forgotten classes per (method, guidance weight)."""
    summary = table.groupby(["method", "guidance_w"], sort=False)[GUIDANCE_COLUMNS].agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    return summary.reset_index()


def _mean_std(mean: float, std: float, fmt: str) -> str:
    if _is_missing(mean):
        return "–"
    return f"{mean:{fmt}}" if _is_missing(std) else f"{mean:{fmt}} ± {std:{fmt}}"  # one class: no std


def render_guidance(summary: pd.DataFrame, main_w: float) -> str:
    """One markdown table per metric: methods in rows, guidance weights in columns, mean ± std over classes."""
    weights = sorted(summary["guidance_w"].unique())
    methods = list(dict.fromkeys(summary["method"]))
    header = "| | " + " | ".join(f"w = {w:g}" + (" (main)" if w == main_w else "") for w in weights) + " |"
    lines = ["Every main model sampled again at each guidance weight w (eps = (1 + w) eps_c - w eps_null), with the "
             "main run's seeds and sample counts. Mean ± std over forgotten classes.", ""]
    for column in GUIDANCE_COLUMNS:
        fmt = GUIDANCE_FORMATS[column]
        lines += [f"**{GUIDANCE_LABELS[column]}**", "", header, "|---|" + "---:|" * len(weights)]
        for method in methods:
            rows = summary[summary["method"] == method].set_index("guidance_w")
            cells = [_mean_std(rows.at[w, column + "_mean"], rows.at[w, column + "_std"], fmt)
                     if w in rows.index else "–" for w in weights]
            lines.append(f"| {display_name(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_guidance_tables(paths: Iterable, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int],
                          main_w: float, out_dir) -> dict[str, Path]:
    """guidance.csv (per method, weight and class) and guidance.md (means ± std), written atomically."""
    table = guidance_table(paths, methods, classes, seeds)
    out = {"guidance.csv": Path(out_dir) / "guidance.csv", "guidance.md": Path(out_dir) / "guidance.md"}
    with atomic_output(out["guidance.csv"]) as tmp:
        table.to_csv(tmp, index=False)  # full precision, as metrics.csv: the w = 2 rows equal its numbers
    _write_text(out["guidance.md"], render_guidance(guidance_summary(table), float(main_w)))
    return out


def aggregate_guidance(config: dict, records: Iterable, out_dir) -> Path | None:
    """guidance.csv and .md from the sweep's and the main run's records; returns the copy kept in
    history/guidance/ (None if guidance.csv is as before)."""
    written = write_guidance_tables(records, ["original", *evaluated_methods(config)], config["forget_classes"],
                                    config["seeds"], config["sampler"]["guidance_w"], out_dir)
    return keep_history(out_dir, list(written), folder="history/guidance")


# ---------------------------------------------------------------------------- the finding study

FINDING_COLUMNS = ["fid", "H", "UA", "remaining_acc", "eps_forget", "eps_remaining", "eps_null"]
FINDING_LABELS = {"fid": "FID (remaining)", "H": "H [nats]", "UA": "UA [%]", "remaining_acc": "Remaining recognised [%]",
                  "eps_forget": "mean eps^2, c_f", "eps_remaining": "mean eps^2, own labels",
                  "eps_null": "mean eps^2, null label"}
FINDING_FORMATS = {"fid": ".1f", "H": ".3f", "UA": ".1f", "remaining_acc": ".1f", "eps_forget": ".3f",
                   "eps_remaining": ".3f", "eps_null": ".3f"}


def point_label(variant: str, method: str) -> str:
    """A finding point's name: the original, the method as published, or the one param it changes."""
    from .workflow import parse_variant

    if variant == "original":
        return "Original"
    _, overrides = parse_variant(variant)
    return f"{display_name(method)} (as in the config)" if not overrides else overrides[0].replace("=", " = ")


def finding_table(records: Iterable, norms: Iterable) -> pd.DataFrame:
    """One row per (point, seed): the metrics of the point's model on the study's forgotten class and the sizes of
    its noise predictions (metrics.denoiser), joined on (variant, seed)."""
    from .checkpoints import read_json

    metrics = collect_records(records)
    rows = []
    for path in norms:
        n = read_json(path)
        rows.append({"variant": n["variant"], "seed": int(n["seed"]),
                     **{f"eps_{group}": value for group, value in n["eps_mean_square"].items()}})
    eps = pd.DataFrame(rows)
    table = metrics[["method", "variant", "forget_class", "seed", "fid", "H", "UA", "remaining_acc", "params"]].merge(
        eps, on=["variant", "seed"], how="outer", validate="one_to_one")
    missing = table[table[FINDING_COLUMNS].isna().any(axis=1)]
    if len(missing):
        raise UserError(f"the finding study lacks a record or a denoiser check of {missing['variant'].tolist()}: pass "
                        "both of every point and seed (the workflow's finding_table rule does)")
    table.insert(0, "point", [point_label(v, m) for v, m in zip(table["variant"], table["method"])])
    # the original, the main run, then the points one parameter away from it
    table["_rank"] = [(v != "original") + ("-" in v) for v in table["variant"]]
    return table.sort_values(["_rank", "variant", "seed"]).drop(columns="_rank").reset_index(drop=True)


def render_finding(table: pd.DataFrame) -> str:
    """Markdown: mean ± std over seeds of each point's metrics and noise-prediction sizes."""
    head = ["Point", *(FINDING_LABELS[c] for c in FINDING_COLUMNS)]
    lines = ["# What the method does to the classes it keeps", "",
             f"Forgotten class {int(table['forget_class'].iloc[0])}; mean ± std over seeds ({table['seed'].nunique()}). "
             "Each point changes one parameter of the method's main run. Mean eps^2: the mean square of the model's "
             "noise prediction on noised real images (1 is the size of the true noise), under the forgotten label "
             "(its own images), the remaining images' own labels, and the null label on the same images.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for point, rows in table.groupby("point", sort=False):
        cells = [point] + [_mean_std(rows[c].mean(), rows[c].std(ddof=1), FINDING_FORMATS[c]) for c in FINDING_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate_finding(config: dict, records: Iterable, norms: Iterable, out_dir) -> None:
    table = finding_table(records, norms)
    out_dir = Path(out_dir)
    write_metrics_csv(table, out_dir / "finding.csv")
    _write_text(out_dir / "finding.md", render_finding(table))
