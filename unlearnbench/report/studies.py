"""The studies beside the main tables: the guidance sweep (guidance.csv|md) and the finding study (finding.csv|md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..checkpoints import read_json
from ..config import evaluated_methods
from ..errors import UserError
from ..files import atomic_output
from ..workflow import parse_variant
from .records import (
    RECORD_COLUMNS,
    _is_missing,
    _write_text,
    check_coverage,
    collect_records,
    display_name,
    keep_history,
    method_order,
    write_metrics_csv,
)

# ---------------------------------------------------------------------------- guidance sweep

# What the sweep shows per guidance weight: FID and KID of the remaining classes, what the forgotten class became.
GUIDANCE_COLUMNS = ["fid", "kid", "H", "UA", "remaining_acc"]
GUIDANCE_LABELS = {
    "fid": "FID (remaining classes)",
    "kid": "KID (remaining classes)",
    "H": "H [nats] (forgotten class)",
    "UA": "UA [%]",
    "remaining_acc": "remaining classes recognised [%]",
}
GUIDANCE_FORMATS = {"fid": ".2f", "kid": ".4g", "H": ".3f", "UA": ".1f", "remaining_acc": ".1f"}


def guidance_table(
    paths: Iterable, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int]
) -> pd.DataFrame:
    """Seed-averaged metrics per (method, guidance weight, forget class) from records of several weights (their
    provenance says which); every weight must cover exactly the config's methods, classes and seeds, so that each
    point of a curve averages the same cells."""
    df = collect_records(paths, methods)
    unweighted = df[df["guidance_w"].isna()] if "guidance_w" in df else df
    if len(unweighted):
        first = unweighted.iloc[0]
        raise UserError(
            f"{len(unweighted)} metrics record(s) do not say their guidance weight (provenance.guidance_w), "
            f"e.g. {first['variant']} class {first['forget_class']} seed {first['seed']}; rerun the jobs "
            "that wrote them"
        )
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
    key = method_order(methods)
    means["rank"] = means["method"].map(lambda m: key(m)[0])
    return (
        means.sort_values(["rank", "method", "guidance_w", "forget_class"]).drop(columns="rank").reset_index(drop=True)
    )


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
    lines = [
        "Every main model sampled again at each guidance weight w (eps = (1 + w) eps_c - w eps_null), with the "
        "main run's seeds and sample counts. Mean ± std over forgotten classes.",
        "",
    ]
    for column in GUIDANCE_COLUMNS:
        fmt = GUIDANCE_FORMATS[column]
        lines += [f"**{GUIDANCE_LABELS[column]}**", "", header, "|---|" + "---:|" * len(weights)]
        for method in methods:
            rows = summary[summary["method"] == method].set_index("guidance_w")
            cells = [
                _mean_std(rows.at[w, column + "_mean"], rows.at[w, column + "_std"], fmt) if w in rows.index else "–"
                for w in weights
            ]
            lines.append(f"| {display_name(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_guidance_tables(
    paths: Iterable, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int], main_w: float, out_dir
) -> dict[str, Path]:
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
    written = write_guidance_tables(
        records,
        ["original", *evaluated_methods(config)],
        config["forget_classes"],
        config["seeds"],
        config["sampler"]["guidance_w"],
        out_dir,
    )
    return keep_history(out_dir, list(written), folder="history/guidance")


# ---------------------------------------------------------------------------- the finding study

FINDING_COLUMNS = ["fid", "H", "UA", "remaining_acc", "eps_forget", "eps_remaining", "eps_null"]
FINDING_LABELS = {
    "fid": "FID (remaining)",
    "H": "H [nats]",
    "UA": "UA [%]",
    "remaining_acc": "Remaining recognised [%]",
    "eps_forget": "mean eps^2, c_f",
    "eps_remaining": "mean eps^2, own labels",
    "eps_null": "mean eps^2, null label",
}
FINDING_FORMATS = {
    "fid": ".1f",
    "H": ".3f",
    "UA": ".1f",
    "remaining_acc": ".1f",
    "eps_forget": ".3f",
    "eps_remaining": ".3f",
    "eps_null": ".3f",
}


def point_label(variant: str, method: str) -> str:
    """A finding point's name: the original, the method as published, or the one param it changes."""

    if variant == "original":
        return "Original"
    _, overrides = parse_variant(variant)
    return f"{display_name(method)} (as in the config)" if not overrides else overrides[0].replace("=", " = ")


def finding_table(records: Iterable, norms: Iterable) -> pd.DataFrame:
    """One row per (point, seed): the metrics of the point's model on the study's forgotten class and the sizes of
    its noise predictions (metrics.denoiser), joined on (variant, seed)."""

    metrics = collect_records(records)
    rows = []
    for path in norms:
        n = read_json(path)
        rows.append(
            {
                "variant": n["variant"],
                "seed": int(n["seed"]),
                **{f"eps_{group}": value for group, value in n["eps_mean_square"].items()},
            }
        )
    eps = pd.DataFrame(rows)
    table = metrics[["method", "variant", "forget_class", "seed", "fid", "H", "UA", "remaining_acc", "params"]].merge(
        eps, on=["variant", "seed"], how="outer", validate="one_to_one"
    )
    missing = table[table[FINDING_COLUMNS].isna().any(axis=1)]
    if len(missing):
        raise UserError(
            f"the finding study lacks a record or a denoiser check of {missing['variant'].tolist()}: pass "
            "both of every point and seed (the workflow's finding_table rule does)"
        )
    table.insert(0, "point", [point_label(v, m) for v, m in zip(table["variant"], table["method"])])
    # the original, the main run, then the points one parameter away from it
    table["_rank"] = [(v != "original") + ("-" in v) for v in table["variant"]]
    return table.sort_values(["_rank", "variant", "seed"]).drop(columns="_rank").reset_index(drop=True)


def render_finding(table: pd.DataFrame) -> str:
    """Markdown: mean ± std over seeds of each point's metrics and noise-prediction sizes."""
    head = ["Point", *(FINDING_LABELS[c] for c in FINDING_COLUMNS)]
    lines = [
        "# What the method does to the classes it keeps",
        "",
        f"Forgotten class {int(table['forget_class'].iloc[0])}; mean ± std over seeds ({table['seed'].nunique()}). "
        "Each point changes one parameter of the method's main run. Mean eps^2: the mean square of the model's "
        "noise prediction on noised real images (1 is the size of the true noise), under the forgotten label "
        "(its own images), the remaining images' own labels, and the null label on the same images.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for point, rows in table.groupby("point", sort=False):
        cells = [point] + [_mean_std(rows[c].mean(), rows[c].std(ddof=1), FINDING_FORMATS[c]) for c in FINDING_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate_finding(config: dict, records: Iterable, norms: Iterable, out_dir) -> None:
    table = finding_table(records, norms)
    out_dir = Path(out_dir)
    write_metrics_csv(table, out_dir / "finding.csv")
    _write_text(out_dir / "finding.md", render_finding(table))
