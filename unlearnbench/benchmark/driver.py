"""The `unlearnbench benchmark` command: its arguments, the report filled section by section (a time limit keeps
what finished), each precision row (every method right after its own priors), the switch ablation, and main()."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ..acceleration import effective_switches
from ..config import ROOT, load_config
from ..cost import device_name
from ..errors import UserError
from ..method_api import load_method
from ..settings import Runtime
from ..stages import versions
from ..training import setup_runtime
from .common import SCHEMA, div, now, write_json_atomic
from .harness import PROFILES, Bench
from .instruments import bf16_peak_tflops, measured_matmul_tflops
from .render import print_report
from .summary import paper_forget_classes, paper_means, report_reference, summarize
from .workload import PRECISIONS, priors_in_order, variant_config

# Switch ablation (GPU): each row changes one switch of the bf16 row.
SWITCH_VARIANTS = (  # compile second: the most informative row, and the slowest (a time budget may cut the rest)
    ("bf16", {}),
    ("bf16 + compile", {"compile": True}),
    ("bf16, channels_last off", {"channels_last": False}),
    ("bf16, deterministic on", {"deterministic": True}),
)


def _resolve_args(args) -> dict:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    preset = args.preset or ("paper" if cuda else "tiny")
    if preset not in PROFILES:
        raise UserError(f"--preset {preset!r} is not a preset; allowed: {', '.join(PROFILES)}")
    precisions = list(args.precision or (["fp32", "bf16"] if cuda else ["fp32"]))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"--precision {' '.join(bad)} is not allowed; allowed: {', '.join(PRECISIONS)}")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    return {"cuda": cuda, "preset": preset, "precisions": list(dict.fromkeys(precisions))}


def build_config(args, preset: str) -> tuple[dict, str, str | None]:
    """(config, where method params come from, config file used)."""
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


def run_order(methods: list[str], reference: str | None) -> list[str]:
    """The config's methods in the order a time limit hurts least: the reference first (every ratio needs it), then
    those with fewer priors (the costlier sections come last); otherwise as the config lists them."""
    return sorted(methods, key=lambda m: (m != reference, len(load_method(m).PRIORS)))


def chosen_methods(args, config: dict) -> list[str]:
    """--methods as given, else the config's methods in run_order."""
    if args.methods:
        return list(dict.fromkeys(args.methods))
    return run_order(list(dict.fromkeys(config["methods"])), config.get("reference_method"))


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
        self.report["summary"] = summarize(
            self.report["runs"],
            self.report["paper_means"],
            report_reference(self.report),
            self.report["paper_forget_classes"],
        )
        if self.bench is not None:
            self.report["sampler_numerics"] = sampler_numerics(self.bench.probe_images)
        if self.out:
            write_json_atomic(self.out, self.report)


def flops_entry(entry: dict, peak: float | None, measured_peak: float | None) -> None:
    per_step = entry["step"]["mean_s"]
    flops_per_step = entry.get("flops_per_step")
    entry["achieved_tflops"] = div(flops_per_step, per_step * 1e12) if flops_per_step and per_step else None
    entry["fraction_of_bf16_peak"] = div(entry["achieved_tflops"], peak)
    entry["fraction_of_measured_matmul"] = div(entry["achieved_tflops"], measured_peak)


def measure_precision(bench: Bench, sink: ReportSink, precision: str, methods: list[str], peak, measured) -> dict:
    """One precision's row: each method's priors (in the order they require each other) and unlearning, then the
    sampler. Returns {method: {prior name: folder}}."""
    cfg = variant_config(bench.config, precision)
    run = sink.report["runs"][precision] = {"switches": None, "methods": {}, "priors": {}, "sampler": None}
    runtime = Runtime.parse(cfg)
    run["switches"] = effective_switches(runtime, setup_runtime(runtime))
    run["eps_rel_error_vs_fp32"] = bench.eps_error(cfg, bench.eps_ref)
    # Each method right after its own priors: a time limit cuts the later ones.
    folders: dict[str, dict] = {m: {} for m in methods}
    for m in methods:
        ok = True
        for prior in priors_in_order(load_method(m)):
            key = f"{m}.{prior.name}"
            got = sink.attempt(
                f"{precision} {key}", lambda: bench.run_prior(m, prior, cfg, precision, dict(folders[m]))
            )
            if got is None:
                ok = False
                break
            run["priors"][key], folders[m][prior.name] = got
            sink.save()
        if not ok:
            sink.report["skipped"].append({"what": f"{precision} {m}", "why": "its prior failed (see errors)"})
            sink.save()
            continue
        entry = sink.attempt(f"{precision} {m}", lambda: bench.run_method(m, cfg, folders[m]))
        if entry is not None:
            flops_entry(entry, peak, measured)
            run["methods"][m] = entry
        sink.save()
    run["sampler"] = sink.attempt(
        f"{precision} sampler", lambda: bench.sampler(cfg, bench.flops, peak, measured, label=precision)
    )
    sink.save()
    return folders


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
        out.append(
            {
                "row": name,
                "reference": ref,
                "rel_diff": float((images - base).norm() / base.norm()),
                "max_abs_diff": float((images - base).abs().max()),
            }
        )
    return out


def switch_ablation_after(precisions: list[str]) -> str:
    """The precision row after which the switch ablation runs: bf16's (the ablation changes one switch of it),
    else the last row."""
    return "bf16" if "bf16" in precisions else precisions[-1]


def measure_switches(
    bench: Bench, sink: ReportSink, methods: list[str], priors: dict, budget, started: float, peak, measured
) -> None:
    """The switch ablation (GPU): one method (the reference, else the first) and the sampler per SWITCH_VARIANTS
    row, each one switch off the bf16 row; a row that fails is kept with its error (also in report["errors"]: the
    run is then incomplete), and rows past the time budget are listed as skipped."""
    report = sink.report
    reference = report_reference(report)
    sw_method = reference if reference in methods else methods[0]
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
            runtime = Runtime.parse(cfg)
            entry["switches"] = effective_switches(runtime, setup_runtime(runtime))
            with sink.section(f"switch {label} method"):
                entry["method"] = bench.run_method(sw_method, cfg, sw_priors)
            flops_entry(entry["method"], peak, measured)
            with sink.section(f"switch {label} sampler"):
                entry["sampler"] = bench.sampler(cfg, bench.flops, peak, measured, label=f"switch {label}")
        except Exception as exc:  # one variant failing (e.g. compilation) must not lose the others
            entry["error"] = sink.record_error(f"switch {label}", exc)
        except KeyboardInterrupt:
            entry["error"] = "interrupted (timeout) before this row finished"
            raise
        sink.save()


def _versions(device: torch.device) -> dict:
    out = versions()
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["nvidia_driver"] = None
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            import pynvml  # lazy: optional (NVML bindings), and only on a GPU

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            out["nvidia_driver"] = driver.decode() if isinstance(driver, bytes) else driver
            pynvml.nvmlShutdown()
    return out


def _new_report(
    args, r: dict, config: dict, config_path, param_source: str, device, methods, budget, run_switches: bool
) -> dict:
    name = device_name(device)
    peak, peak_why = bf16_peak_tflops(device, name)
    return {
        "schema": SCHEMA,
        "started": now(),
        "finished": None,
        "complete": False,
        "interrupted": False,
        "preset": r["preset"],
        "device": device.type,
        "device_name": name,
        "host": {
            "cpu": device_name("cpu"),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "versions": _versions(device),
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "methods": methods,
            "precisions": r["precisions"],
            "reference_method": config.get("reference_method"),
            "config": config_path,
            "param_source": "config method_params"
            if param_source == "config"
            else "methods' DEFAULTS (the paper's values)" + (", tiny batches" if r["preset"] == "tiny" else ""),
            "budget_s": budget,
            "switch_ablation": run_switches,
            "command": " ".join(sys.argv),
        },
        "labels": {m: load_method(m).DISPLAY_NAME for m in methods},
        "gpu": {
            "bf16_dense_peak_tflops": peak,
            "peak_source": peak_why if peak else None,
            "peak_null_reason": None if peak else peak_why,
            "measured_bf16_matmul_tflops": None,
        },
        "paper_means": paper_means(),
        "paper_forget_classes": paper_forget_classes(),
        "runs": {},
        "summary": {},
        "switches": None,
        "skipped": [],
        "errors": [],
        "notes": [],
        "section_s": {},
        "sampler_numerics": [],
    }


def main(args) -> dict:
    """Entry point of `unlearnbench benchmark` (its parser in cli.py names the args)."""
    os.environ.setdefault("UNLEARNBENCH_QUIET", "1")
    r = _resolve_args(args)
    config, param_source, config_path = build_config(args, r["preset"])
    device = setup_runtime(Runtime.parse(config))
    budget = args.budget_s or float(os.environ.get("UNLEARNBENCH_BENCHMARK_BUDGET_S", 0) or 0) or None
    run_switches = device.type == "cuda" if args.switches is None else args.switches
    methods = chosen_methods(args, config)
    for m in methods:
        load_method(m)  # an unknown method fails before anything runs
    started = time.perf_counter()
    report = _new_report(args, r, config, config_path, param_source, device, methods, budget, run_switches)
    peak = report["gpu"]["bf16_dense_peak_tflops"]
    out = Path(args.out) if args.out else None
    sink = ReportSink(report, out, started)
    section, save = sink.section, sink.save

    precisions = r["precisions"]
    if device.type != "cuda":
        for p in [p for p in precisions if p != "fp32"]:
            report["skipped"].append(
                {
                    "what": f"precision {p}",
                    "why": "no CUDA device: the performance switches "
                    "(bf16 autocast, TF32) have no effect on CPU, so the row would repeat fp32",
                }
            )
        precisions = ["fp32"]
        report["notes"].append("GPU fields are null on CPU (see each cost's gpu_null_reason and gpu.peak_null_reason).")
    reference = config.get("reference_method")
    if reference not in methods:
        report["notes"].append(
            f"no ratios: the reference method ({reference or 'none'}: the config's "
            "reference_method) is not among the methods run"
        )
    report["notes"].append(
        "The priors' UNet passes autocast as the method files' code enters it (ctx.autocast, the "
        "sampler): the bf16 rows run them in bf16, with fp32 weights, gradients and accumulators."
    )
    report["notes"].append("Synthetic data and a randomly initialised UNet: costs only (no metric is meaningful).")
    report["notes"].append(
        "first_step_s and projected_job_rte_min: one process runs every section, so cuDNN's "
        "autotuning results and torch.compile's caches carry over from the sections before (the "
        "first method of a precision row pays them most fully); a real job, a process of its own, "
        "pays them every time, so a later method's job RTE can be below a job's."
    )

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
            folders = measure_precision(bench, sink, precision, methods, peak, measured)
            if precision == switches_after:
                measure_switches(bench, sink, methods, folders, budget, started, peak, measured)
        report["complete"] = not report["errors"]  # every section ran and none failed
    except KeyboardInterrupt:
        report["interrupted"] = True
        report["notes"].append("interrupted (e.g. by timeout): the sections present are complete, the rest missing")
        raise
    finally:
        report["finished"] = now()
        save()
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            print_report(report)
        if out:
            print(f"\nreport: {out}")
    return report
