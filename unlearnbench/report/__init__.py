"""Aggregates of the per-job metrics records: `metrics.csv`, the paper's tables, the paper comparison, the studies.

Everything here is a pure function of records or data frames (plus atomic file writes), so the tests call it
without models or devices. The modules, in the order the aggregate job uses them: records (metrics.csv and the
paper's data), layout (table.csv, Tables 1 and 2, their notes), comparison (comparison.md), studies (the guidance
sweep and the finding study), robustness and robustness_md (robustness.csv and .md); this file writes them together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..config import evaluated_methods
from ..files import DIGESTS, atomic_output, write_digests
from ..workflow import REPORTS, TABLES
from .comparison import (
    PAIRED_CONFIDENCE,
    PAIRED_METRICS,
    PairedDifference,
    _ratio_rows,
    paired_comparison,
    paired_difference,
    paper_comparison,
    render_comparison,
    render_paired,
    run_classes,
)
from .layout import (
    _scale_note,
    _shared_prior_note,
    column_name,
    imported_note,
    method_notes,
    mixed_cost_note,
    paper_layout_table,
    per_class_means,
    render_table1,
    render_table2,
    setup_notes,
)
from .records import (
    CLAIMED_QUANTITIES,
    ENTROPY,
    FID,
    GPU,
    GPU_RATIO,
    GPU_SAVING,
    METRICS,
    RECORD_COLUMNS,
    REMAINING,
    RTE,
    RTE_RATIO,
    RTE_WITH_AMORTISED_PRIORS_RATIO,
    RTE_WITH_PRIORS_RATIO,
    TABLE1_METRICS,
    TABLE2_METRICS,
    UA,
    Metric,
    _write_text,
    check_coverage,
    collect_records,
    display_name,
    history_snapshots,
    keep_history,
    load_paper_ablation,
    load_paper_numbers,
    method_order,
    paper_claims,
    paper_errata,
    write_metrics_csv,
)
from .robustness import ROBUSTNESS_TABLES, checked_records, robustness_table
from .robustness_md import render_robustness
from .studies import (
    FINDING_COLUMNS,
    GUIDANCE_COLUMNS,
    aggregate_finding,
    aggregate_guidance,
    finding_table,
    guidance_summary,
    guidance_table,
    render_finding,
    render_guidance,
    write_guidance_tables,
)

__all__ = [
    "CLAIMED_QUANTITIES",
    "ENTROPY",
    "FID",
    "FINDING_COLUMNS",
    "GPU",
    "GPU_RATIO",
    "GPU_SAVING",
    "GUIDANCE_COLUMNS",
    "METRICS",
    "Metric",
    "PAIRED_CONFIDENCE",
    "PAIRED_METRICS",
    "PairedDifference",
    "RECORD_COLUMNS",
    "REMAINING",
    "RTE",
    "RTE_RATIO",
    "RTE_WITH_AMORTISED_PRIORS_RATIO",
    "RTE_WITH_PRIORS_RATIO",
    "TABLE1_METRICS",
    "TABLE2_METRICS",
    "UA",
    "aggregate",
    "aggregate_ablation",
    "aggregate_finding",
    "aggregate_guidance",
    "check_coverage",
    "collect_records",
    "column_name",
    "display_name",
    "finding_table",
    "guidance_summary",
    "guidance_table",
    "history_snapshots",
    "imported_note",
    "keep_history",
    "load_paper_ablation",
    "load_paper_numbers",
    "method_notes",
    "method_order",
    "mixed_cost_note",
    "paired_comparison",
    "paired_difference",
    "paper_claims",
    "paper_comparison",
    "paper_errata",
    "paper_layout_table",
    "per_class_means",
    "render_comparison",
    "render_finding",
    "render_guidance",
    "render_paired",
    "render_table1",
    "render_table2",
    "run_classes",
    "setup_notes",
    "write_guidance_tables",
    "write_metrics_csv",
    "write_reports",
    "_ratio_rows",
    "ROBUSTNESS_TABLES",
    "aggregate_robustness",
    "render_robustness",
    "robustness_table",
]


def write_reports(
    metrics_csv, out_dir, methods: Sequence[str] | None = None, reference: str | None = None
) -> dict[str, Path]:
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
    prior_shared_min = (
        main.groupby("method")["prior_shared_min"].mean(skipna=False).dropna().to_dict()
        if "prior_shared_min" in main.columns
        else {}
    )
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
    _write_text(
        paths["comparison.md"],
        render_comparison(
            paper_comparison(table, methods, prior_min, prior_shared_min, reference),
            _scale_note(metrics),
            run_classes(table),
            cost_note,
            paired_comparison(metrics, methods, reference),
            [*_shared_prior_note(main, methods), *differ],
            reference,
        ),
    )
    return paths


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


def aggregate_robustness(
    config: dict, score_paths: Iterable, attack_paths: Iterable, record_paths: Iterable, out_dir
) -> dict[str, Path]:
    """The robustness_table job: the records, checked to be the config's models x forget classes x seeds (the
    attacks: x robustness.attacks.seeds) and each kind from one configuration, into robustness.csv and .md and
    their digests (tables.sha256)."""
    scores, attacks, mains = checked_records(config, score_paths, attack_paths, record_paths)
    df = robustness_table(config, scores, attacks, mains)
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in ROBUSTNESS_TABLES}
    with atomic_output(paths["robustness.csv"]) as tmp:
        df.to_csv(tmp, index=False)
    _write_text(paths["robustness.md"], render_robustness(config, df))
    paths["tables.sha256"] = write_digests(out_dir, list(ROBUSTNESS_TABLES))
    return paths
