"""The report as tables: text on the console, markdown in docs/benchmarks/ (scripts/benchmark_report.py), and the
merging of several runs of one device into one report."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

from ..files import atomic_write_text
from .common import div
from .summary import label, ratio_quantities, report_reference, summarize

ROOT = Path(__file__).resolve().parent.parent.parent


def _fmt(value, digits=2, scale=1.0, pct=False) -> str:
    if value is None:
        return "-"
    value = value * scale
    if pct:
        return f"{100 * value:.1f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value and abs(value) < 10**-digits * 50:  # small: significant digits, not zeros
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def method_rows(report: dict, precision: str) -> list[list[str]]:
    paper = report.get("paper_means", {})
    rows = []
    for m, e in report["runs"][precision].get("methods", {}).items():
        cost = e.get("cost") or {}
        p = paper.get(m, {})
        projected = _fmt(e.get("projected_rte_min"), 2)
        if e.get("projected_rte_min") is None and e.get("projected_steps") is None:
            projected += " (no steps in its published DEFAULTS)"
        rows.append(
            [
                m,
                _fmt(e["step"]["mean_s"], 2, 1000),
                _fmt(e["step"]["median_s"], 2, 1000),
                projected,
                _fmt(e.get("first_step_s"), 2),
                _job_rte(e),
                _fmt(p.get("rte_min"), 2),
                _fmt(cost.get("gpu_peak_gb"), 2),
                _fmt(cost.get("torch_peak_allocated_gb"), 2),
                _fmt(p.get("gpu_gb"), 2),
                _fmt(cost.get("host_rss_peak_gb"), 2),
                _fmt(e.get("achieved_tflops"), 2),
                _fmt(e.get("fraction_of_bf16_peak"), pct=True),
                _fmt((e.get("host_syncs") or {}).get("per_step"), 1),
            ]
        )
    return rows


def _job_rte(entry: dict | None) -> str:
    """The projected job RTE in minutes; runs from before it was recorded: 'not measured'."""
    if not entry:
        return "-"
    return _fmt(entry.get("projected_job_rte_min"), 2) if "projected_job_rte_min" in entry else "not measured"


METHOD_HEADER = [
    "method",
    "ms/step",
    "median ms",
    "proj. RTE min",
    "first step s",
    "proj. job RTE min",
    "paper RTE min",
    "NVML peak GB",
    "torch alloc GB",
    "paper GPU GB",
    "host RSS GB",
    "TFLOP/s",
    "% bf16 peak",
    "host syncs/step",
]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def prior_rows(report: dict, precision: str) -> list[list[str]]:
    rows = []
    for name, e in report["runs"][precision].get("priors", {}).items():
        timed = e.get("rte_s", (e.get("runs") or [{}])[-1].get("rte_s"))
        rows.append(
            [
                name,
                e.get("units") or "-",
                _fmt(e.get("units_per_s"), 1),
                _fmt(e.get("projected_min"), 1)
                if e.get("projected_min") is not None
                else f"- ({e.get('null_reason') or 'not measured'})",
                _fmt(timed, 2),
                _fmt((e.get("cost") or {}).get("gpu_peak_gb"), 2),
                e.get("paper_size") or "-",
            ]
        )
    return rows


PRIOR_HEADER = ["prior", "unit", "units/s", "projected min", "timed s", "NVML peak GB", "paper size"]


def sampler_rows(report: dict) -> list[list[str]]:
    rows = []
    for precision, run in report["runs"].items():
        s = run.get("sampler")
        if s:
            rows.append(
                [
                    precision,
                    str(s["batch_images"]),
                    _fmt(s["image_steps_per_s"], 0)
                    if s["image_steps_per_s"] is not None
                    else f"- ({s.get('null_reason') or 'not measured'})",
                    _fmt(s["guided_forward"]["image_steps_per_s"], 0),
                    _fmt(s.get("sampler_overhead_fraction"), pct=True),
                    _fmt(s.get("achieved_tflops"), 1),
                    _fmt(s.get("fraction_of_bf16_peak"), pct=True),
                    _fmt(s.get("projected_eval_sampling_min_per_job"), 1),
                    _fmt(s.get("projected_eval_sampling_h_all_jobs"), 1),
                    _fmt((s.get("host_syncs") or {}).get("per_call"), 0),
                    _fmt(run.get("eps_rel_error_vs_fp32"), 5) if run.get("eps_rel_error_vs_fp32") is not None else "-",
                ]
            )
    return rows


SAMPLER_HEADER = [
    "precision",
    "batch",
    "image-steps/s",
    "bare fwd image-steps/s",
    "sampler overhead",
    "TFLOP/s",
    "% bf16 peak",
    "min/eval job",
    "h all 31 jobs",
    "host syncs/call",
    "eps rel. err vs fp32",
]


def ratio_rows(report: dict) -> list[list[str]]:
    return [
        [precision, text, _fmt(measured, 1), _fmt(paper, 1)]
        for precision, text, measured, paper in ratio_quantities(report)
    ]


RATIO_HEADER = ["precision", "quantity", "measured", "paper"]


def numerics_rows(report: dict) -> list[list[str]]:
    return [
        [n["row"], n["reference"], f"{n['rel_diff']:.3g}", f"{n['max_abs_diff']:.3g}"]
        for n in report.get("sampler_numerics") or []
    ]


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
        rows.append(
            [
                v["name"],
                _fmt(step, 2, 1000),
                _fmt(div(base[0], step) if base and step else None, 2),
                _fmt(smp, 0),
                _fmt(div(smp, base[1]) if base and smp and base[1] else None, 2),
                _fmt(((v.get("method") or {}).get("cost") or {}).get("gpu_peak_gb"), 2),
                _fmt(((v.get("method") or {}).get("cost") or {}).get("torch_peak_allocated_gb"), 2),
                _fmt((v.get("method") or {}).get("first_step_s"), 1),
                _job_rte(v.get("method")),
                v.get("error") or v.get("note") or "",
            ]
        )
    return rows


def switch_header(report: dict) -> list[str]:
    """The switch ablation's columns; the first names the method it ran."""
    method = label(report, (report.get("switches") or {}).get("method") or "method")
    return [
        "variant",
        f"{method} ms/step",
        "speed-up",
        "sampler image-steps/s",
        "speed-up",
        "NVML peak GB",
        "torch alloc GB",
        "first step s",
        "proj. job RTE min",
        "note",
    ]


def print_report(report: dict, file=sys.stdout) -> None:
    def p(*a):
        print(*a, file=file)

    p(
        f"\nunlearnbench benchmark: preset {report['preset']}, {report['device_name']} ({report['device']}), "
        f"{report['settings']['steps']} steps after {report['settings']['warmup']} warm-up"
    )
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
        p("\nratios (projected to the published DEFAULTS' step counts)")
        p(_text_table(RATIO_HEADER, ratio_rows(report)))
    if numerics_rows(report):
        p("\nsampler numerics (3-step images against the reference row's)")
        p(_text_table(NUMERICS_HEADER, numerics_rows(report)))
    if switch_rows(report):
        method = label(report, report["switches"]["method"])
        p(f"\nswitch ablation ({method} steps and the sampler; each row changes one switch of the bf16 row)")
        p(_text_table(switch_header(report), switch_rows(report)))
    gpu = report.get("gpu") or {}
    p(
        f"\nbf16 dense peak: {gpu.get('bf16_dense_peak_tflops')} TFLOP/s ({gpu.get('peak_source') or gpu.get('peak_null_reason')}); "
        f"measured bf16 matmul: {_fmt(gpu.get('measured_bf16_matmul_tflops'), 1)} TFLOP/s"
    )
    for skipped in report.get("skipped", []):
        p(f"skipped: {skipped['what']}: {skipped['why']}")
    for error in report.get("errors", []):
        p(f"FAILED: {error['section']}: {error['error']}")
    for note in report.get("notes", []):
        p(f"note: {note}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def default_markdown_path(report: dict, root: Path | None = None) -> Path:
    root = root or ROOT
    kind = "gpu" if report.get("device") == "cuda" else "cpu"
    return root / "docs" / "benchmarks" / f"{kind}-{_slug(report.get('device_name', 'device'))}.md"


def render_markdown(report: dict) -> str:
    """docs/benchmarks/<gpu|cpu>-<device>.md from a benchmark JSON report."""
    s = report["settings"]
    v = report.get("versions", {})
    gpu = report.get("gpu") or {}
    lines = [
        f"# Cost benchmark: {report['device_name']}",
        "",
        f"Generated by `scripts/benchmark_report.py` from the JSON of `unlearnbench benchmark` "
        f"(schema {report.get('schema')}). Every number below was measured by "
        f"{'those runs' if report.get('sources') else 'that run'}; nothing is estimated "
        f"except the projections, which are linear in the paper's step counts and sizes.",
        "",
        "| | |",
        "|---|---|",
        f"| device | {report['device_name']} ({report['device']}) |",
        f"| date | {report.get('finished') or report.get('started')} |",
        f"| preset | {report['preset']} ({report.get('parameters', 0) / 1e6:.2f}M parameters, images {report.get('image_shape')}) |",
        f"| steps | {s['steps']} timed after {s['warmup']} warm-up, per method and precision |"
        if not report.get("sources")
        else "| steps | per run, below |",
        f"| method params | {s['param_source']} |",
        "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + " |",
        f"| host | {report.get('host', {}).get('cpu')} ({report.get('host', {}).get('cpu_count')} CPUs) |",
        f"| bf16 dense peak | {gpu.get('bf16_dense_peak_tflops') or '-'} TFLOP/s: "
        f"{gpu.get('peak_source') or gpu.get('peak_null_reason')} |",
        f"| measured bf16 matmul (8192^3) | {_fmt(gpu.get('measured_bf16_matmul_tflops'), 1)} TFLOP/s |",
        f"| complete | {report.get('complete')} |",
        "",
    ]
    if report.get("sources"):
        lines += [
            "Merged from these runs (same code, device and versions); each row below comes from one of them:",
            "",
            _md_table(SOURCE_HEADER, source_rows(report)),
            "",
        ]
    if report["preset"] != "paper":
        lines += ["**Tiny preset: the projections are for the tiny model and NOT comparable with the paper.**", ""]
    lines += [
        "The paper's GPU is not stated: compare ratios with the paper's, not absolute minutes. "
        "Paper columns: Table 1 means over the 10 classes (`unlearnbench/paper_numbers.csv`). "
        "proj. RTE = the steady-state time per step x the steps of the method's published DEFAULTS (the "
        "paper's scale) + the timed block's time outside "
        "the steps (the median step; runs without a job column: the mean). proj. job RTE = what a real job's "
        "timed loop pays: the first step (cuDNN autotuning, compilation) and the other warm-up steps as "
        "measured (together at least the median step's time each), the rest at the median step ('not "
        "measured': a run from before it was recorded). "
        "NVML peak = the process's GPU memory (CUDA context included), the quantity `nvidia-smi` shows; "
        "GB = 1e9 bytes. Host syncs/step: operations per unlearning step that make the host wait for the GPU "
        "(torch's sync debug mode on the warm-up steps after the first); 0 is the goal.",
        "",
    ]
    for precision, run in report["runs"].items():
        lines += [f"## {precision}", "", f"Switches: `{json.dumps(run.get('switches'))}`", ""]
        if run.get("methods"):
            lines += [_md_table(METHOD_HEADER, method_rows(report, precision)), ""]
        if run.get("priors"):
            lines += [
                "Priors, measured on a slice and projected to the paper's size (timed s: the benchmark's larger run):",
                "",
                _md_table(PRIOR_HEADER, prior_rows(report, precision)),
                "",
            ]
    precisions = sorted(report["runs"], key=lambda p: p != "fp32")  # speed-ups against strict fp32
    if len(precisions) > 1:
        header = (
            ["method"]
            + [f"{p} ms/step" for p in precisions]
            + [f"{p} NVML GB" for p in precisions]
            + [f"speed-up {p} vs {precisions[0]}" for p in precisions[1:]]
        )
        rows = []
        for m in report["runs"][precisions[0]].get("methods", {}):
            steps = [report["runs"][p].get("methods", {}).get(m, {}).get("step", {}).get("mean_s") for p in precisions]
            mems = [
                (report["runs"][p].get("methods", {}).get(m, {}).get("cost") or {}).get("gpu_peak_gb")
                for p in precisions
            ]
            rows.append(
                [
                    m,
                    *[_fmt(x, 2, 1000) for x in steps],
                    *[_fmt(x, 2) for x in mems],
                    *[_fmt(div(steps[0], x), 2) for x in steps[1:]],
                ]
            )
        lines += ["## Precisions side by side", "", _md_table(header, rows), ""]
    if sampler_rows(report):
        lines += [
            "## Evaluation sampler",
            "",
            "Guided (w = 2): one image-step = one image advanced one step = 2 UNet rows. "
            "'bare fwd' is the guided UNet forward alone; 'sampler overhead' the share of the sampler's "
            "step time spent outside it. Projections: 5,000 images x 1,000 steps per evaluation job. "
            "Host syncs/call: in one 3-step sample() call of one batch; 1 expected (the images' copy to the host).",
            "",
            _md_table(SAMPLER_HEADER, sampler_rows(report)),
            "",
        ]
    if ratio_rows(report):
        lines += [
            "## Ratios",
            "",
            f"Relative to {label(report, report_reference(report))} (the config's reference_method).",
            "",
            _md_table(RATIO_HEADER, ratio_rows(report)),
            "",
        ]
    if numerics_rows(report):
        lines += [
            "## Sampler numerics",
            "",
            "Each row's 3-step guided sampler images (same seed, labels and batch) "
            "against its reference row's: relative L2 difference and largest absolute difference (pixels "
            "in [-1, 1]). The ablation's `bf16` row repeats the bf16 row: its difference is the run-to-run floor.",
            "",
            _md_table(NUMERICS_HEADER, numerics_rows(report)),
            "",
        ]
    if switch_rows(report):
        method = label(report, report["switches"]["method"])
        lines += [
            "## Switch ablation",
            "",
            f"Each row changes one switch of the bf16 row ({method} unlearning steps, "
            "and the sampler). 'first step' includes compilation and cuDNN autotuning.",
            "",
            _md_table(switch_header(report), switch_rows(report)),
            "",
        ]
    interrupted = [k.removesuffix(" (interrupted)") for k in report.get("section_s", {}) if k.endswith("(interrupted)")]
    if interrupted:
        lines += [
            "## Interrupted",
            "",
            "Cut by the time limit before they finished (no result):",
            "",
            *[f"- {k}" for k in interrupted],
            "",
        ]
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
    schema, device, versions, model, preset or reference method) or that both measured the same precision or a
    switch ablation."""
    if len(reports) == 1:
        return reports[0]
    names = names or [f"run {i + 1}" for i in range(len(reports))]
    order = sorted(range(len(reports)), key=lambda i: reports[i]["started"])  # chronological, whatever the order given
    reports, names = [reports[i] for i in order], [names[i] for i in order]
    first = reports[0]
    for name, r in zip(names[1:], reports[1:]):
        if r.get("schema") != first.get("schema"):
            raise ValueError(
                f"{name} (schema {r.get('schema')}) cannot be merged with {names[0]} (schema "
                f"{first.get('schema')}): reports of different versions of the benchmark hold different "
                "keys; rerun the older one with this code"
            )
        differ = [k for k in MERGE_SAME if r.get(k) != first.get(k)]
        if report_reference(r) != report_reference(first):
            differ.append("reference_method")
        if differ:
            raise ValueError(
                f"{name} cannot be merged with {names[0]}: they differ in {', '.join(differ)} "
                "(merge only runs of the same code, preset and device)"
            )
    merged = copy.deepcopy(first)
    merged.update(
        runs={}, switches=None, skipped=[], errors=[], notes=[], section_s={}, sources=[], sampler_numerics=[]
    )
    for name, r in zip(names, reports):
        for precision, run in r["runs"].items():
            if precision in merged["runs"]:
                raise ValueError(
                    f"precision {precision} is in more than one run ({name} among them): merge runs "
                    "that measured different precisions"
                )
            merged["runs"][precision] = run
        if (r.get("switches") or {}).get("variants"):
            if merged["switches"]:
                raise ValueError(f"{name} and an earlier run both have a switch ablation: merge one of them")
            merged["switches"] = r["switches"]
        merged["labels"] = {**r.get("labels", {}), **merged.get("labels", {})}
        merged["skipped"] += r.get("skipped", [])
        merged["sampler_numerics"] += r.get("sampler_numerics") or []
        merged["errors"] += r.get("errors", [])
        merged["notes"] += [n for n in r.get("notes", []) if n not in merged["notes"]]
        merged["section_s"].update({f"{name}: {k}": v for k, v in r.get("section_s", {}).items()})
        merged["sources"].append(
            {
                "name": name,
                "precisions": list(r["runs"]),
                "switch_ablation": bool((r.get("switches") or {}).get("variants")),
                "steps": r["settings"]["steps"],
                "warmup": r["settings"]["warmup"],
                "started": r.get("started"),
                "finished": r.get("finished"),
                "complete": r.get("complete"),
                "interrupted": r.get("interrupted"),
                "measured_bf16_matmul_tflops": (r.get("gpu") or {}).get("measured_bf16_matmul_tflops"),
                "command": r["settings"].get("command"),
            }
        )
    if not merged["labels"]:
        del merged["labels"]  # reports from before labels were recorded: the method files name the methods
    merged["complete"] = all(r.get("complete") for r in reports)
    merged["interrupted"] = any(r.get("interrupted") for r in reports)
    merged["started"] = min(r["started"] for r in reports)
    merged["finished"] = max((r.get("finished") or r["started"]) for r in reports)
    merged["summary"] = summarize(
        merged["runs"], merged["paper_means"], report_reference(merged), merged.get("paper_forget_classes")
    )
    return merged


def source_rows(report: dict) -> list[list[str]]:
    return [
        [
            s["name"],
            ", ".join(s["precisions"]) + (" + switch ablation" if s["switch_ablation"] else ""),
            f"{s['steps']} after {s['warmup']}",
            f"{s['started']} .. {s['finished']}",
            "interrupted (timeout)" if s["interrupted"] else ("complete" if s["complete"] else "incomplete"),
            _fmt(s.get("measured_bf16_matmul_tflops"), 1),
        ]
        for s in report.get("sources", [])
    ]


SOURCE_HEADER = ["run", "rows", "timed steps after warm-up", "UTC", "state", "bf16 matmul TFLOP/s"]


def write_markdown(report_paths, out=None) -> Path:
    """The markdown of one benchmark JSON, or of several merged (merge_reports)."""
    paths = [report_paths] if isinstance(report_paths, (str, Path)) else list(report_paths)
    report = merge_reports([json.loads(Path(p).read_text()) for p in paths], [Path(p).name for p in paths])
    out = Path(out) if out else default_markdown_path(report)
    atomic_write_text(out, render_markdown(report))
    return out
