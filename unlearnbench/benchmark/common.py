"""What every part of the benchmark shares: the report's schema, strict JSON, small statistics, device waits."""

from __future__ import annotations

import datetime
import gc
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import write_json

# The JSON report's version: merge_reports refuses to mix versions. 2: the benchmark names no method (priors from the
# method files, projections to their published DEFAULTS' steps, ratios to the config's reference_method).
SCHEMA = "unlearnbench-benchmark/2"

# Each point of a two-point fit is the fastest of this many runs: the minimum is robust to one-off stalls.
TIMING_REPEATS = 3
NOISY_FIT = (
    "the larger run was not slower than the smaller one (timing noise larger than the work): rerun on a quiet machine"
)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def finite(value):
    """JSON-safe: NaN/inf become None; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path, report: dict) -> None:
    """Strict JSON (NaN/inf become null), written atomically."""
    write_json(path, finite(report), allow_nan=False)


def release(device: torch.device) -> None:
    """Free what earlier runs cached, so NVML's per-process peak of the next run is its own (GPU only:
    on CPU there is no device memory to measure, and a full gc pass costs most of a second)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean_s": None, "median_s": None, "min_s": None, "max_s": None, "stdev_s": None}
    return {
        "n": len(values),
        "mean_s": statistics.fmean(values),
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "stdev_s": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def linear_fit(sizes: tuple[float, float], times: tuple[float, float]) -> tuple[float | None, float | None]:
    """(marginal time per unit, fixed time) from two runs of different sizes; (None, None) when the larger
    run was not slower (timing noise larger than the work: a projection from it would be meaningless)."""
    per_unit = (times[1] - times[0]) / (sizes[1] - sizes[0])
    if not per_unit > 0:
        return None, None
    return per_unit, times[0] - per_unit * sizes[0]
