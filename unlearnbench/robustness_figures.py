"""Figures of the robustness report (robustness.csv, rules/robustness.smk): UA under the fine-tuning attacks, under
partial diffusion, and the plain against the noise-aware UA per forgotten class.

Headless (Agg, through figures.py); every figure is a PNG written atomically. Retrain, the reference, is drawn
dashed in black, the original in grey, every method in its file's colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import ORIGINAL_COLOR, _save, method_colors, plt
from .report.robustness import NO_ATTACK, ORIGINAL, RECOVERED_BELOW, RETRAIN, model_label

RETRAIN_COLOR = "black"
ROBUSTNESS_FIGURES = ("robustness_relearning.png", "robustness_partial_diffusion.png", "robustness_noise_aware.png")


def _models(table: pd.DataFrame, methods: Sequence[str], with_original: bool = False) -> list[str]:
    """The rows drawn, in the report's order: (the original,) the methods, then Retrain; those the table holds."""
    present = set(table["method"])
    order = [*([ORIGINAL] if with_original else []), *methods, RETRAIN]
    return [m for m in dict.fromkeys(order) if m in present]


def _style(model: str, colors: Mapping[str, str]) -> dict:
    if model == RETRAIN:
        return {"color": RETRAIN_COLOR, "linestyle": "--", "marker": "s"}
    return {"color": colors.get(model, ORIGINAL_COLOR), "linestyle": "-", "marker": "o"}


def _class_mean_curve(rows: pd.DataFrame, x: str, y: str = "ua") -> pd.Series:
    """Mean over forgotten classes of the seed-averaged `y` at each `x`."""
    per_class = rows.groupby([x, "forget_class"])[y].mean()
    return per_class.groupby(level=0).mean().sort_index()


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _recovery_line(ax, line: float) -> None:
    ax.axhline(line, color="0.55", linestyle=":", linewidth=1)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)


def _recovered_below(table: pd.DataFrame) -> float:
    values = table["recovered_below_ua"].dropna() if "recovered_below_ua" in table.columns else pd.Series()
    return float(values.iloc[0]) if len(values) else RECOVERED_BELOW


def _classes_note(rows: pd.DataFrame) -> str:
    seeds = ", ".join(str(int(s)) for s in sorted(rows["seed"].unique())) if len(rows) else "–"
    return f"mean over {rows['forget_class'].nunique()} forgotten classes (attacked seed(s) {seeds})"


def relearning_curves(table: pd.DataFrame, methods: Sequence[str], out_path, colors: Mapping[str, str]) -> None:
    """Mean UA against the fine-tuning step: one panel per relearning k, one for resurgence; a line per model."""
    attacks = table[table["attack"].isin(["relearning", "resurgence"])]
    ks = sorted(attacks.loc[attacks["attack"] == "relearning", "attack_value"].dropna().unique())
    panels = [("relearning", k) for k in ks] + [("resurgence", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    line = _recovered_below(table)
    for ax, (attack, k) in zip(axes[0], panels):
        rows = attacks[attacks["attack"] == attack]
        if k is not None:
            rows = rows[rows["attack_value"] == k]
        ax.set_title(
            f"Relearning on k = {k:g} images of the class"
            if k is not None
            else "Resurgence: fine-tuning on the other classes"
        )
        if rows.empty:
            _no_data(ax, "no attack measured")
            continue
        for model in _models(rows, methods):
            curve = _class_mean_curve(rows[rows["method"] == model], "step")
            ax.plot(curve.index, curve.values, label=model_label(model), **_style(model, colors))
        _recovery_line(ax, line)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("UA [%] (forgotten class)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"UA of the forgotten class under fine-tuning attacks, {_classes_note(attacks)}; dotted: "
        f"{line:g}%, below it the class counts as recognised again",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, out_path)


def partial_diffusion_curves(table: pd.DataFrame, methods: Sequence[str], out_path, colors: Mapping[str, str]) -> None:
    """Mean UA (and noise-aware UA, when measured) against the partial-diffusion strength s, a line per model."""
    rows = table[table["attack"] == "partial_diffusion"]
    aware = rows["ua_noise_aware"].notna().any()
    panels = [("ua", "UA [%]")] + ([("ua_noise_aware", "noise-aware UA [%]")] if aware else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.9), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        ax.set_title(f"{label.split(' [')[0]} after partial diffusion")
        if rows.empty:
            _no_data(ax, "no attack measured")
            continue
        for model in _models(rows, methods):
            curve = _class_mean_curve(rows[rows["method"] == model], "attack_value", column)
            ax.plot(curve.index, curve.values, label=model_label(model), **_style(model, colors))
        _recovery_line(ax, _recovered_below(table))
        ax.set_xlabel("strength s (noised to t = s T)")
        ax.set_ylabel(f"{label} (forgotten class)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"Real images of the forgotten class noised to s T and denoised under its label, {_classes_note(rows)}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, out_path)


def noise_aware_pairs(table: pd.DataFrame, methods: Sequence[str], out_path, colors: Mapping[str, str]) -> None:
    """Per forgotten class and model, the plain UA (filled) and the noise-aware UA (open) of its own generations,
    joined by a line: a long line is a verdict that hangs on the evaluator."""
    units = table[table["attack"] == NO_ATTACK]
    models = _models(units, methods, with_original=True)
    classes = sorted(int(c) for c in units["forget_class"].unique())
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.5, 0.35 * len(classes) * len(models) + 2.0)), 4.4))
    ax.set_title("UA vs noise-aware UA of each model's own generations, per forgotten class (mean over seeds)")
    if units["ua_noise_aware"].isna().all():
        _no_data(ax, "no noise-aware evaluator (robustness.evaluators)")
        _save(fig, out_path)
        return
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        rows = units[units["method"] == model].groupby("forget_class")[["ua", "ua_noise_aware"]].mean().reindex(classes)
        x = np.arange(len(classes)) - 0.4 + width * (i + 0.5)
        color = RETRAIN_COLOR if model == RETRAIN else colors.get(model, ORIGINAL_COLOR)
        ax.vlines(x, rows["ua"], rows["ua_noise_aware"], color=color, linewidth=1.2)
        ax.scatter(x, rows["ua"], color=color, marker="o", s=30, label=model_label(model))
        ax.scatter(x, rows["ua_noise_aware"], facecolors="white", edgecolors=color, marker="D", s=30, zorder=3)
    _recovery_line(ax, _recovered_below(table))
    ax.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("forgotten class")
    ax.set_ylabel("UA [%] (forgotten class)")
    handles, labels = ax.get_legend_handles_labels()
    kinds = [
        plt.Line2D([], [], color="0.3", marker="o", linestyle="", label="filled: UA"),
        plt.Line2D(
            [], [], color="0.3", marker="D", markerfacecolor="white", linestyle="", label="open: noise-aware UA"
        ),
    ]
    ax.legend(
        [*handles, *kinds],
        [*labels, *(k.get_label() for k in kinds)],
        fontsize=8,
        ncols=len(handles) + 2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        frameon=False,
    )
    fig.tight_layout()
    _save(fig, out_path)


def robustness_figures(
    table: pd.DataFrame, methods: Sequence[str], out_dir, colors: Mapping[str, str] | None = None
) -> list[Path]:
    """The three figures of robustness.csv in `out_dir`; `methods` in the config's order."""
    colors = colors or method_colors([ORIGINAL, *methods])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ROBUSTNESS_FIGURES]
    relearning_curves(table, methods, paths[0], colors)
    partial_diffusion_curves(table, methods, paths[1], colors)
    noise_aware_pairs(table, methods, paths[2], colors)
    return paths
