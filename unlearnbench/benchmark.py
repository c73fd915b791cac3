"""Cost benchmark: each method's REAL unlearning code on synthetic data, timed per step and projected.

    unlearnbench benchmark                                   # CPU: tiny preset, fp32
    unlearnbench benchmark --preset paper --precision fp32 bf16 --steps 40 --out benchmark.json   # GPU

What it runs (no dataset and no trained model needed: costs do not depend on the weights' values):
a randomly initialised UNet of the preset (`paper`: the 35.7M-parameter CIFAR-10 UNet on 32x32x3;
`tiny`: 8x8x1) saved to a temporary folder as the "original" model, synthetic uint8 images of 10
classes, and a `RunContext` built by `stages._context`, exactly as `unlearnbench unlearn` builds it.

Measured, per precision (fp32 = bf16 autocast and TF32 off; tf32; bf16 = bf16 autocast + TF32; channels_last,
compile and determinism as the config sets them in every row: paper.yaml has channels_last on, the rest off):
- each method's unlearning, `warmup + steps` steps with the paper's hyper-parameters (the method's
  DEFAULTS, or --config's method_params) and batch sizes; every step is timed (CUDA events at the
  step boundaries on GPU, so no host synchronisation is added to the loop); the steady-state time
  per step is the median over the steps after the warm-up, and the projected RTE is that times the
  paper's step count (SAFEMax 1,000, SalUn 1,000, SA 20,000) plus the measured time spent in the
  timed block outside the steps. The projected job RTE is what a real job's timed loop pays: its
  first (cold) step (cuDNN autotuning, torch.compile) and the other warm-up steps at their measured
  times (at least the median each, together), its remaining steps at the steady-state median, plus the
  same time outside the steps. Peak memory: `CostMeter` (NVML process/device peak, torch
  allocator peaks, host RSS), over the whole run as in a real job.
- the priors on a slice, projected linearly to the paper's sizes: SA's generated set (images x
  sampler steps: two runs of the real prior code with different step counts, after a warm-up run;
  the difference over the extra image-steps is the marginal cost), SA's Fisher (per image with all
  timesteps, timed per image), SalUn's mask (two runs with different image counts).
- the evaluation sampler (`diffusion.sample`, guided, as `stages.generate_samples` calls it):
  image-steps per second (one image-step = one image advanced one step = 2 UNet rows with
  guidance), and the bare guided UNet forward for comparison; FLOPs per step from
  torch.utils.flop_counter, achieved TFLOP/s and the fraction of the chip's dense bf16 peak.
- on GPU, a switch ablation on SAFEMax and the sampler (channels_last off, deterministic on,
  torch.compile on) against the bf16 row.

The JSON report is written atomically after every section (a killed run leaves the sections done);
a table goes to stdout; `write_markdown` / scripts/benchmark_report.py turn the JSON into markdown.
Nothing is estimated where it can be measured, and a number that cannot be had is null with a reason.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from .method_api import RunContext
from .training import autocast_dtype, setup_runtime

SCHEMA = "unlearnbench-benchmark/1"

# The paper's sizes (PROTOCOL.md sections 3-6).
PAPER_STEPS = {"safemax": 1000, "salun": 1000, "sa": 20000}
# SA's priors (the generated set and the Fisher) are computed once and shared by the forget classes (PROTOCOL.md 4).
PAPER_FORGET_CLASSES = 10
PAPER_PRIOR_SIZES = {
    "sa.generated": {"units": "image-steps", "paper_units": 5000 * 1000, "paper_images": 5000,
                     "paper_size": "5,000 images (500 per class) x 1,000 guided sampler steps"},
    "sa.fisher": {"units": "image-timesteps", "paper_units": 5000 * 1000,
                  "paper_size": "5,000 images x 1,000 timesteps (one backward per image-timestep chunk)"},
    "salun.mask": {"units": "images", "paper_units": 5000,
                   "paper_size": "one pass over the 5,000 real images of the forgotten class"},
}
PAPER_EVAL = {"images_per_job": 5000, "sampler_steps": 1000, "sampling_jobs": 31,
              "what": "per evaluation job 500 forget-class + 9 x 500 remaining-class images, 1,000 steps; "
                      "31 sampling jobs in the main table (30 unlearned models + the original)"}

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets (which quote the
# 2:4-sparse figure, twice these). Matched in order against torch.cuda.get_device_name().
BF16_DENSE_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4), ("H200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10", 125.0),
)
PEAK_SOURCE = ("NVIDIA datasheet dense bf16 tensor-core peak (half the quoted sparse figure), matched by device "
               "name; H100 SXM and H200 989.4 TFLOP/s, H100 PCIe 756, A100 312. An assumption: boost clocks "
               "and the SXM power limit; the measured bf16 matmul rate is reported beside it.")

PRECISIONS = {  # precision -> performance switches it sets (the others come from the config)
    "fp32": {"bf16": False, "tf32": False},
    "tf32": {"bf16": False, "tf32": True},
    "bf16": {"bf16": True, "tf32": True},
}

# Slice sizes per preset. paper: the paper's batch sizes (methods' DEFAULTS, sampler batch of the config).
PROFILES = {
    "tiny": {"method_batches": {"batch_size": 16, "replay_batch_size": 16, "retain_batch_size": 16,
                                "mask_batch_size": 16},
             # Sizes 1 and 8 (4): a CPU's timing spikes of tens of ms must not swamp the difference of two runs.
             "sampler_batch": 20, "sampler_steps": (1, 8), "gen_steps": (1, 8), "fisher_images": (1, 1),
             "fisher_timesteps": 100, "mask_batches": (1, 4), "per_class": 64, "flops_gpu_matmul": False},
    "paper": {"method_batches": {}, "sampler_batch": None, "sampler_steps": (1, 4), "gen_steps": (1, 4),
              "fisher_images": (1, 2), "fisher_timesteps": None, "mask_batches": (1, 4), "per_class": None,
              "flops_gpu_matmul": True},
}

# Each point of a two-point fit is the fastest of this many runs: the minimum is robust to one-off stalls.
TIMING_REPEATS = 3
NOISY_FIT = ("the larger run was not slower than the smaller one (timing noise larger than the work): rerun on a "
             "quiet machine")

# Switch ablation (GPU): each row changes one switch of the bf16 row.
SWITCH_VARIANTS = (  # compile second: the most informative row, and the slowest (a time budget may cut the rest)
    ("bf16", {}),
    ("bf16 + compile", {"compile": True}),
    ("bf16, channels_last off", {"channels_last": False}),
    ("bf16, deterministic on", {"deterministic": True}),
)


# ---------------------------------------------------------------------------- small helpers
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite(value):
    """JSON-safe: NaN/inf become None; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path, report: dict) -> None:
    """Strict JSON (NaN/inf become null), written atomically."""
    from .checkpoints import write_json

    write_json(path, _finite(report), allow_nan=False)


def _release(device: torch.device) -> None:
    """Free what earlier runs cached, so NVML's per-process peak of the next run is its own (GPU only:
    on CPU there is no device memory to measure, and a full gc pass costs most of a second)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean_s": None, "median_s": None, "min_s": None, "max_s": None, "stdev_s": None}
    return {"n": len(values), "mean_s": statistics.fmean(values), "median_s": statistics.median(values),
            "min_s": min(values), "max_s": max(values),
            "stdev_s": statistics.stdev(values) if len(values) > 1 else 0.0}


def bf16_peak_tflops(device: torch.device, name: str) -> tuple[float | None, str]:
    """(dense bf16 peak of the chip, source or the reason it is null)."""
    if device.type != "cuda":
        return None, "no CUDA device: a CPU has no bf16 tensor-core peak to compare with"
    for key, value in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value, f"{PEAK_SOURCE} (matched '{key}')"
    return None, f"device '{name}' is not in the peak table (unlearnbench/benchmark.py BF16_DENSE_PEAK_TFLOPS)"


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention that fn runs, backward included."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- step clock
class StepClock:
    """Marks at loop-step boundaries: CUDA events on GPU (recorded, never waited on inside the loop),
    perf_counter on CPU. `loops` holds (desc, marks) per instrumented loop."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.loops: list[tuple[str, list]] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def new_loop(self, desc: str) -> list:
        marks: list = []
        self.loops.append((desc, marks))
        return marks

    def wrap(self, iterable, desc: str):
        marks = self.new_loop(desc)
        for item in iterable:
            marks.append(self.mark())
            yield item
        marks.append(self.mark())

    def durations(self, marks: list) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]

    def find(self, n_steps: int, desc: str | None = None) -> list[float] | None:
        """Durations of the last instrumented loop with n_steps steps (and the given desc, if any)."""
        for name, marks in reversed(self.loops):
            if len(marks) == n_steps + 1 and (desc is None or name == desc):
                return self.durations(marks)
        return None


class RowCounter:
    """Counts the UNet rows (images) each forward call processes, split by whether autograd records it
    (a training forward, followed by a backward in every method here) or not (a target or sampler pass).
    A forward pre-hook: no device work, no synchronisation."""

    def __init__(self):
        self.grad = 0
        self.no_grad = 0

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if torch.is_grad_enabled():
            self.grad += int(x.shape[0])
        else:
            self.no_grad += int(x.shape[0])

    def attach(self, model):
        model.register_forward_pre_hook(self.hook, with_kwargs=True)
        return model


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's text under set_sync_debug_mode("warn")


def count_sync_warnings(fn) -> int:
    """Run fn(); count the synchronisation warnings it raised (other warnings are dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sum(SYNC_WARNING in str(w.message) for w in caught)


@contextlib.contextmanager
def sync_debug_mode():
    """torch.cuda.set_sync_debug_mode("warn") for the block: torch warns at every operation that makes
    the host wait for the GPU (.item(), a copy from pageable memory or to the host, nonzero, ...)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class SyncCounter:
    """Host-device synchronisations per loop step, counted by torch's sync debug mode on chosen steps.

    The warm-up steps after the first are watched, not the timed ones (the check costs host time). A
    synchronisation inside a loop stops the host from queueing work ahead of the GPU.
    """

    HOW = "torch.cuda.set_sync_debug_mode('warn') on the warm-up steps after the first; warnings counted"

    def __init__(self, device: torch.device, watch_steps=()):
        self.watch_steps = set(watch_steps)
        self.count = self.watched = 0
        self.null_reason = None
        if device.type != "cuda":
            self.null_reason = "no CUDA device: there is no host-device synchronisation to count on CPU"
        elif not self.watch_steps:
            self.null_reason = "no step to watch: needs --warmup >= 2 (warm-up steps after the first are watched)"
        else:
            probe = torch.zeros(1, device=device)
            if self.count_in(lambda: probe.item()) < 1:  # the counter must see a known synchronisation
                self.null_reason = "torch's sync debug mode reported nothing for .item(): cannot count here"

    @staticmethod
    def count_in(fn) -> int:
        with sync_debug_mode():
            return count_sync_warnings(fn)

    def step(self, i: int, fn) -> None:
        if self.null_reason is None and i in self.watch_steps:
            self.count += self.count_in(lambda: fn(i))
            self.watched += 1
        else:
            fn(i)

    def result(self) -> dict:
        return {"per_step": _div(self.count, self.watched) if self.watched else None, "steps_watched": self.watched,
                "how": self.HOW, "null_reason": None if self.watched else self.null_reason}


@dataclasses.dataclass
class BenchContext(RunContext):
    """The workflow's RunContext, with every step of the method's loop timed by `clock`."""

    clock: StepClock | None = None
    syncs: SyncCounter | None = None

    def progress(self, iterable, desc: str):
        return self.clock.wrap(iterable, desc) if self.clock else super().progress(iterable, desc)

    def run_steps(self, steps: int, step_fn, *, desc: str, **kwargs):
        marks = self.clock.new_loop(desc) if self.clock else None

        def timed_step(i):
            if marks is not None and not marks:
                marks.append(self.clock.mark())
            if self.syncs is not None:
                self.syncs.step(i, step_fn)
            else:
                step_fn(i)
            if marks is not None:
                marks.append(self.clock.mark())

        return super().run_steps(steps, timed_step, desc=desc, **kwargs)


def make_context(config, method, params, data, device, seed, meter, original_dir, *, clock=None, rows=None,
                 syncs=None, forget_class=None, priors=None, out_dir=None, prior=None) -> BenchContext:
    """stages._context's RunContext (the one `unlearnbench unlearn`/`prior` use), instrumented, with
    load_original passing through acceleration.maybe_compile (idempotent if the stage compiles too).
    `rows` (a RowCounter) is attached to the models only when they are not compiled."""
    from .acceleration import maybe_compile, performance
    from .stages import _context

    base = _context(config, method, params, data, device, seed, meter, original_dir, forget_class, priors, out_dir,
                    prior=prior)
    ctx = BenchContext(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}, clock=clock,
                       syncs=syncs)
    load = base.load_original
    count = rows is not None and not (performance(config)["compile"] and torch.device(device).type == "cuda")

    def load_original(ema: bool = False):
        model = load(ema)
        if count:
            rows.attach(model)
        return maybe_compile(model, config, device)

    ctx.load_original = load_original
    return ctx


# ---------------------------------------------------------------------------- setup
def synthetic_data(shape: tuple[int, int, int], per_class: int, num_classes: int = 10, seed: int = 0,
                   forget_class: int = 0, forget_count: int | None = None):
    """Random uint8 images (costs do not depend on pixel values), `per_class` per class."""
    from .data import ImageData

    rng = np.random.default_rng(seed)
    counts = [forget_count if (c == forget_class and forget_count is not None) else per_class for c in range(num_classes)]
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    ty = np.repeat(np.arange(num_classes, dtype=np.int64), 2)
    tx = rng.integers(0, 256, size=(len(ty), *shape), dtype=np.uint8)
    return ImageData(x, y, tx, ty)


def save_original(config: dict, num_classes: int, folder: Path) -> int:
    """A randomly initialised UNet of the config's preset as unet/ and unet_ema/ (same weights)."""
    from .checkpoints import save_unet
    from .networks import build_unet

    torch.manual_seed(0)
    model = build_unet(config["model"]["preset"], num_classes, config["model"].get("overrides"))
    save_unet(model, folder / "unet")
    save_unet(model, folder / "unet_ema")
    return sum(p.numel() for p in model.parameters())


def variant_config(config: dict, precision: str | None = None, switches: dict | None = None) -> dict:
    cfg = copy.deepcopy(config)
    perf = dict(cfg.get("performance") or {})
    perf.update(PRECISIONS.get(precision, {}))
    for key, value in (switches or {}).items():
        if key == "deterministic":
            cfg["deterministic"] = value
        else:
            perf[key] = value
    cfg["performance"] = perf
    return cfg


# ---------------------------------------------------------------------------- measurements
class Bench:
    """One benchmark run: shared setup (config, data, original model) and the measurements."""

    def __init__(self, config: dict, preset: str, device: torch.device, workdir: Path, steps: int, warmup: int,
                 methods: list[str], param_source: str):
        from .networks import UNET_PRESETS

        self.config, self.preset, self.device, self.workdir = config, preset, device, workdir
        self.steps, self.warmup, self.methods, self.param_source = steps, warmup, methods, param_source
        self.profile = PROFILES[preset]
        unet = {**UNET_PRESETS[preset], **(config["model"].get("overrides") or {})}
        self.shape = (unet["in_channels"], unet["sample_size"], unet["sample_size"])
        self.forget_class = 0
        self.original_dir = workdir / "original"
        self.parameters = save_original(config, 10, self.original_dir)
        self.sampler_batch = self.profile["sampler_batch"] or int(config["sampler"].get("batch_size", 1000))
        self.sampler_batch = max(10, self.sampler_batch - self.sampler_batch % 10)  # whole classes
        biggest = max([int(v) for m in methods for k, v in self.params(m).items() if k.endswith("batch_size")] + [16])
        per_class = self.profile["per_class"] or biggest
        self.data = synthetic_data(self.shape, per_class)
        self.flops: dict | None = None  # set by main(): unet_flops()
        self.eps_ref: dict | None = None  # set by main(): eps_reference(), what each precision is compared with
        self.rows_per_step: dict[str, dict] = {}
        self.probe_images: dict[str, torch.Tensor] = {}  # sampler() label -> its 3-step images (sampler_numerics)

    # -- parameters
    def params(self, method: str, **overrides) -> dict:
        from .config import method_params
        from .method_api import load_method

        module = load_method(method)
        if self.param_source == "config":
            params = method_params(self.config, method, module)
        else:
            params = dict(module.DEFAULTS)
            params.update({k: v for k, v in self.profile["method_batches"].items() if k in params})
        params.update(overrides)
        return params

    # -- FLOPs
    def unet_flops(self) -> dict:
        """Per image: one forward, forward + backward, one guided sampler step (cond + null rows)."""
        from .checkpoints import load_unet
        from .diffusion import guided_eps
        from .networks import predict_eps

        model = load_unet(self.original_dir / "unet").to(self.device)
        x = torch.randn(2, *self.shape, device=self.device)
        t = torch.tensor([10, 900], device=self.device)
        y = torch.tensor([1, 2], device=self.device)
        with torch.no_grad():
            fwd = count_flops(lambda: predict_eps(model, x, t, y)) / 2
            guided = count_flops(lambda: guided_eps(model, x, t, y, float(self.config["sampler"]["guidance_w"]))) / 2
        fwd_bwd = count_flops(lambda: predict_eps(model, x, t, y).float().pow(2).mean().backward()) / 2
        del model
        return {"forward_per_image": fwd, "forward_backward_per_image": fwd_bwd, "guided_step_per_image": guided,
                "counter": "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add; matmul, conv, "
                           "attention; elementwise ops not counted)"}

    # -- methods
    def run_method(self, method: str, cfg: dict, priors: dict, steps: int | None = None) -> dict:
        from .cost import CostMeter
        from .method_api import load_method

        steps = self.steps if steps is None else steps
        module = load_method(method)
        device = setup_runtime(cfg)
        total = self.warmup + steps
        params = self.params(method, steps=total)
        clock = StepClock(device)
        rows = RowCounter()
        syncs = SyncCounter(device, watch_steps=range(1, self.warmup))
        _release(device)
        with CostMeter(device) as meter:
            ctx = make_context(cfg, method, params, self.data, device, 0, meter, self.original_dir, clock=clock,
                               rows=rows, syncs=syncs, forget_class=self.forget_class, priors=priors)
            model = module.unlearn(ctx)
        del model, ctx
        cost = meter.result()
        if rows.grad or rows.no_grad:
            self.rows_per_step[method] = {"with_grad": rows.grad / total, "no_grad": rows.no_grad / total}
        per_step_rows = self.rows_per_step.get(method)
        durations = clock.find(total)
        as_measured = max(self.warmup, 1)  # the first step and the other warm-up steps: a job's own times
        if durations is not None:
            steady = durations[self.warmup:]
            stats = _stats(steady)
            in_loop = sum(durations)
            outside = max(0.0, cost["rte_s"] - in_loop)
            timing = "per-step marks (CUDA events on GPU, perf_counter on CPU) at the loop's step boundaries"
            first, warm = durations[0], sum(durations[1:as_measured])
        else:  # a method that neither uses ctx.run_steps nor ctx.progress: whole-run mean
            stats = _stats([cost["rte_s"] / total])
            outside, first, warm = 0.0, None, None
            timing = "whole timed block / steps (the method's loop is not instrumented: no per-step marks)"
        paper_steps = PAPER_STEPS.get(method)
        projected_steps, source = paper_steps, "paper"
        if projected_steps is None:  # a method the paper does not have: its DEFAULTS, its full-scale values
            default = module.DEFAULTS.get("steps")
            ok = isinstance(default, int) and not isinstance(default, bool) and default > 0
            projected_steps, source = (default, "DEFAULTS") if ok else (None, None)
        per_step = stats["median_s"]  # the steady state; the median is robust to the odd stalled step
        projected_s = per_step * projected_steps + outside if projected_steps and per_step is not None else None
        # A real job's timed loop also pays its cold first step (autotuning, compilation) and its warm-up steps, as
        # measured; cold steps that happened to be faster than the median (timing noise on a CPU) count at the median,
        # so that the job never projects below the steady state.
        job_s = (max(first + warm, as_measured * per_step) + max(projected_steps - as_measured, 0) * per_step
                 + outside if first is not None and projected_s is not None else None)
        flops = None
        if per_step_rows and self.flops:
            flops = (per_step_rows["with_grad"] * self.flops["forward_backward_per_image"]
                     + per_step_rows["no_grad"] * self.flops["forward_per_image"])
        return {"method": method, "params": params, "steps_measured": steps, "warmup_steps": self.warmup,
                "timing": timing, "step": stats, "first_step_s": first, "timed_outside_steps_s": outside,
                "unet_rows_per_step": per_step_rows, "flops_per_step": flops,
                "flops_method": "UNet rows per step (forward pre-hook; with grad = forward + backward) x the counted "
                                "FLOPs per row (flops section)",
                "paper_steps": paper_steps, "projected_steps": projected_steps, "projected_steps_source": source,
                "projection_step_statistic": "median_s",
                "projected_rte_s": projected_s, "projected_rte_min": _div(projected_s, 60.0),
                "warmup_after_first_s": warm, "job_steps_as_measured": as_measured if first is not None else None,
                "projected_job_rte_s": job_s, "projected_job_rte_min": _div(job_s, 60.0),
                "projected_job_rte_formula": "max(first_step_s + warmup_after_first_s, job_steps_as_measured x "
                                             "step.median_s) + (projected_steps - job_steps_as_measured) x "
                                             "step.median_s + timed_outside_steps_s",
                "host_syncs": syncs.result(), "cost": cost}

    # -- priors
    def _prior_run(self, method: str, prior_name: str, cfg: dict, params: dict, out_dir: Path, *, data=None,
                   priors=None, clock=None) -> dict:
        from .cost import CostMeter
        from .method_api import load_method, prior_by_name

        prior = prior_by_name(load_method(method), prior_name)
        device = setup_runtime(cfg)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        _release(device)
        with CostMeter(device) as meter:
            ctx = make_context(cfg, method, params, data or self.data, device, 0, meter, self.original_dir,
                               clock=clock, forget_class=self.forget_class, priors=priors, out_dir=out_dir,
                               prior=prior_name)
            prior.run(ctx)
        return meter.result()

    @staticmethod
    def _linear(sizes: tuple[int, int], times: tuple[float, float]) -> tuple[float | None, float | None]:
        """(marginal time per unit, fixed time) from two runs of different sizes; (None, None) when the larger
        run was not slower (timing noise larger than the work: a projection from it would be meaningless)."""
        per_unit = (times[1] - times[0]) / (sizes[1] - sizes[0])
        if not per_unit > 0:
            return None, None
        return per_unit, times[0] - per_unit * sizes[0]

    def _two_point_prior(self, key: str, run, sizes: tuple[int, int], describe, folder_prefix: str,
                         fixed_times: float, how: str) -> tuple[dict, Path]:
        """A prior run at two sizes (each point the fastest of TIMING_REPEATS, after a warm-up run at the smaller),
        fitted as fixed + marginal x units and projected to the paper's size PAPER_PRIOR_SIZES[key], the fixed part
        counted `fixed_times`. `run(size, folder)` returns the prior's cost; `describe(size)` the run's own fields
        and its units."""
        t0 = time.perf_counter()
        run(sizes[0], self.workdir / f"{folder_prefix}_warmup")
        warmup_s = time.perf_counter() - t0  # wall time, job set-up included: where autotuning and cold starts go
        runs, units, folder = [], [], None
        for size in sizes:
            folder = self.workdir / f"{folder_prefix}_{size}"
            cost = min((run(size, folder) for _ in range(TIMING_REPEATS)), key=lambda x: x["rte_s"])
            fields, n_units = describe(size)
            runs.append({**fields, "rte_s": cost["rte_s"], "repeats": TIMING_REPEATS, "cost": cost})
            units.append(n_units)
        per_unit, fixed = self._linear(tuple(units), (runs[0]["rte_s"], runs[1]["rte_s"]))
        paper = PAPER_PRIOR_SIZES[key]
        projected = (per_unit * paper["paper_units"] + max(fixed, 0.0) * fixed_times
                     if per_unit is not None else None)
        return ({"units": paper["units"], "paper_size": paper["paper_size"], "runs": runs,
                 "method": f"two runs of the real prior ({how}; the fastest of {TIMING_REPEATS} each) after a warm-up "
                           "run; fixed part = intercept, marginal = slope",
                 "per_unit_s": per_unit, "fixed_s": fixed, "units_per_s": _div(1.0, per_unit),
                 "projected_s": projected, "projected_min": _div(projected, 60.0), "cost": runs[-1]["cost"],
                 "warmup_run_wall_s": warmup_s,
                 "null_reason": None if per_unit is not None else NOISY_FIT},
                folder)

    def prior_generated(self, cfg: dict, tag: str) -> tuple[dict, Path]:
        """SA's generated set: the real prior code with the sampler at k1 and k2 steps over one full batch."""
        params = self.params("sa", n_generated_per_class=self.sampler_batch // 10)

        def run(k: int, folder: Path) -> dict:
            c = copy.deepcopy(cfg)
            c["sampler"]["steps"], c["sampler"]["batch_size"] = k, self.sampler_batch
            return self._prior_run("sa", "generated", c, params, folder)

        def describe(k: int) -> tuple[dict, int]:
            return {"sampler_steps": k, "images": self.sampler_batch}, self.sampler_batch * k

        # The fixed part (per sample() call) once per batch of the paper's images.
        batches = PAPER_PRIOR_SIZES["sa.generated"]["paper_images"] / self.sampler_batch
        return self._two_point_prior("sa.generated", run, self.profile["gen_steps"], describe,
                                     f"sa_generated_{tag}_k", batches,
                                     "k1, k2 sampler steps over one batch of images")

    def prior_fisher(self, cfg: dict, tag: str, generated: Path) -> tuple[dict, Path]:
        """SA's Fisher: the real prior code on warm-up + n images of the generated slice, timed per image."""
        from .method_api import load_method

        w, n = self.profile["fisher_images"]
        n_t = self.profile["fisher_timesteps"]
        params = self.params("sa", fisher_images=w + n, fisher_timesteps=n_t)
        timesteps = len(load_method("sa").fisher_timesteps(int(cfg["diffusion"]["timesteps"]), n_t))
        clock = StepClock(torch.device(self.device))
        folder = self.workdir / f"sa_fisher_{tag}"
        cost = self._prior_run("sa", "fisher", cfg, params, folder, priors={"generated": generated}, clock=clock)
        durations = clock.find(w + n, "fisher")
        if durations is not None:
            per_image = statistics.fmean(durations[w:])
            how = "the real prior on warm-up + n images, each image timed (all its timesteps); warm-up dropped"
        else:
            per_image = cost["rte_s"] / (w + n)
            how = "the real prior's timed block / images (loop not instrumented)"
        per_unit = per_image / timesteps
        paper = PAPER_PRIOR_SIZES["sa.fisher"]
        projected = per_unit * paper["paper_units"]
        return ({"units": paper["units"], "paper_size": paper["paper_size"], "method": how,
                 "images_measured": n, "warmup_images": w, "timesteps_per_image": timesteps,
                 "chunk": params["fisher_batch"], "per_image_s": per_image, "per_unit_s": per_unit,
                 "warmup_images_s": durations[:w] if durations is not None else None,
                 "units_per_s": _div(1.0, per_unit), "projected_s": projected, "projected_min": projected / 60.0,
                 "cost": cost}, folder)

    def prior_mask(self, cfg: dict, tag: str) -> tuple[dict, Path]:
        """SalUn's mask: the real prior code over b1 and b2 batches of forget-class images, after a warm-up."""
        params = self.params("salun")
        mb = int(params["mask_batch_size"])

        def run(batches: int, folder: Path) -> dict:
            data = synthetic_data(self.shape, 2, forget_class=self.forget_class, forget_count=batches * mb)
            return self._prior_run("salun", "mask", cfg, params, folder, data=data)

        def describe(batches: int) -> tuple[dict, int]:
            return {"images": batches * mb}, batches * mb

        # The fixed part (the global top-k) once.
        return self._two_point_prior("salun.mask", run, self.profile["mask_batches"], describe,
                                     f"salun_mask_{tag}_b", 1.0, "b1, b2 batches of the forget class")

    # -- evaluation sampler
    def sampler(self, cfg: dict, flops: dict | None, peak: float | None, measured_peak: float | None,
                label: str | None = None) -> dict:
        """The evaluation sampler's throughput; `label` keeps its 3-step probe images for sampler_numerics."""
        from .checkpoints import load_unet
        from .diffusion import Schedule, guided_eps, sample_as_configured
        from .training import prepare_model
        from .acceleration import maybe_compile

        device = setup_runtime(cfg)
        _release(device)
        model = maybe_compile(prepare_model(load_unet(self.original_dir / "unet_ema"), cfg, device), cfg, device).eval()
        w = float(cfg["sampler"]["guidance_w"])
        dtype = autocast_dtype(cfg, device)  # the forward-only timing below uses the sampler's precision
        B = self.sampler_batch
        labels = torch.arange(10).repeat_interleave(B // 10)
        schedule = Schedule.from_config(cfg)

        def sample_steps(k: int):
            return sample_as_configured(model, cfg, labels, torch.Generator().manual_seed(0), device, schedule=schedule,
                                        steps=k, batch_size=B)

        def run(k: int) -> float:
            _sync(device)
            start = time.perf_counter()
            sample_steps(k)
            _sync(device)
            return time.perf_counter() - start

        k1, k2 = self.profile["sampler_steps"]
        run(1)  # warm-up: cuDNN autotuning, compilation
        syncs = SyncCounter(device, watch_steps=[0])
        probe_steps = 3
        probe = []  # same seed, labels and steps in every row: the images differ only by the switches' numerics
        syncs.step(0, lambda _: probe.append(sample_steps(probe_steps)))
        if label is not None and probe:
            self.probe_images[label] = probe[0].detach().float().cpu()
        counted = syncs.result()
        host_syncs = {"per_call": counted["per_step"], "sampler_steps": probe_steps, "batches": 1,
                      "expected": "1 per batch: the finished images' copy to the host; none inside the steps",
                      "how": "torch.cuda.set_sync_debug_mode('warn') over one untimed sample() call",
                      "null_reason": counted["null_reason"]}
        t1, t2 = (min(run(k) for _ in range(TIMING_REPEATS)) for k in (k1, k2))
        per_step, fixed = self._linear((k1, k2), (t1, t2))
        # The bare guided UNet forward, no sampler around it (the upper bound the sampler can reach).
        x = torch.randn(B, *self.shape, device=device)
        if (cfg.get("performance") or {}).get("channels_last") and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device)
        t = torch.full((B,), 500, device=device, dtype=torch.long)

        def forward(n: int) -> float:
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for _ in range(n):
                    guided_eps(model, x, t, y, w)
            _sync(device)
            return time.perf_counter() - start

        forward(1)
        f1, f2 = (min(forward(k) for _ in range(TIMING_REPEATS)) for k in (k1, k2))
        fwd_per_step, _ = self._linear((k1, k2), (f1, f2))
        image_steps = _div(B, per_step)
        fwd_image_steps = _div(B, fwd_per_step)
        per_image_step_flops = flops["guided_step_per_image"] if flops else None
        out = {"batch_images": B, "unet_rows_per_step": 2 * B if w else B, "guidance_w": w,
               "steps_timed": [k1, k2], "run_s": [t1, t2], "per_step_s": per_step, "fixed_s": fixed,
               "null_reason": None if per_step is not None else NOISY_FIT,
               "host_syncs": host_syncs,
               "image_steps_per_s": image_steps,
               "guided_forward": {"per_step_s": fwd_per_step, "image_steps_per_s": fwd_image_steps},
               "sampler_overhead_fraction": _div(per_step - fwd_per_step, per_step) if per_step and fwd_per_step else None,
               "achieved_tflops": _div(per_image_step_flops * image_steps, 1e12) if per_image_step_flops and image_steps else None,
               "guided_forward_tflops": _div(per_image_step_flops * fwd_image_steps, 1e12)
               if per_image_step_flops and fwd_image_steps else None}
        out["fraction_of_bf16_peak"] = _div(out["achieved_tflops"], peak)
        out["guided_forward_fraction_of_bf16_peak"] = _div(out["guided_forward_tflops"], peak)
        out["fraction_of_measured_matmul"] = _div(out["achieved_tflops"], measured_peak)
        units = PAPER_EVAL["images_per_job"] * PAPER_EVAL["sampler_steps"]
        per_job = _div(units, image_steps)
        out["projected_eval_sampling_min_per_job"] = _div(per_job, 60.0)
        out["projected_eval_sampling_h_all_jobs"] = _div(per_job * PAPER_EVAL["sampling_jobs"], 3600.0) if per_job else None
        out["paper_eval"] = PAPER_EVAL["what"]
        del model
        return out

    # -- numerics
    def eps_reference(self) -> dict:
        """Strict fp32 eps of the original model on fixed inputs (the reference for the other precisions)."""
        from .checkpoints import load_unet
        from .networks import predict_eps

        setup_runtime(variant_config(self.config, "fp32", {"channels_last": False, "compile": False}))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(16, *self.shape, generator=g)
        t = torch.randint(0, int(self.config["diffusion"]["timesteps"]), (16,), generator=g)
        y = torch.randint(0, 11, (16,), generator=g)
        model = load_unet(self.original_dir / "unet_ema").to(self.device).eval()
        with torch.no_grad():
            eps = predict_eps(model, x.to(self.device), t.to(self.device), y.to(self.device)).float().cpu()
        return {"x": x, "t": t, "y": y, "eps": eps}

    def eps_error(self, cfg: dict, ref: dict) -> float:
        from .checkpoints import load_unet
        from .networks import predict_eps
        from .training import prepare_model

        device = setup_runtime(cfg)
        model = prepare_model(load_unet(self.original_dir / "unet_ema"), cfg, device).eval()
        dtype = autocast_dtype(cfg, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            eps = predict_eps(model, ref["x"].to(device), ref["t"].to(device), ref["y"].to(device)).float().cpu()
        return float((eps - ref["eps"]).norm() / ref["eps"].norm())


def measured_matmul_tflops(device: torch.device) -> float | None:
    """bf16 8192^3 matmul rate on random data (the practical ceiling the UNet is compared with)."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


# ---------------------------------------------------------------------------- report pieces
def _versions(device: torch.device) -> dict:
    from .stages import versions

    out = versions()
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["nvidia_driver"] = None
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            out["nvidia_driver"] = driver.decode() if isinstance(driver, bytes) else driver
            pynvml.nvmlShutdown()
    return out


def paper_means() -> dict:
    """The paper's Table 1 means per method: rte_min, gpu_gb, fid."""
    from .report import load_paper_numbers

    df = load_paper_numbers()
    return {m: {k: float(g[k].mean()) for k in ("rte_min", "gpu_gb", "fid")} for m, g in df.groupby("method")}


def _flops_entry(entry: dict, peak: float | None, measured_peak: float | None) -> None:
    per_step = entry["step"]["mean_s"]
    flops_per_step = entry.get("flops_per_step")
    entry["achieved_tflops"] = _div(flops_per_step, per_step * 1e12) if flops_per_step and per_step else None
    entry["fraction_of_bf16_peak"] = _div(entry["achieved_tflops"], peak)
    entry["fraction_of_measured_matmul"] = _div(entry["achieved_tflops"], measured_peak)


def summarize(runs: dict, paper: dict) -> dict:
    """Ratios per precision, beside the paper's."""
    out = {}
    p_rte = {m: v["rte_min"] for m, v in paper.items()}
    p_gpu = {m: v["gpu_gb"] for m, v in paper.items()}
    for precision, run in runs.items():
        methods = run.get("methods", {})
        rte = {m: e.get("projected_rte_min") for m, e in methods.items()}
        mem = {m: (e.get("cost") or {}).get("gpu_peak_gb") for m, e in methods.items()}
        alloc = {m: (e.get("cost") or {}).get("torch_peak_allocated_gb") for m, e in methods.items()}
        priors = run.get("priors", {})
        sa_priors = None
        if "sa.generated" in priors and "sa.fisher" in priors and None not in (
                priors["sa.generated"]["projected_min"], priors["sa.fisher"]["projected_min"]):
            sa_priors = priors["sa.generated"]["projected_min"] + priors["sa.fisher"]["projected_min"]
        s = {}
        for other in ("sa", "salun"):
            if other in rte and "safemax" in rte:
                s[f"rte_{other}_over_safemax"] = _div(rte[other], rte["safemax"])
                s[f"paper_rte_{other}_over_safemax"] = _div(p_rte.get(other), p_rte.get("safemax"))
                saving = _div(mem.get("safemax"), mem.get(other))
                s[f"gpu_saving_safemax_vs_{other}_pct"] = None if saving is None else 100 * (1 - saving)
                a = _div(alloc.get("safemax"), alloc.get(other))
                s[f"torch_alloc_saving_safemax_vs_{other}_pct"] = None if a is None else 100 * (1 - a)
                ps = _div(p_gpu.get("safemax"), p_gpu.get(other))
                s[f"paper_gpu_saving_safemax_vs_{other}_pct"] = None if ps is None else 100 * (1 - ps)
        if "sa" in rte and "safemax" in rte and sa_priors is not None and rte["sa"] is not None:
            s["sa_priors_projected_min"] = sa_priors
            s["rte_sa_with_priors_over_safemax"] = _div(rte["sa"] + sa_priors, rte["safemax"])
            from .report import RTE_WITH_PRIORS_RATIO, paper_claims

            s["paper_rte_sa_with_priors_over_safemax"] = paper_claims("safemax")[("sa", RTE_WITH_PRIORS_RATIO)]
            # The priors serve every forget class: above charged to one class (as the paper counts them), here
            # amortised over the classes that share them.
            s["sa_priors_shared_by_classes"] = PAPER_FORGET_CLASSES
            s["rte_sa_with_amortised_priors_over_safemax"] = _div(rte["sa"] + sa_priors / PAPER_FORGET_CLASSES,
                                                                  rte["safemax"])
        out[precision] = s
    return out


# ---------------------------------------------------------------------------- printing
def _fmt(value, digits=2, scale=1.0, pct=False) -> str:
    if value is None:
        return "-"
    value = value * scale
    if pct:
        return f"{100 * value:.1f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value and abs(value) < 10 ** -digits * 50:  # small: significant digits, not zeros
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def method_rows(report: dict, precision: str) -> list[list[str]]:
    paper = report.get("paper_means", {})
    rows = []
    for m, e in report["runs"][precision].get("methods", {}).items():
        cost = e.get("cost") or {}
        p = paper.get(m, {})
        projected = _fmt(e.get("projected_rte_min"), 2)
        if e.get("projected_steps_source") == "DEFAULTS":
            projected += f" ({e['projected_steps']:,} steps: DEFAULTS)"
        elif e.get("projected_rte_min") is None and e.get("projected_steps") is None:
            projected += " (no paper or DEFAULTS steps)"
        rows.append([m, _fmt(e["step"]["mean_s"], 2, 1000), _fmt(e["step"]["median_s"], 2, 1000),
                     projected, _fmt(e.get("first_step_s"), 2), _job_rte(e), _fmt(p.get("rte_min"), 2),
                     _fmt(cost.get("gpu_peak_gb"), 2), _fmt(cost.get("torch_peak_allocated_gb"), 2),
                     _fmt(p.get("gpu_gb"), 2), _fmt(cost.get("host_rss_peak_gb"), 2), _fmt(e.get("achieved_tflops"), 2),
                     _fmt(e.get("fraction_of_bf16_peak"), pct=True), _fmt((e.get("host_syncs") or {}).get("per_step"), 1)])
    return rows


def _job_rte(entry: dict | None) -> str:
    """The projected job RTE in minutes; runs from before it was recorded: 'not measured'."""
    if not entry:
        return "-"
    return _fmt(entry.get("projected_job_rte_min"), 2) if "projected_job_rte_min" in entry else "not measured"


METHOD_HEADER = ["method", "ms/step", "median ms", "proj. RTE min", "first step s", "proj. job RTE min",
                 "paper RTE min", "NVML peak GB",
                 "torch alloc GB", "paper GPU GB", "host RSS GB", "TFLOP/s", "% bf16 peak", "host syncs/step"]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def prior_rows(report: dict, precision: str) -> list[list[str]]:
    rows = []
    for name, e in report["runs"][precision].get("priors", {}).items():
        rows.append([name, e["units"], _fmt(e.get("units_per_s"), 1),
                     _fmt(e.get("projected_min"), 1) if e.get("projected_min") is not None
                     else f"- ({e.get('null_reason') or 'not measured'})",
                     _fmt((e.get("cost") or {}).get("gpu_peak_gb"), 2), e["paper_size"]])
    return rows


PRIOR_HEADER = ["prior", "unit", "units/s", "projected min", "NVML peak GB", "paper size"]


def sampler_rows(report: dict) -> list[list[str]]:
    rows = []
    for precision, run in report["runs"].items():
        s = run.get("sampler")
        if s:
            rows.append([precision, str(s["batch_images"]),
                         _fmt(s["image_steps_per_s"], 0) if s["image_steps_per_s"] is not None
                         else f"- ({s.get('null_reason') or 'not measured'})",
                         _fmt(s["guided_forward"]["image_steps_per_s"], 0), _fmt(s.get("sampler_overhead_fraction"), pct=True),
                         _fmt(s.get("achieved_tflops"), 1), _fmt(s.get("fraction_of_bf16_peak"), pct=True),
                         _fmt(s.get("projected_eval_sampling_min_per_job"), 1),
                         _fmt(s.get("projected_eval_sampling_h_all_jobs"), 1),
                         _fmt((s.get("host_syncs") or {}).get("per_call"), 0),
                         _fmt(run.get("eps_rel_error_vs_fp32"), 5) if run.get("eps_rel_error_vs_fp32") is not None else "-"])
    return rows


SAMPLER_HEADER = ["precision", "batch", "image-steps/s", "bare fwd image-steps/s", "sampler overhead", "TFLOP/s",
                  "% bf16 peak", "min/eval job", "h all 31 jobs", "host syncs/call", "eps rel. err vs fp32"]


def ratio_rows(report: dict) -> list[list[str]]:
    rows = []
    for precision, s in report.get("summary", {}).items():
        for key, label, paper_key, pct in (
                ("rte_sa_over_safemax", "RTE SA / SAFEMax", "paper_rte_sa_over_safemax", False),
                ("rte_salun_over_safemax", "RTE SalUn / SAFEMax", "paper_rte_salun_over_safemax", False),
                ("sa_priors_projected_min", "SA priors (generated set + Fisher), min: computed once, shared by "
                 f"the {PAPER_FORGET_CLASSES} classes", None, False),
                ("rte_sa_with_priors_over_safemax", "RTE (SA + priors) / SAFEMax: all priors charged to one class "
                 "(the paper's count)", "paper_rte_sa_with_priors_over_safemax", False),
                ("rte_sa_with_amortised_priors_over_safemax", f"RTE (SA + priors / {PAPER_FORGET_CLASSES}) / SAFEMax: "
                 f"priors amortised over the {PAPER_FORGET_CLASSES} classes", None, False),
                ("gpu_saving_safemax_vs_sa_pct", "GPU memory saved by SAFEMax vs SA (NVML) %", "paper_gpu_saving_safemax_vs_sa_pct", True),
                ("gpu_saving_safemax_vs_salun_pct", "GPU memory saved by SAFEMax vs SalUn (NVML) %", "paper_gpu_saving_safemax_vs_salun_pct", True),
                ("torch_alloc_saving_safemax_vs_sa_pct", "torch peak alloc saved vs SA %", "paper_gpu_saving_safemax_vs_sa_pct", True),
                ("torch_alloc_saving_safemax_vs_salun_pct", "torch peak alloc saved vs SalUn %", "paper_gpu_saving_safemax_vs_salun_pct", True)):
            if key in s:
                rows.append([precision, label, _fmt(s.get(key), 1), _fmt(s.get(paper_key), 1)])
    return rows


RATIO_HEADER = ["precision", "quantity", "measured", "paper"]


def numerics_rows(report: dict) -> list[list[str]]:
    return [[n["row"], n["reference"], f"{n['rel_diff']:.3g}", f"{n['max_abs_diff']:.3g}"]
            for n in report.get("sampler_numerics") or []]


NUMERICS_HEADER = ["row", "against", "relative difference", "max abs difference"]


def switch_rows(report: dict) -> list[list[str]]:
    sw = report.get("switches") or {}
    rows = []
    base = None
    for v in sw.get("variants", []):
        step = (v.get("method") or {}).get("step", {}).get("mean_s")
        smp = (v.get("sampler") or {}).get("image_steps_per_s")
        if base is None and step:
            base = (step, smp)
        rows.append([v["name"], _fmt(step, 2, 1000), _fmt(_div(base[0], step) if base and step else None, 2),
                     _fmt(smp, 0), _fmt(_div(smp, base[1]) if base and smp and base[1] else None, 2),
                     _fmt(((v.get("method") or {}).get("cost") or {}).get("gpu_peak_gb"), 2),
                     _fmt(((v.get("method") or {}).get("cost") or {}).get("torch_peak_allocated_gb"), 2),
                     _fmt((v.get("method") or {}).get("first_step_s"), 1), _job_rte(v.get("method")),
                     v.get("error") or v.get("note") or ""])
    return rows


SWITCH_HEADER = ["variant", "SAFEMax ms/step", "speed-up", "sampler image-steps/s", "speed-up", "NVML peak GB",
                 "torch alloc GB",
                 "first step s", "proj. job RTE min", "note"]


def print_report(report: dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)
    p(f"\nunlearnbench benchmark: preset {report['preset']}, {report['device_name']} ({report['device']}), "
      f"{report['settings']['steps']} steps after {report['settings']['warmup']} warm-up")
    if report["preset"] != "paper":
        p("(tiny preset: projections are for the tiny model, NOT comparable with the paper's numbers)")
    for precision, run in report["runs"].items():
        p(f"\n[{precision}] switches: {run.get('switches')}")
        if run.get("methods"):
            p(_text_table(METHOD_HEADER, method_rows(report, precision)))
        if run.get("priors"):
            p("")
            p(_text_table(PRIOR_HEADER, prior_rows(report, precision)))
    if sampler_rows(report):
        p("\nevaluation sampler (guided; one image-step = one image advanced one step)")
        p(_text_table(SAMPLER_HEADER, sampler_rows(report)))
    if ratio_rows(report):
        p("\nratios (projected to the paper's step counts)")
        p(_text_table(RATIO_HEADER, ratio_rows(report)))
    if numerics_rows(report):
        p("\nsampler numerics (3-step images against the reference row's)")
        p(_text_table(NUMERICS_HEADER, numerics_rows(report)))
    if switch_rows(report):
        p("\nswitch ablation (SAFEMax steps and the sampler; each row changes one switch of the bf16 row)")
        p(_text_table(SWITCH_HEADER, switch_rows(report)))
    gpu = report.get("gpu") or {}
    p(f"\nbf16 dense peak: {gpu.get('bf16_dense_peak_tflops')} TFLOP/s ({gpu.get('peak_source') or gpu.get('peak_null_reason')}); "
      f"measured bf16 matmul: {_fmt(gpu.get('measured_bf16_matmul_tflops'), 1)} TFLOP/s")
    for skipped in report.get("skipped", []):
        p(f"skipped: {skipped['what']}: {skipped['why']}")
    for error in report.get("errors", []):
        p(f"FAILED: {error['section']}: {error['error']}")
    for note in report.get("notes", []):
        p(f"note: {note}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def default_markdown_path(report: dict, root: Path | None = None) -> Path:
    root = root or Path(__file__).resolve().parent.parent
    kind = "gpu" if report.get("device") == "cuda" else "cpu"
    return root / "docs" / "benchmarks" / f"{kind}-{_slug(report.get('device_name', 'device'))}.md"


def render_markdown(report: dict) -> str:
    """docs/benchmarks/<gpu|cpu>-<device>.md from a benchmark JSON report."""
    s = report["settings"]
    v = report.get("versions", {})
    gpu = report.get("gpu") or {}
    lines = [f"# Cost benchmark: {report['device_name']}", "",
             f"Generated by `scripts/benchmark_report.py` from the JSON of `unlearnbench benchmark` "
             f"(schema {report.get('schema')}). Every number below was measured by "
             f"{'those runs' if report.get('sources') else 'that run'}; nothing is estimated "
             f"except the projections, which are linear in the paper's step counts and sizes.", "",
             "| | |", "|---|---|",
             f"| device | {report['device_name']} ({report['device']}) |",
             f"| date | {report.get('finished') or report.get('started')} |",
             f"| preset | {report['preset']} ({report.get('parameters', 0) / 1e6:.2f}M parameters, images {report.get('image_shape')}) |",
             f"| steps | {s['steps']} timed after {s['warmup']} warm-up, per method and precision |" if not
             report.get("sources") else "| steps | per run, below |",
             f"| method params | {s['param_source']} |",
             "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + " |",
             f"| host | {report.get('host', {}).get('cpu')} ({report.get('host', {}).get('cpu_count')} CPUs) |",
             f"| bf16 dense peak | {gpu.get('bf16_dense_peak_tflops') or '-'} TFLOP/s: "
             f"{gpu.get('peak_source') or gpu.get('peak_null_reason')} |",
             f"| measured bf16 matmul (8192^3) | {_fmt(gpu.get('measured_bf16_matmul_tflops'), 1)} TFLOP/s |",
             f"| complete | {report.get('complete')} |", ""]
    if report.get("sources"):
        lines += ["Merged from these runs (same code, device and versions); each row below comes from one of them:",
                  "", _md_table(SOURCE_HEADER, source_rows(report)), ""]
    if report["preset"] != "paper":
        lines += ["**Tiny preset: the projections are for the tiny model and NOT comparable with the paper.**", ""]
    lines += ["The paper's GPU is not stated: compare ratios with the paper's, not absolute minutes. "
              "Paper columns: Table 1 means over the 10 classes (`unlearnbench/paper_numbers.csv`). "
              "proj. RTE = the steady-state time per step x the paper's steps + the timed block's time outside "
              "the steps (the median step; runs without a job column: the mean). proj. job RTE = what a real job's "
              "timed loop pays: the first step (cuDNN autotuning, compilation) and the other warm-up steps as "
              "measured (together at least the median step's time each), the rest at the median step ('not "
              "measured': a run from before it was recorded). "
              "NVML peak = the process's GPU memory (CUDA context included), the quantity `nvidia-smi` shows; "
              "GB = 1e9 bytes. Host syncs/step: operations per unlearning step that make the host wait for the GPU "
              "(torch's sync debug mode on the warm-up steps after the first); 0 is the goal.", ""]
    for precision, run in report["runs"].items():
        lines += [f"## {precision}", "", f"Switches: `{json.dumps(run.get('switches'))}`", ""]
        if run.get("methods"):
            lines += [_md_table(METHOD_HEADER, method_rows(report, precision)), ""]
        if run.get("priors"):
            lines += ["Priors, measured on a slice and projected to the paper's size:", "",
                      _md_table(PRIOR_HEADER, prior_rows(report, precision)), ""]
    precisions = sorted(report["runs"], key=lambda p: p != "fp32")  # speed-ups against strict fp32
    if len(precisions) > 1:
        header = ["method"] + [f"{p} ms/step" for p in precisions] + [f"{p} NVML GB" for p in precisions] + \
                 [f"speed-up {p} vs {precisions[0]}" for p in precisions[1:]]
        rows = []
        for m in report["runs"][precisions[0]].get("methods", {}):
            steps = [report["runs"][p].get("methods", {}).get(m, {}).get("step", {}).get("mean_s") for p in precisions]
            mems = [(report["runs"][p].get("methods", {}).get(m, {}).get("cost") or {}).get("gpu_peak_gb") for p in precisions]
            rows.append([m, *[_fmt(x, 2, 1000) for x in steps], *[_fmt(x, 2) for x in mems],
                         *[_fmt(_div(steps[0], x), 2) for x in steps[1:]]])
        lines += ["## Precisions side by side", "", _md_table(header, rows), ""]
    if sampler_rows(report):
        lines += ["## Evaluation sampler", "",
                  "Guided (w = 2): one image-step = one image advanced one step = 2 UNet rows. "
                  "'bare fwd' is the guided UNet forward alone; 'sampler overhead' the share of the sampler's "
                  "step time spent outside it. Projections: 5,000 images x 1,000 steps per evaluation job. "
                  "Host syncs/call: in one 3-step sample() call of one batch; 1 expected (the images' copy to the host).", "",
                  _md_table(SAMPLER_HEADER, sampler_rows(report)), ""]
    if ratio_rows(report):
        lines += ["## Ratios", "", _md_table(RATIO_HEADER, ratio_rows(report)), ""]
    if numerics_rows(report):
        lines += ["## Sampler numerics", "", "Each row's 3-step guided sampler images (same seed, labels and batch) "
                  "against its reference row's: relative L2 difference and largest absolute difference (pixels "
                  "in [-1, 1]). The ablation's `bf16` row repeats the bf16 row: its difference is the run-to-run floor.",
                  "", _md_table(NUMERICS_HEADER, numerics_rows(report)), ""]
    if switch_rows(report):
        lines += ["## Switch ablation", "", "Each row changes one switch of the bf16 row (SAFEMax unlearning steps, "
                  "and the sampler). 'first step' includes compilation and cuDNN autotuning.", "",
                  _md_table(SWITCH_HEADER, switch_rows(report)), ""]
    interrupted = [k.removesuffix(" (interrupted)") for k in report.get("section_s", {}) if k.endswith("(interrupted)")]
    if interrupted:
        lines += ["## Interrupted", "", "Cut by the time limit before they finished (no result):", "",
                  *[f"- {k}" for k in interrupted], ""]
    if report.get("errors"):
        lines += ["## Failed sections", "", *[f"- {e['section']}: `{e['error']}`" for e in report["errors"]], ""]
    if report.get("skipped"):
        lines += ["## Skipped", "", *[f"- {k['what']}: {k['why']}" for k in report["skipped"]], ""]
    notes = report.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


MERGE_SAME = ("schema", "preset", "device", "device_name", "versions", "parameters", "image_shape", "flops")


def merge_reports(reports: list[dict], names: list[str] | None = None) -> dict:
    """One report from several runs of the same code on the same device (e.g. the fp32 row and the bf16 row run
    in two calls of one lease): each precision row and the switch ablation come from the one run that has them,
    and `sources` says which run (its steps, dates, completeness). Refuses runs that are not comparable (another
    device, versions, model or preset) or that both measured the same precision or a switch ablation."""
    if len(reports) == 1:
        return reports[0]
    names = names or [f"run {i + 1}" for i in range(len(reports))]
    order = sorted(range(len(reports)), key=lambda i: reports[i]["started"])  # chronological, whatever the order given
    reports, names = [reports[i] for i in order], [names[i] for i in order]
    first = reports[0]
    for name, r in zip(names[1:], reports[1:]):
        differ = [k for k in MERGE_SAME if r.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"{name} cannot be merged with {names[0]}: they differ in {', '.join(differ)} "
                             "(merge only runs of the same code, preset and device)")
    merged = copy.deepcopy(first)
    merged.update(runs={}, switches=None, skipped=[], errors=[], notes=[], section_s={}, sources=[],
                  sampler_numerics=[])
    for name, r in zip(names, reports):
        for precision, run in r["runs"].items():
            if precision in merged["runs"]:
                raise ValueError(f"precision {precision} is in more than one run ({name} among them): merge runs "
                                 "that measured different precisions")
            merged["runs"][precision] = run
        if (r.get("switches") or {}).get("variants"):
            if merged["switches"]:
                raise ValueError(f"{name} and an earlier run both have a switch ablation: merge one of them")
            merged["switches"] = r["switches"]
        merged["skipped"] += r.get("skipped", [])
        merged["sampler_numerics"] += r.get("sampler_numerics") or []
        merged["errors"] += r.get("errors", [])
        merged["notes"] += [n for n in r.get("notes", []) if n not in merged["notes"]]
        merged["section_s"].update({f"{name}: {k}": v for k, v in r.get("section_s", {}).items()})
        merged["sources"].append({"name": name, "precisions": list(r["runs"]),
                                  "switch_ablation": bool((r.get("switches") or {}).get("variants")),
                                  "steps": r["settings"]["steps"], "warmup": r["settings"]["warmup"],
                                  "started": r.get("started"), "finished": r.get("finished"),
                                  "complete": r.get("complete"), "interrupted": r.get("interrupted"),
                                  "measured_bf16_matmul_tflops": (r.get("gpu") or {}).get("measured_bf16_matmul_tflops"),
                                  "command": r["settings"].get("command")})
    merged["complete"] = all(r.get("complete") for r in reports)
    merged["interrupted"] = any(r.get("interrupted") for r in reports)
    merged["started"] = min(r["started"] for r in reports)
    merged["finished"] = max((r.get("finished") or r["started"]) for r in reports)
    merged["summary"] = summarize(merged["runs"], merged["paper_means"])
    return merged


def source_rows(report: dict) -> list[list[str]]:
    return [[s["name"], ", ".join(s["precisions"]) + (" + switch ablation" if s["switch_ablation"] else ""),
             f"{s['steps']} after {s['warmup']}", f"{s['started']} .. {s['finished']}",
             "interrupted (timeout)" if s["interrupted"] else ("complete" if s["complete"] else "incomplete"),
             _fmt(s.get("measured_bf16_matmul_tflops"), 1)] for s in report.get("sources", [])]


SOURCE_HEADER = ["run", "rows", "timed steps after warm-up", "UTC", "state", "bf16 matmul TFLOP/s"]


def write_markdown(report_paths, out=None) -> Path:
    """The markdown of one benchmark JSON, or of several merged (merge_reports)."""
    from .files import atomic_write_text

    paths = [report_paths] if isinstance(report_paths, (str, Path)) else list(report_paths)
    report = merge_reports([json.loads(Path(p).read_text()) for p in paths], [Path(p).name for p in paths])
    out = Path(out) if out else default_markdown_path(report)
    atomic_write_text(out, render_markdown(report))
    return out


# ---------------------------------------------------------------------------- main
def _resolve_args(args) -> dict:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    preset = args.preset or ("paper" if cuda else "tiny")
    if preset not in PROFILES:
        from .errors import UserError

        raise UserError(f"--preset {preset!r} is not a preset; allowed: {', '.join(PROFILES)}")
    precisions = list(args.precision or (["fp32", "bf16"] if cuda else ["fp32"]))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        from .errors import UserError

        raise UserError(f"--precision {' '.join(bad)} is not allowed; allowed: {', '.join(PRECISIONS)}")
    if args.steps < 1 or args.warmup < 0:
        from .errors import UserError

        raise UserError("--steps must be >= 1 and --warmup >= 0")
    return {"cuda": cuda, "preset": preset, "precisions": list(dict.fromkeys(precisions))}


def build_config(args, preset: str) -> tuple[dict, str, str | None]:
    """(config, where method params come from, config file used)."""
    from .config import ROOT, load_config

    path = args.config
    if path is None and preset == "paper":
        path = str(ROOT / "config" / "paper.yaml")  # the paper's sampler, diffusion and performance switches
    config = load_config(*([path] if path else []))
    config["model"]["preset"] = preset
    config["device"] = args.device or "auto"
    threads = args.threads or config.get("threads") or 1
    config["threads"] = max(1, min(int(threads), os.cpu_count() or 1))
    source = "config" if args.config else "DEFAULTS"
    return config, source, path


class ReportSink:
    """The report being filled: each section's time (kept, marked, when interrupted) and the JSON rewritten after
    each step, so a timeout keeps every finished section."""

    def __init__(self, report: dict, out: Path | None, started: float):
        self.report, self.out, self.started = report, out, started
        self.bench: Bench | None = None  # set once built: its sampler probe images give sampler_numerics

    @contextlib.contextmanager
    def section(self, label: str):
        t0 = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:  # its time is kept, under a name that says it has no result
            label += " (interrupted)"
            raise
        finally:
            self.report["section_s"][label] = time.perf_counter() - t0

    def attempt(self, label: str, fn):
        """fn() timed as section `label`; an exception in it is recorded (report["errors"], its traceback on
        stderr) and None returned, so one failing section of a single GPU run does not lose the others."""
        try:
            with self.section(label):
                return fn()
        except Exception as exc:
            self.record_error(label, exc)
            self.save()
            return None

    def record_error(self, label: str, exc: Exception) -> str:
        """Keep `exc` in report["errors"] under `label` (the report is then incomplete and the command exits 1),
        its traceback on stderr; returns its one-line text."""
        traceback.print_exc()
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        text = f"{type(exc).__name__}: {first}"
        self.report["errors"].append({"section": label, "error": text})
        return text

    def save(self) -> None:
        self.report["elapsed_s"] = time.perf_counter() - self.started
        self.report["summary"] = summarize(self.report["runs"], self.report["paper_means"])
        if self.bench is not None:
            self.report["sampler_numerics"] = sampler_numerics(self.bench.probe_images)
        if self.out:
            write_json_atomic(self.out, self.report)


def measure_precision(bench: "Bench", sink: ReportSink, precision: str, methods: list[str], peak, measured) -> dict:
    """One precision's row: each method's priors and unlearning, then the sampler. Returns the priors' folders."""
    from .acceleration import effective_switches

    cfg = variant_config(bench.config, precision)
    run = sink.report["runs"][precision] = {"switches": None, "methods": {}, "priors": {}, "sampler": None}
    run["switches"] = effective_switches(cfg, setup_runtime(cfg))
    run["eps_rel_error_vs_fp32"] = bench.eps_error(cfg, bench.eps_ref)
    # Each method right after its own priors, SAFEMax (none) first: a time limit cuts the later, costlier ones.
    priors: dict[str, dict] = {m: {} for m in methods}
    for m in methods:
        if m == "sa":
            gen = sink.attempt(f"{precision} sa.generated", lambda: bench.prior_generated(cfg, precision))
            fis = gen and sink.attempt(f"{precision} sa.fisher", lambda: bench.prior_fisher(cfg, precision, gen[1]))
            if gen:
                run["priors"]["sa.generated"] = gen[0]
            if fis:
                run["priors"]["sa.fisher"] = fis[0]
                priors["sa"] = {"generated": gen[1], "fisher": fis[1]}
            ok = bool(fis)
        elif m == "salun":
            mask = sink.attempt(f"{precision} salun.mask", lambda: bench.prior_mask(cfg, precision))
            if mask:
                run["priors"]["salun.mask"], priors["salun"] = mask[0], {"mask": mask[1]}
            ok = bool(mask)
        else:
            ok = True
        if not ok:
            sink.report["skipped"].append({"what": f"{precision} {m}", "why": "its prior failed (see errors)"})
            sink.save()
            continue
        entry = sink.attempt(f"{precision} {m}", lambda: bench.run_method(m, cfg, priors[m]))
        if entry is not None:
            _flops_entry(entry, peak, measured)
            run["methods"][m] = entry
        sink.save()
    run["sampler"] = sink.attempt(f"{precision} sampler",
                                  lambda: bench.sampler(cfg, bench.flops, peak, measured, label=precision))
    sink.save()
    return priors


def sampler_numerics(probe_images: dict[str, torch.Tensor]) -> list[dict]:
    """How far each row's 3-step sampler images are from its reference row's (same seed, labels, steps): each
    precision against strict fp32, each switch-ablation row against the bf16 row. The ablation's own `bf16` row
    repeats the bf16 row's configuration, so its difference is the run-to-run floor (autotuned kernels)."""
    out = []
    for name, images in probe_images.items():
        ref = "fp32" if not name.startswith("switch ") else ("bf16" if "bf16" in probe_images else "fp32")
        if ref == name or ref not in probe_images:
            continue
        base = probe_images[ref]
        out.append({"row": name, "reference": ref,
                    "rel_diff": float((images - base).norm() / base.norm()),
                    "max_abs_diff": float((images - base).abs().max())})
    return out


def switch_ablation_after(precisions: list[str]) -> str:
    """The precision row after which the switch ablation runs: bf16's (the ablation changes one switch of it),
    else the last row."""
    return "bf16" if "bf16" in precisions else precisions[-1]


def measure_switches(bench: "Bench", sink: ReportSink, methods: list[str], priors: dict, budget, started: float,
                     peak, measured) -> None:
    """The switch ablation (GPU): one method and the sampler per SWITCH_VARIANTS row, each one switch off the bf16
    row; a row that fails is kept with its error (also in report["errors"]: the run is then incomplete), and rows past
    the time budget are listed as skipped."""
    from .acceleration import effective_switches

    report = sink.report
    sw_method = "safemax" if "safemax" in methods else methods[0]
    sw_priors = priors.get(sw_method, {})
    report["switches"] = {"method": sw_method, "variants": []}
    for label, change in SWITCH_VARIANTS:
        if budget and time.perf_counter() - started > budget:
            report["skipped"].append({"what": f"switch variant {label}", "why": f"time budget {budget:.0f} s spent"})
            continue
        cfg = variant_config(bench.config, "bf16", change)
        entry = {"name": label, "change": change}
        if change.get("deterministic"):
            # CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts, which was before this row.
            entry["note"] = "deterministic kernels; cuBLAS workspace as at start"
        # Listed before it runs: a timeout in its sampler keeps its method half (marked interrupted).
        report["switches"]["variants"].append(entry)
        try:
            entry["switches"] = None
            entry["switches"] = effective_switches(cfg, setup_runtime(cfg))
            with sink.section(f"switch {label} method"):
                entry["method"] = bench.run_method(sw_method, cfg, sw_priors)
            _flops_entry(entry["method"], peak, measured)
            with sink.section(f"switch {label} sampler"):
                entry["sampler"] = bench.sampler(cfg, bench.flops, peak, measured, label=f"switch {label}")
        except Exception as exc:  # one variant failing (e.g. compilation) must not lose the others
            entry["error"] = sink.record_error(f"switch {label}", exc)
        except KeyboardInterrupt:
            entry["error"] = "interrupted (timeout) before this row finished"
            raise
        sink.save()


def main(args) -> dict:
    """Entry point of `unlearnbench benchmark` (its parser in cli.py names the args)."""
    from .cost import device_name
    from .method_api import load_method

    os.environ.setdefault("UNLEARNBENCH_QUIET", "1")
    r = _resolve_args(args)
    config, param_source, config_path = build_config(args, r["preset"])
    device = setup_runtime(config)
    budget = args.budget_s or float(os.environ.get("UNLEARNBENCH_BENCHMARK_BUDGET_S", 0) or 0) or None
    run_switches = device.type == "cuda" if args.switches is None else args.switches
    methods = list(dict.fromkeys(args.methods or ["safemax", "salun", "sa"]))
    for m in methods:
        load_method(m)  # an unknown method fails before anything runs
    started = time.perf_counter()
    name = device_name(device)
    peak, peak_why = bf16_peak_tflops(device, name)
    report = {
        "schema": SCHEMA, "started": _now(), "finished": None, "complete": False, "interrupted": False,
        "preset": r["preset"], "device": device.type, "device_name": name,
        "host": {"cpu": device_name("cpu"), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "platform": platform.platform()},
        "versions": _versions(device),
        "settings": {"steps": args.steps, "warmup": args.warmup, "methods": methods, "precisions": r["precisions"],
                     "config": config_path, "param_source": "config method_params" if param_source == "config"
                     else "methods' DEFAULTS (the paper's values)" + (", tiny batches" if r["preset"] == "tiny" else ""),
                     "budget_s": budget, "switch_ablation": run_switches, "command": " ".join(sys.argv)},
        "gpu": {"bf16_dense_peak_tflops": peak, "peak_source": peak_why if peak else None,
                "peak_null_reason": None if peak else peak_why, "measured_bf16_matmul_tflops": None},
        "paper_means": paper_means(), "paper_steps": PAPER_STEPS, "paper_prior_sizes": PAPER_PRIOR_SIZES,
        "runs": {}, "summary": {}, "switches": None, "skipped": [], "errors": [], "notes": [], "section_s": {},
        "sampler_numerics": [],
    }
    out = Path(args.out) if args.out else None
    sink = ReportSink(report, out, started)
    section, save = sink.section, sink.save

    precisions = r["precisions"]
    if device.type != "cuda":
        for p in [p for p in precisions if p != "fp32"]:
            report["skipped"].append({"what": f"precision {p}", "why": "no CUDA device: the performance switches "
                                      "(bf16 autocast, TF32) have no effect on CPU, so the row would repeat fp32"})
        precisions = ["fp32"]
        report["notes"].append("GPU fields are null on CPU (see each cost's gpu_null_reason and gpu.peak_null_reason).")
    report["notes"].append("The priors' UNet passes autocast like the unlearning loops (SA's generated set through "
                           "the sampler, SA's Fisher and SalUn's mask through ctx.autocast): the bf16 rows run them in "
                           "bf16, with fp32 weights, gradients and accumulators.")
    report["notes"].append("Synthetic data and a randomly initialised UNet: costs only (no metric is meaningful).")
    report["notes"].append("first_step_s and projected_job_rte_min: one process runs every section, so cuDNN's "
                           "autotuning results and torch.compile's caches carry over from the sections before (the "
                           "first method of a precision row, SAFEMax, pays them most fully); a real job, a process of "
                           "its own, pays them every time, so a later method's job RTE can be below a job's.")

    workdir = Path(tempfile.mkdtemp(prefix="unlearnbench-benchmark-"))
    try:
        with section("setup"):
            bench = Bench(config, r["preset"], device, workdir, args.steps, args.warmup, methods, param_source)
        sink.bench = bench
        report["parameters"], report["image_shape"] = bench.parameters, list(bench.shape)
        report["settings"]["sampler_batch_images"] = bench.sampler_batch
        if device.type == "cuda" and bench.profile["flops_gpu_matmul"]:
            report["gpu"]["measured_bf16_matmul_tflops"] = measured_matmul_tflops(device)
        measured = report["gpu"]["measured_bf16_matmul_tflops"]
        with section("flops"):
            report["flops"] = bench.flops = bench.unet_flops()
        bench.eps_ref = bench.eps_reference()
        save()
        # The ablation varies the bf16 row, so it runs right after it: a time limit then cuts the later rows.
        switches_after = switch_ablation_after(precisions) if run_switches else None
        for precision in precisions:
            priors = measure_precision(bench, sink, precision, methods, peak, measured)
            if precision == switches_after:
                measure_switches(bench, sink, methods, priors, budget, started, peak, measured)
        report["complete"] = not report["errors"]  # every section ran and none failed
    except KeyboardInterrupt:
        report["interrupted"] = True
        report["notes"].append("interrupted (e.g. by timeout): the sections present are complete, the rest missing")
        raise
    finally:
        report["finished"] = _now()
        save()
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            print_report(report)
        if out:
            print(f"\nreport: {out}")
    return report
