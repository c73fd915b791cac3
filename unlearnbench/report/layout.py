"""The paper's layout (table.csv) and its Tables 1 and 2 in Markdown and LaTeX, with the notes under them."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..method_api import check_labels, is_control, method_note
from .records import GPU, METRICS, RTE, TABLE1_METRICS, TABLE2_METRICS, Metric, _is_missing, display_name

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
            raise UserError(
                f"no metrics record of method {method!r} for forgotten class(es) "
                f"{sorted(set(classes) - have)}: its mean would cover other classes than the rest; "
                "pass every record (the workflow's aggregate rule does)"
            )
    main = df[df["method"].isin(methods) & (df["variant"] == df["method"])]
    for method, rows in main.groupby("method"):
        seeds = rows.groupby("forget_class")["seed"].apply(frozenset)
        if seeds.nunique() > 1:  # a class averaged over fewer seeds would read like the others
            every = frozenset().union(*seeds)
            short = {int(c): sorted(every - s) for c, s in seeds.items() if s != every}
            raise UserError(
                f"method {method!r} lacks the records of seed(s) {short} (forgotten class: missing "
                "seeds); pass every record (the workflow's aggregate rule does)"
            )
    columns = {"forget_class": [str(c) for c in classes] + ["mean", "std"]}
    for method in methods:
        per_class = means[means["method"] == method].set_index("forget_class").reindex(classes)
        for metric in METRICS:
            values = per_class[metric.column].astype(float)
            columns[column_name(method, metric)] = [
                *values,
                values.mean(skipna=False),
                values.std(ddof=1, skipna=False),
            ]
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------- rendering


def _best_methods(row: pd.Series, methods: Sequence[str], metric: Metric) -> set[str]:
    """Unlearning methods holding the row's best value at display precision (the original and controls do not
    compete); none when fewer than two compete."""
    values = {
        m: round(float(row[column_name(m, metric)]), metric.decimals)
        for m in methods
        if m != "original" and not is_control(m) and not _is_missing(float(row[column_name(m, metric)]))
    }
    if len(values) < 2:
        return set()
    best = min(values.values()) if metric.lower_is_better else max(values.values())
    return {m for m, value in values.items() if value == best}


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


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
    lines = [
        f"Best unlearning method per row in bold ({directions} is better{not_bold}). mean and std (sample, "
        "ddof=1) over forgotten classes of seed-averaged values."
    ]
    if any(not cell for cells in body for cell in cells[1:]):
        lines.append(
            f"{dash} = no value: the original model has no unlearning cost (it was trained, not unlearned), "
            "GPU memory is measured on a GPU only, and an imported model's cost is not known."
        )
    return lines


def _render(
    table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[Metric], fmt: str, notes: Sequence[str] = ()
) -> str:
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
        lines = [
            rf"\begin{{tabular}}{{l{'r' * width * len(methods)}}}",
            r"\toprule",
            rf" & {groups} \\",
            rules,
            rf"Class & {labels} \\",
            r"\midrule",
        ]
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
    backend, generated, real, forget = (
        _distinct(metrics, key) for key in ("fid_backend", "n_fid_gen_per_class", "n_fid_real", "n_forget_samples")
    )
    table1 = (
        [
            f"FID: {backend} features of {generated} generated images per remaining class against {real} real "
            "images of the remaining classes. RTE: the timed unlearning loop, without the method's priors "
            "(comparison.md counts them)."
        ]
        if None not in (backend, generated, real)
        else []
    )
    table2 = (
        [
            f"H and UA on {forget} generated images of the forgotten class, labelled by the evaluation classifier "
            "(UA: the share it does not call the forgotten class)."
        ]
        if forget is not None
        else []
    )
    return table1, table2


# ---------------------------------------------------------------------------- all reports


def _scale_note(metrics: pd.DataFrame) -> str:
    keys = [
        "dataset",
        "sampler",
        "sampler_steps",
        "guidance_w",
        "fid_backend",
        "n_fid_gen_per_class",
        "n_fid_real",
        "n_forget_samples",
        "device_name",
        "speed_switches",
    ]  # the paper: 500 forget-class images (H, UA)
    return "; ".join(f"{key} = {values}" for key in keys if (values := _distinct(metrics, key)) is not None)


def _shared_prior_note(main: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """The shared priors' cost, once per method (every record of the method carries the same figure)."""
    if "prior_shared_min" not in main.columns:
        return []
    shared = main[main["method"].isin(methods)].groupby("method")["prior_shared_min"].first().dropna()
    return [
        f"{display_name(m)}'s shared priors (made once for all forgotten classes): {minutes:.3f} min."
        for m, minutes in shared.items()
        if minutes > 0
    ]


def mixed_cost_note(metrics: pd.DataFrame, methods: Sequence[str]) -> str | None:
    """A warning when the unlearning costs averaged in the tables were measured on different hardware or with
    different speed switches (device and `performance` do not rerun finished jobs: results agree up to rounding,
    their RTE and memory do not)."""
    unlearned = metrics[
        metrics["method"].isin(methods) & (metrics["method"] != "original") & (metrics["variant"] == metrics["method"])
    ]  # what the tables average
    if "imported_from" in unlearned.columns:  # imported models' costs were not measured: no setup of theirs
        unlearned = unlearned[unlearned["imported_from"].isna()]
    keys = [key for key in ("device_name", "speed_switches") if key in unlearned.columns]
    # A missing value (a record from before speed_switches were recorded) is no evidence of another setup.
    if unlearned.empty or not any(unlearned[key].dropna().astype(str).nunique() > 1 for key in keys):
        return None
    setups = unlearned[keys].map(lambda v: "unknown" if _is_missing(v) else str(v)).value_counts()
    parts = "; ".join(f"{' / '.join(setup)} ({count} jobs)" for setup, count in setups.items())
    return (
        f"The unlearning costs (RTE, GPU) mix {len(setups)} setups ({' / '.join(keys)}): {parts}. Their means "
        "are not one machine's cost: rerun the jobs of the others (`snakemake --forcerun unlearn ...`) to compare "
        "on one setup."
    )


def imported_note(metrics: pd.DataFrame, methods: Sequence[str]) -> str | None:
    """Which columns are models imported from elsewhere (config `imported`), whose RTE and GPU are empty."""
    if "imported_from" not in metrics.columns:  # a metrics.csv written before models could be imported
        return None
    imported = [m for m in methods if metrics.loc[metrics["method"] == m, "imported_from"].notna().any()]
    if not imported:
        return None
    return (
        f"{', '.join(display_name(m) for m in imported)}: imported, unlearned outside the suite (config "
        "'imported'); evaluated as the others, cost not measured."
    )


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
            values = "; ".join(
                f"{name} = {params[0].get(name)!r} ({origins[0][name]})" for name in hand if name in origins[0]
            )
            by_hand.append(f"{display_name(method)}: {values}")
    if by_hand:
        notes.append(
            "Set by hand, not by the scale rules (unlearnbench/scaling.py; metrics.csv `params` holds every "
            "row's values): " + ". ".join(by_hand) + "."
        )
    elif "params" in main.columns and main["params"].notna().any():
        notes.append(
            "Every method's params are its paper values scaled by the rules of unlearnbench/scaling.py "
            "(metrics.csv `params` holds every row's values)."
        )
    return notes
