"""The harness: the measurements of one benchmark run (each method's unlearning, each of its priors, the evaluation
sampler), on what workload.py makes (synthetic data, a random original model, timed contexts, config variants).

It knows no method by name: what it runs comes from the method files (`unlearn`, `PRIORS`, `DEFAULTS`), and a
prior's projection to the paper's size from its `Prior(work=..., paper_work=...)` (unlearnbench/method_api.py)."""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import torch

from ..acceleration import maybe_compile
from ..checkpoints import load_unet
from ..config import method_params
from ..context import RunContext
from ..cost import CostMeter
from ..data import ImageData
from ..diffusion import Schedule, guided_eps, sample_as_configured
from ..method_api import Prior, load_method, prior_by_name
from ..networks import UNET_PRESETS, predict_eps
from ..settings import Runtime, Settings
from ..training import autocast_dtype, prepare_model, setup_runtime
from .common import NOISY_FIT, TIMING_REPEATS, div, linear_fit, release, stats, sync
from .instruments import RowCounter, StepClock, SyncCounter, count_flops
from .workload import batch_sizes, make_context, published_steps, save_original, synthetic_data, variant_config

PAPER_EVAL = {
    "images_per_job": 5000,
    "sampler_steps": 1000,
    "sampling_jobs": 31,
    "what": "per evaluation job 500 forget-class + 9 x 500 remaining-class images, 1,000 steps; "
    "31 sampling jobs in the main table (30 unlearned models + the original)",
}


# Slice sizes per preset. paper: the methods' batch sizes as published (DEFAULTS), the config's sampler batch.
# method_batch: every `*batch_size` param of a method on the tiny preset. prior_sizes: the two sizes n of each prior's
# benchmark runs (Prior.bench_params(n, ctx); the forgotten class gets n batches of images); 1 and 8 on a CPU, whose
# timing spikes of tens of ms must not swamp the difference of two runs. prior_sampler_steps: the steps of the
# sampler in a prior's runs (a prior's `work` counts them: a step's cost does not depend on how many there are).
PROFILES = {
    "tiny": {
        "method_batch": 16,
        "sampler_batch": 20,
        "sampler_steps": (1, 8),
        "prior_sizes": (1, 8),
        "prior_sampler_steps": 1,
        "per_class": 64,
        "flops_gpu_matmul": False,
    },
    "paper": {
        "method_batch": None,
        "sampler_batch": None,
        "sampler_steps": (1, 4),
        "prior_sizes": (1, 4),
        "prior_sampler_steps": 1,
        "per_class": None,
        "flops_gpu_matmul": True,
    },
}

NO_WORK = (
    "its Prior declares no work (Prior(work=..., paper_work=...)): timed at the benchmark's size, not "
    "projected to the paper's"
)
NO_PAPER_WORK = "its Prior declares no paper_work (its units of work at the paper's size): not projected"
SAME_WORK = (
    "its work did not grow between the benchmark's two sizes: give its Prior bench_params(n, ctx) whose "
    "runs do more work as n grows"
)


class Bench:
    """One benchmark run: shared setup (config, data, original model) and the measurements."""

    def __init__(
        self,
        config: dict,
        preset: str,
        device: torch.device,
        workdir: Path,
        steps: int,
        warmup: int,
        methods: list[str],
        param_source: str,
    ):
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
        biggest = max([b for m in methods for b in batch_sizes(self.params(m))] + [16])
        self.per_class = self.profile["per_class"] or biggest
        self.data = synthetic_data(self.shape, self.per_class)
        self.flops: dict | None = None  # set by main(): unet_flops()
        self.eps_ref: dict | None = None  # set by main(): eps_reference(), what each precision is compared with
        self.rows_per_step: dict[str, dict] = {}
        self.probe_images: dict[str, torch.Tensor] = {}  # sampler() label -> its 3-step images (sampler_numerics)

    # -- parameters
    def params(self, method: str, **overrides) -> dict:
        module = load_method(method)
        if self.param_source == "config":
            params = method_params(self.config, method, module)
        else:
            params = dict(module.DEFAULTS)
            if self.profile["method_batch"]:
                params.update({k: self.profile["method_batch"] for k in params if k.endswith("batch_size")})
        params.update(overrides)
        return params

    # -- FLOPs
    def unet_flops(self) -> dict:
        """Per image: one forward, forward + backward, one guided sampler step (cond + null rows)."""
        model = load_unet(self.original_dir / "unet").to(self.device)
        x = torch.randn(2, *self.shape, device=self.device)
        t = torch.tensor([10, 900], device=self.device)
        y = torch.tensor([1, 2], device=self.device)
        with torch.no_grad():
            fwd = count_flops(lambda: predict_eps(model, x, t, y)) / 2
            guided = count_flops(lambda: guided_eps(model, x, t, y, float(self.config["sampler"]["guidance_w"]))) / 2
        fwd_bwd = count_flops(lambda: predict_eps(model, x, t, y).float().pow(2).mean().backward()) / 2
        model = None  # frees the weights; closures above read the name, which `del` would leave unbound
        return {
            "forward_per_image": fwd,
            "forward_backward_per_image": fwd_bwd,
            "guided_step_per_image": guided,
            "counter": "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add; matmul, conv, "
            "attention; elementwise ops not counted)",
        }

    # -- methods
    def run_method(self, method: str, cfg: dict, priors: dict, steps: int | None = None) -> dict:
        steps = self.steps if steps is None else steps
        module = load_method(method)
        device = setup_runtime(Runtime.parse(cfg))
        total = self.warmup + steps
        params = self.params(method, steps=total)
        clock = StepClock(device)
        rows = RowCounter()
        syncs = SyncCounter(device, watch_steps=range(1, self.warmup))
        release(device)
        with CostMeter(device) as meter:
            ctx = make_context(
                cfg,
                method,
                params,
                self.data,
                device,
                0,
                meter,
                self.original_dir,
                clock=clock,
                rows=rows,
                syncs=syncs,
                forget_class=self.forget_class,
                priors=priors,
            )
            model = module.unlearn(ctx)
        del model, ctx
        cost = meter.result()
        if rows.grad or rows.no_grad:
            self.rows_per_step[method] = {"with_grad": rows.grad / total, "no_grad": rows.no_grad / total}
        per_step_rows = self.rows_per_step.get(method)
        durations = clock.find(total)
        as_measured = max(self.warmup, 1)  # the first step and the other warm-up steps: a job's own times
        if durations is not None:
            step = stats(durations[self.warmup :])
            outside = max(0.0, cost["rte_s"] - sum(durations))
            timing = "per-step marks (CUDA events on GPU, perf_counter on CPU) at the loop's step boundaries"
            first, warm = durations[0], sum(durations[1:as_measured])
        else:  # a method that neither uses ctx.run_steps nor ctx.progress: whole-run mean
            step = stats([cost["rte_s"] / total])
            outside, first, warm = 0.0, None, None
            timing = "whole timed block / steps (the method's loop is not instrumented: no per-step marks)"
        projected_steps = published_steps(module)
        per_step = step["median_s"]  # the steady state; the median is robust to the odd stalled step
        projected_s = per_step * projected_steps + outside if projected_steps and per_step is not None else None
        # A real job's timed loop also pays its cold first step (autotuning, compilation) and its warm-up steps, as
        # measured; cold steps that happened to be faster than the median (timing noise on a CPU) count at the median,
        # so that the job never projects below the steady state.
        job_s = (
            max(first + warm, as_measured * per_step) + max(projected_steps - as_measured, 0) * per_step + outside
            if first is not None and projected_s is not None
            else None
        )
        flops = None
        if per_step_rows and self.flops:
            flops = (
                per_step_rows["with_grad"] * self.flops["forward_backward_per_image"]
                + per_step_rows["no_grad"] * self.flops["forward_per_image"]
            )
        return {
            "method": method,
            "params": params,
            "steps_measured": steps,
            "warmup_steps": self.warmup,
            "timing": timing,
            "step": step,
            "first_step_s": first,
            "timed_outside_steps_s": outside,
            "unet_rows_per_step": per_step_rows,
            "flops_per_step": flops,
            "flops_method": "UNet rows per step (forward pre-hook; with grad = forward + backward) x the counted "
            "FLOPs per row (flops section)",
            "projected_steps": projected_steps,
            "projected_steps_source": "published DEFAULTS" if projected_steps else None,
            "projected_steps_null_reason": None
            if projected_steps
            else "the method's published DEFAULTS have no whole number of steps ('steps')",
            "projection_step_statistic": "median_s",
            "projected_rte_s": projected_s,
            "projected_rte_min": div(projected_s, 60.0),
            "warmup_after_first_s": warm,
            "job_steps_as_measured": as_measured if first is not None else None,
            "projected_job_rte_s": job_s,
            "projected_job_rte_min": div(job_s, 60.0),
            "projected_job_rte_formula": "max(first_step_s + warmup_after_first_s, job_steps_as_measured x "
            "step.median_s) + (projected_steps - job_steps_as_measured) x "
            "step.median_s + timed_outside_steps_s",
            "host_syncs": syncs.result(),
            "cost": cost,
        }

    # -- priors
    def _prior_run(
        self,
        method: str,
        prior_name: str,
        cfg: dict,
        params: dict,
        out_dir: Path,
        *,
        data=None,
        priors=None,
        clock=None,
    ) -> tuple[dict, RunContext]:
        """One run of the real prior code, as `unlearnbench prior` runs it: (its cost, the context it ran with)."""
        prior = prior_by_name(load_method(method), prior_name)
        device = setup_runtime(Runtime.parse(cfg))
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        release(device)
        with CostMeter(device) as meter:
            ctx = make_context(
                cfg,
                method,
                params,
                data or self.data,
                device,
                0,
                meter,
                self.original_dir,
                clock=clock,
                forget_class=self.forget_class,
                priors=priors,
                out_dir=out_dir,
                prior=prior_name,
            )
            prior.run(ctx)
        return meter.result(), ctx

    _linear = staticmethod(linear_fit)

    def prior_config(self, cfg: dict) -> dict:
        """A prior run's config: the benchmark's sampler batch, and few sampler steps (a prior's work counts them)."""
        c = copy.deepcopy(cfg)
        c["sampler"]["batch_size"], c["sampler"]["steps"] = self.sampler_batch, self.profile["prior_sampler_steps"]
        return c

    def prior_slice(self, method: str, prior: Prior, cfg: dict, size: int, priors: dict) -> tuple[ImageData, dict]:
        """The data and params of a prior's benchmark run of size n: the forgotten class has n of the method's
        largest batches of images, and the params are the method's updated by the prior's bench_params(n, ctx)."""
        params = self.params(method)
        data = synthetic_data(
            self.shape,
            self.per_class,
            forget_class=self.forget_class,
            forget_count=size * max(batch_sizes(params) + [1]),
        )
        if prior.bench_params is not None:
            probe = make_context(
                cfg,
                method,
                params,
                data,
                self.device,
                0,
                None,
                self.original_dir,
                forget_class=self.forget_class,
                priors=priors,
                prior=prior.name,
            )
            params = {**params, **prior.bench_params(size, probe)}
        return data, params

    def run_prior(self, method: str, prior: Prior, cfg: dict, tag: str, priors: dict) -> tuple[dict, Path]:
        """One prior of `method` (the folders of the priors it requires in `priors`): a warm-up run, then runs of two
        sizes (each the fastest of TIMING_REPEATS), fitted as fixed + marginal x units of work (Prior.work) and
        projected to the paper's size (Prior.paper_work), the fixed part counted once. A prior that declares no work
        is timed at the first size only. Returns its report entry and the folder of its largest run."""
        cfg = self.prior_config(cfg)
        sizes = self.profile["prior_sizes"] if prior.work is not None else self.profile["prior_sizes"][:1]
        slices = {size: self.prior_slice(method, prior, cfg, size, priors) for size in sizes}
        prefix = f"{method}_{prior.name}_{tag}"
        t0 = time.perf_counter()
        data, params = slices[sizes[0]]
        self._prior_run(method, prior.name, cfg, params, self.workdir / f"{prefix}_warmup", data=data, priors=priors)
        warmup_s = time.perf_counter() - t0  # wall time, job set-up included: where autotuning and cold starts go
        runs, folder = [], None
        base = self.params(method)
        for size in sizes:
            folder = self.workdir / f"{prefix}_{size}"
            data, params = slices[size]
            cost, ctx = min(
                (
                    self._prior_run(method, prior.name, cfg, params, folder, data=data, priors=priors)
                    for _ in range(TIMING_REPEATS)
                ),
                key=lambda run: run[0]["rte_s"],
            )
            runs.append(
                {
                    "size": size,
                    "params": {k: v for k, v in params.items() if base.get(k) != v},
                    "forget_class_images": int((data.train_y == self.forget_class).sum()),
                    "work": float(prior.work(ctx)) if prior.work is not None else None,
                    "rte_s": cost["rte_s"],
                    "repeats": TIMING_REPEATS,
                    "cost": cost,
                }
            )
        entry = {
            "method": method,
            "prior": prior.name,
            "scope": prior.scope,
            "requires": list(prior.requires),
            "units": prior.work_units,
            "paper_units": prior.paper_work,
            "paper_size": prior.paper_size,
            "runs": runs,
            "rte_s": runs[-1]["rte_s"],
            "cost": runs[-1]["cost"],
            "warmup_run_wall_s": warmup_s,
            "per_unit_s": None,
            "fixed_s": None,
            "units_per_s": None,
            "projected_s": None,
            "projected_min": None,
            "null_reason": None,
        }
        if prior.work is None:
            entry["how"] = (
                f"the real prior at the benchmark's size (the fastest of {TIMING_REPEATS}) after a warm-up run"
            )
            entry["null_reason"] = NO_WORK
            return entry, folder
        entry["how"] = (
            f"the real prior at two sizes (bench_params n = {sizes[0]}, {sizes[1]}; the fastest of "
            f"{TIMING_REPEATS} each) after a warm-up run; fixed part = intercept, marginal = slope over "
            "Prior.work's units"
        )
        work = [r["work"] for r in runs]
        if not work[1] > work[0]:
            entry["null_reason"] = SAME_WORK
            return entry, folder
        per_unit, fixed = linear_fit((work[0], work[1]), (runs[0]["rte_s"], runs[1]["rte_s"]))
        if per_unit is None:
            entry["null_reason"] = NOISY_FIT
            return entry, folder
        entry.update(per_unit_s=per_unit, fixed_s=fixed, units_per_s=div(1.0, per_unit))
        if prior.paper_work is None:
            entry["null_reason"] = NO_PAPER_WORK
            return entry, folder
        projected = per_unit * prior.paper_work + max(fixed, 0.0)
        entry.update(projected_s=projected, projected_min=projected / 60.0)
        return entry, folder

    # -- evaluation sampler
    def sampler(
        self, cfg: dict, flops: dict | None, peak: float | None, measured_peak: float | None, label: str | None = None
    ) -> dict:
        """The evaluation sampler's throughput; `label` keeps its 3-step probe images for sampler_numerics."""
        settings = Settings.parse(cfg)
        perf = settings.runtime.performance
        device = setup_runtime(settings.runtime)
        release(device)
        model = maybe_compile(
            prepare_model(load_unet(self.original_dir / "unet_ema"), perf, device), perf, device
        ).eval()
        w = float(settings.sampler.guidance_w)
        dtype = autocast_dtype(perf, device)  # the forward-only timing below uses the sampler's precision
        B = self.sampler_batch
        labels = torch.arange(10).repeat_interleave(B // 10)
        schedule = Schedule.of(settings.diffusion)

        def sample_steps(k: int):
            return sample_as_configured(
                model,
                settings.sampler,
                schedule,
                labels,
                torch.Generator().manual_seed(0),
                device,
                performance=perf,
                steps=k,
                batch_size=B,
            )

        def run(k: int) -> float:
            sync(device)
            start = time.perf_counter()
            sample_steps(k)
            sync(device)
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
        host_syncs = {
            "per_call": counted["per_step"],
            "sampler_steps": probe_steps,
            "batches": 1,
            "expected": "1 per batch: the finished images' copy to the host; none inside the steps",
            "how": "torch.cuda.set_sync_debug_mode('warn') over one untimed sample() call",
            "null_reason": counted["null_reason"],
        }
        t1, t2 = (min(run(k) for _ in range(TIMING_REPEATS)) for k in (k1, k2))
        per_step, fixed = linear_fit((k1, k2), (t1, t2))
        # The bare guided UNet forward, no sampler around it (the upper bound the sampler can reach).
        x = torch.randn(B, *self.shape, device=device)
        if perf.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device)
        t = torch.full((B,), 500, device=device, dtype=torch.long)

        def forward(n: int) -> float:
            sync(device)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for _ in range(n):
                    guided_eps(model, x, t, y, w)
            sync(device)
            return time.perf_counter() - start

        forward(1)
        f1, f2 = (min(forward(k) for _ in range(TIMING_REPEATS)) for k in (k1, k2))
        fwd_per_step, _ = linear_fit((k1, k2), (f1, f2))
        image_steps = div(B, per_step)
        fwd_image_steps = div(B, fwd_per_step)
        per_image_step_flops = flops["guided_step_per_image"] if flops else None
        out = {
            "batch_images": B,
            "unet_rows_per_step": 2 * B if w else B,
            "guidance_w": w,
            "steps_timed": [k1, k2],
            "run_s": [t1, t2],
            "per_step_s": per_step,
            "fixed_s": fixed,
            "null_reason": None if per_step is not None else NOISY_FIT,
            "host_syncs": host_syncs,
            "image_steps_per_s": image_steps,
            "guided_forward": {"per_step_s": fwd_per_step, "image_steps_per_s": fwd_image_steps},
            "sampler_overhead_fraction": div(per_step - fwd_per_step, per_step) if per_step and fwd_per_step else None,
            "achieved_tflops": div(per_image_step_flops * image_steps, 1e12)
            if per_image_step_flops and image_steps
            else None,
            "guided_forward_tflops": div(per_image_step_flops * fwd_image_steps, 1e12)
            if per_image_step_flops and fwd_image_steps
            else None,
        }
        out["fraction_of_bf16_peak"] = div(out["achieved_tflops"], peak)
        out["guided_forward_fraction_of_bf16_peak"] = div(out["guided_forward_tflops"], peak)
        out["fraction_of_measured_matmul"] = div(out["achieved_tflops"], measured_peak)
        units = PAPER_EVAL["images_per_job"] * PAPER_EVAL["sampler_steps"]
        per_job = div(units, image_steps)
        out["projected_eval_sampling_min_per_job"] = div(per_job, 60.0)
        out["projected_eval_sampling_h_all_jobs"] = (
            div(per_job * PAPER_EVAL["sampling_jobs"], 3600.0) if per_job else None
        )
        out["paper_eval"] = PAPER_EVAL["what"]
        model = None  # frees the weights; closures above read the name, which `del` would leave unbound
        return out

    # -- numerics
    def eps_reference(self) -> dict:
        """Strict fp32 eps of the original model on fixed inputs (the reference for the other precisions)."""
        setup_runtime(Runtime.parse(variant_config(self.config, "fp32", {"channels_last": False, "compile": False})))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(16, *self.shape, generator=g)
        t = torch.randint(0, int(self.config["diffusion"]["timesteps"]), (16,), generator=g)
        y = torch.randint(0, 11, (16,), generator=g)
        model = load_unet(self.original_dir / "unet_ema").to(self.device).eval()
        with torch.no_grad():
            eps = predict_eps(model, x.to(self.device), t.to(self.device), y.to(self.device)).float().cpu()
        return {"x": x, "t": t, "y": y, "eps": eps}

    def eps_error(self, cfg: dict, ref: dict) -> float:
        runtime = Runtime.parse(cfg)
        device = setup_runtime(runtime)
        model = prepare_model(load_unet(self.original_dir / "unet_ema"), runtime.performance, device).eval()
        dtype = autocast_dtype(runtime.performance, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            eps = predict_eps(model, ref["x"].to(device), ref["t"].to(device), ref["y"].to(device)).float().cpu()
        return float((eps - ref["eps"]).norm() / ref["eps"].norm())
