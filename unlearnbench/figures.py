"""Figures of a run: sample grids, cost bars, per-class metrics, the psi (lambda) ablation.

Headless (Agg backend); every figure is a PNG written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .files import atomic_output  # noqa: E402
from .method_api import (
    load_method,
    method_color,  # noqa: E402
)
from .report import FID, GPU, RTE, UA, display_name, guidance_summary, load_paper_ablation, per_class_means  # noqa: E402

DPI = 150
ORIGINAL_COLOR = "tab:gray"  # the base model, in every figure; a method's comes from its file (COLOR)
RETRAIN_COLOR = "black"  # Retrain, the gold-standard reference of the robustness figures
REFERENCE_COLORS = {"original": ORIGINAL_COLOR, "retrain": RETRAIN_COLOR}

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10})


SPARE_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A colour per method: its file's COLOR, else (a method without one, imported models) a spare colour no
    declared one uses, in the given order. Given the run's whole list, every figure colours a method alike,
    whichever subset or order it draws."""
    methods = list(dict.fromkeys(methods))
    declared = {m: REFERENCE_COLORS[m] if m in REFERENCE_COLORS else method_color(m) for m in methods}
    declared = {m: color for m, color in declared.items() if color}
    spare = [c for c in SPARE_COLORS if c not in declared.values()] or list(SPARE_COLORS)
    others = [m for m in methods if m not in declared]
    return {**declared, **{m: spare[i % len(spare)] for i, m in enumerate(others)}}


def _save(fig, out_path) -> None:
    with atomic_output(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into one (H', W'[, C]) picture with white 1-pixel gaps."""
    n, channels, height, width = images.shape
    rows = max(1, math.ceil(n / columns))
    canvas = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (height + 1) : (r + 1) * (height + 1), 1 + c * (width + 1) : (c + 1) * (width + 1)] = (
            image.transpose(1, 2, 0)
        )
    return canvas[..., 0] if channels == 1 else canvas


def sample_grid(sample_files: Mapping[str, object], forget_class: int, out_path, n: int = 16) -> None:
    """One panel per model (keys are the panel titles): its first n images conditioned on the forgotten class."""
    fig, axes = plt.subplots(1, len(sample_files), figsize=(2.6 * len(sample_files), 3.0), squeeze=False)
    columns = math.ceil(math.sqrt(n))
    for ax, (label, path) in zip(axes[0], sample_files.items()):
        with np.load(path) as samples:
            images, labels = samples["images"], samples["labels"]
        if images.ndim == 3:
            images = images[:, None]
        chosen = images[labels == forget_class][:n].astype(np.uint8)
        if len(chosen):
            grey = chosen.shape[1] == 1
            ax.imshow(
                _mosaic(chosen, columns), cmap="gray" if grey else None, vmin=0, vmax=255, interpolation="nearest"
            )
        else:
            ax.text(0.5, 0.5, f"no samples of\nclass {forget_class}", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Forgotten class {forget_class}")
    _save(fig, out_path)


def _class_summary(df: pd.DataFrame, methods: Sequence[str], column: str) -> pd.DataFrame:
    """Mean and std over classes (of seed-averaged values) of one metric, per method, in `methods` order.
    skipna=False, as in the tables: a class without a value makes the bar n/a, not a mean of the others."""
    grouped = per_class_means(df, methods).groupby("method")[column]
    return pd.DataFrame({"mean": grouped.mean(skipna=False), "std": grouped.std(ddof=1, skipna=False)}).reindex(methods)


def cost_bars(df: pd.DataFrame, methods: Sequence[str], out_path, colors: Mapping[str, str] | None = None) -> None:
    """RTE and GPU peak per unlearning method, mean ± std over classes (the original model is no unlearning run)."""
    colors = colors or method_colors(methods)
    methods = [m for m in methods if m != "original"]
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.6))
    positions = np.arange(len(methods))
    for ax, metric, title in ((axes[0], RTE, "Run time of the unlearning"), (axes[1], GPU, "Peak GPU memory")):
        summary = _class_summary(df, methods, metric.column)
        ax.set_title(title)
        if summary["mean"].isna().all():
            measured = per_class_means(df, methods)[metric.column].notna().any()
            message = (
                "not measured for every class: see the table"
                if measured
                else "no GPU measurement (CPU run)"
                if metric is GPU
                else "no measurement"
            )
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.bar(
            positions,
            summary["mean"].fillna(0.0),
            yerr=summary["std"].fillna(0.0),
            capsize=4,
            color=[colors[m] for m in methods],
        )
        for x, value in zip(positions, summary["mean"]):
            if np.isnan(value):
                ax.text(x, 0, "n/a", ha="center", va="bottom")
        ax.set_xticks(positions, [display_name(m) for m in methods])
        ax.set_ylabel(metric.label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Mean ± std (error bars) over forgotten classes; RTE: the timed unlearning loop, without the method's priors",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out_path)


def per_class_metrics(
    df: pd.DataFrame, methods: Sequence[str], out_path, colors: Mapping[str, str] | None = None
) -> None:
    """FID (remaining classes) and UA (forgotten class) per forgotten class, grouped bars per method."""
    colors = colors or method_colors(methods)
    means = per_class_means(df, methods)
    classes = sorted(int(c) for c in means["forget_class"].unique())
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.8 * len(classes) + 2), 6.0), sharex=True)
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        rows = means[means["method"] == method].set_index("forget_class").reindex(classes)
        offsets = np.arange(len(classes)) - 0.4 + width * (i + 0.5)
        for ax, metric in zip(axes, (FID, UA)):
            ax.bar(offsets, rows[metric.column], width, label=display_name(method), color=colors[method])
    axes[0].set_ylabel(f"{FID.label} (remaining classes)")
    axes[1].set_ylabel(f"{UA.label} (forgotten class)")
    axes[1].set_xlabel("forgotten class")
    axes[1].set_xticks(np.arange(len(classes)), [str(c) for c in classes])
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncols=len(methods), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle("Per forgotten class (mean over seeds)", fontsize=10)
    fig.tight_layout()
    _save(fig, out_path)


def _ablation_rows(
    df: pd.DataFrame, method: str, param: str, main_value: float, forget_class: int | None
) -> pd.DataFrame:
    """Rows of `<method>-<param>=<v>` variants (value v) plus the main variant at `main_value`, same classes."""
    prefix = f"{method}-{param}="
    ablation = df[df["variant"].astype(str).str.startswith(prefix)].copy()
    ablation["value"] = ablation["variant"].str[len(prefix) :].astype(float)
    main = df[(df["variant"] == method) & (df["method"] == method)].copy()
    main["value"] = float(main_value)
    if forget_class is not None:
        classes = {forget_class}
    elif len(ablation):
        classes = set(ablation["forget_class"])  # the ablation usually runs on few classes: compare like with like
    else:
        classes = set(main["forget_class"])
    rows = pd.concat([ablation, main], ignore_index=True)
    return rows[rows["forget_class"].isin(classes)]


def psi_ablation(
    df: pd.DataFrame,
    out_path,
    method: str,
    param: str,
    main_value: float = 1.0,
    forget_class: int | None = None,
    color: str | None = None,
) -> None:
    """UA and FID against the ablated parameter, with the paper's CIFAR-10 points overlaid where it ablated the
    same param on the same one class (paper_ablation.csv: SAFEMax's lambda, the psi scheduler, on class 0). The
    x axis is labelled by the param's PARAM_SCHEMA title in its method file, else its name."""
    rows = _ablation_rows(df, method, param, main_value, forget_class)
    summary = rows.groupby("value")[[UA.column, FID.column]].agg(["mean", "std"])
    classes = sorted(int(c) for c in rows["forget_class"].unique())
    paper = load_paper_ablation()
    paper = paper[(paper["method"] == method) & (paper["param"] == param)]
    with_paper = len(paper) > 0 and classes == sorted(set(paper["forget_class"]))  # the paper's class(es) only
    paper = (paper if with_paper else paper.iloc[:0]).set_index("value")[[UA.column, FID.column]]
    values = sorted(set(summary.index) | set(paper.index))
    summary = summary.reindex(values)  # NaN where this run has no value: the line breaks there, not across it
    position = {v: i for i, v in enumerate(values)}
    x = [position[v] for v in values]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    handles = {}
    for ax, metric, where in zip(axes, (UA, FID), ("forgotten class", "remaining classes")):
        if summary[(metric.column, "mean")].notna().any():
            spread = summary[(metric.column, "std")].fillna(0.0)
            handles["this run"] = ax.errorbar(
                x,
                summary[(metric.column, "mean")],
                yerr=spread,
                fmt="o-",
                color=color or method_colors([method])[method],
                capsize=4,
            )
        else:
            ax.text(0.5, 0.5, "no ablation runs", ha="center", va="center", transform=ax.transAxes)
        # The paper's FID lives on another scale (Inception features, CIFAR-10): give it its own axis.
        if with_paper:
            paper_ax = ax.twinx() if metric is FID else ax
            known = paper[metric.column].dropna()
            handles["paper (CIFAR-10)"] = paper_ax.scatter(
                [position[v] for v in known.index],
                known,
                marker="s",
                s=50,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.5,
                zorder=3,
            )
            if metric is FID:
                paper_ax.set_ylabel("paper FID (CIFAR-10)", color="tab:red")
                paper_ax.tick_params(axis="y", colors="tab:red")
                # both FID axes from 0: equal heights are equal ratios, so neither set of points is stretched
                # over the other's range
                for scaled in (ax, paper_ax):
                    scaled.set_ylim(0, scaled.get_ylim()[1] * 1.1)
        if metric is UA:
            ax.set_ylim(-3, 103)
        ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
        ax.set_xlabel(param_title(method, param))
        ax.set_ylabel(f"{metric.label} ({where})")
        ax.set_title(f"{display_name(method)}: {metric.label}")
        ax.grid(alpha=0.3)
    if classes:
        fig.suptitle(f"Forgotten class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes))}")
    if handles:  # below the panels: inside, it would cover points of the twin axis, which "best" does not see
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="lower center",
            ncols=2,
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, -0.06),
        )
    fig.tight_layout()
    _save(fig, out_path)


def guidance_curves(table: pd.DataFrame, out_path, main_w: float, colors: Mapping[str, str] | None = None) -> None:
    """FID, UA and the remaining classes' recognition against the guidance weight w, one line per method
    (mean ± std over forgotten classes, from guidance.csv); the main run's w dashed."""

    summary = guidance_summary(table)
    methods = list(dict.fromkeys(summary["method"]))
    colors = colors or method_colors(methods)
    panels = (
        ("fid", f"{FID.label} (remaining classes)"),
        ("UA", f"{UA.label} (forgotten class)"),
        ("remaining_acc", "remaining classes recognised [%]"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(12.0, 3.6))
    for ax, (column, label) in zip(axes, panels):
        for method in methods:
            rows = summary[summary["method"] == method]
            ax.errorbar(
                rows["guidance_w"],
                rows[f"{column}_mean"],
                yerr=rows[f"{column}_std"].fillna(0.0),
                fmt="o-",
                capsize=3,
                color=colors[method],
                label=display_name(method),
            )
        ax.axvline(main_w, color="0.5", linestyle="--", linewidth=1)
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if column != "fid":
            ax.set_ylim(-3, 103)  # percentages; a std bar may reach past them
    if (summary["fid_mean"] > 0).all():
        axes[0].set_yscale("log")  # one method's FID may be 10-100x the others'
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"Main models sampled at each guidance weight: eps = (1 + w) eps_c − w eps_null (dashed: the main "
        f"w = {main_w:g}); mean ± std over forgotten classes",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, out_path)


def param_title(method: str, param: str) -> str:
    """A param's name in figures: the `title` of its PARAM_SCHEMA entry in its method file, else the name."""
    return load_method(method).PARAM_SCHEMA.get(param, {}).get("title", param)


def finding_bars(table: pd.DataFrame, out_path, color: str = ORIGINAL_COLOR) -> None:
    """The finding study (finding.csv): per point, the remaining classes' recognition, FID, UA and the size of the
    noise predictions per label; mean ± std over seeds."""
    points = list(dict.fromkeys(table["point"]))
    summary = (
        table.groupby("point", sort=False)[["remaining_acc", "fid", "UA", "eps_forget", "eps_remaining", "eps_null"]]
        .agg(["mean", "std"])
        .reindex(points)
    )
    x = np.arange(len(points))
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.9))
    panels = (
        ("remaining_acc", "remaining classes recognised [%]"),
        ("fid", "FID (remaining classes)"),
        ("UA", "UA [%] (forgotten class)"),
    )
    for ax, (column, label) in zip(axes, panels):
        ax.bar(x, summary[(column, "mean")], yerr=summary[(column, "std")].fillna(0.0), capsize=3, color=color)
        ax.set_ylabel(label)
        if column != "fid":
            ax.set_ylim(0, 103)
    width = 0.27
    for i, (group, color) in enumerate((("forget", "tab:red"), ("remaining", "tab:blue"), ("null", "tab:gray"))):
        axes[3].bar(
            x + (i - 1) * width,
            summary[(f"eps_{group}", "mean")],
            width,
            yerr=summary[(f"eps_{group}", "std")].fillna(0.0),
            capsize=2,
            color=color,
            label={"forget": "forgotten label", "remaining": "own labels", "null": "null label"}[group],
        )
    axes[3].axhline(1.0, color="0.4", linestyle="--", linewidth=1)
    axes[3].set_ylabel("mean eps_θ² (1 = true noise)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(x, points, rotation=35, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"One parameter changed at a time, forgotten class {int(table['forget_class'].iloc[0])}; "
        f"mean ± std over {table['seed'].nunique()} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, out_path)
