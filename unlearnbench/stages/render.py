"""The figures job: figures from aggregated tables and saved samples only (no model is loaded or run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import evaluated_methods
from ..errors import UserError
from ..files import check_unedited
from ..report import display_name
from ..workflow import main_param_value


def render_figures(config: dict, kind: str, *, metrics=None, samples=None, forget_class=None, out_dir=None, out=None):
    """Figures from aggregated CSVs and saved samples only: no model is loaded or run."""
    from .. import figures  # here: matplotlib is for the figure jobs only

    methods = evaluated_methods(config)
    colors = figures.method_colors(["original", *methods])  # alike in every figure of the run
    if metrics:
        check_unedited(metrics)  # a figure shows the records, not a hand edit of their table
    if kind == "summary":
        df = pd.read_csv(metrics)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        figures.cost_bars(df, config["methods"], Path(out_dir) / "cost.png", colors)  # imported models have no cost
        figures.per_class_metrics(df, ["original", *methods], Path(out_dir) / "per_class.png", colors)
    elif kind == "samples":
        labels = [display_name(m) for m in ("original", *methods)]
        figures.sample_grid(
            dict(zip(labels, samples)), forget_class, out, n=config["evaluation"].get("grid_images", 16)
        )
    elif kind == "ablation":
        abl = config["ablation"]
        main_value = main_param_value(config, abl["method"], abl["param"])
        figures.psi_ablation(
            pd.read_csv(metrics),
            out,
            method=abl["method"],
            param=abl["param"],
            main_value=main_value,
            color=colors.get(abl["method"]),
            forget_class=abl["forget_class"],
        )
    elif kind == "guidance":
        figures.guidance_curves(pd.read_csv(metrics), out, config["sampler"]["guidance_w"], colors)
    elif kind == "finding":
        figures.finding_bars(pd.read_csv(metrics), out, colors.get(config["finding"]["method"], figures.ORIGINAL_COLOR))
    elif kind == "robustness":
        from .. import robustness_figures  # matplotlib too

        robustness_figures.robustness_figures(pd.read_csv(metrics), methods, out_dir, colors)
    else:
        raise UserError(f"unknown figure kind {kind!r}")
