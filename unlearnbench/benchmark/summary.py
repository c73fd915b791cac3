"""The ratios of each method to the config's reference method (`reference_method`), beside the paper's: RTE,
RTE with the method's priors (as the paper counts them: all on one class; and amortised, the shared ones divided
among the forget classes), GPU memory saved. Keys are built from the methods' names at run time, e.g.
`rte_<method>_over_<reference>`; the tables' words come from the method files' DISPLAY_NAMEs."""

from __future__ import annotations

from ..config import DEFAULT_CONFIG, read_yaml
from ..method_api import load_method, method_label, methods_dir, prior_by_name
from ..report import RTE_WITH_PRIORS_RATIO, load_paper_numbers, paper_claims
from .common import div


def paper_means() -> dict:
    """The paper's Table 1 means per method: rte_min, gpu_gb, fid."""
    df = load_paper_numbers()
    return {m: {k: float(g[k].mean()) for k in ("rte_min", "gpu_gb", "fid")} for m, g in df.groupby("method")}


def paper_forget_classes() -> int:
    """The forget classes of the paper's table, which share a method's shared priors."""
    return int(load_paper_numbers()["forget_class"].nunique())


def report_reference(report: dict) -> str | None:
    """The method a report's ratios are relative to: its run's config's reference_method. Reports of schema 1
    predate the key: their ratios were to the default config's."""
    settings = report.get("settings") or {}
    if "reference_method" in settings:
        return settings["reference_method"]
    return read_yaml(DEFAULT_CONFIG).get("reference_method")


def label(report: dict, method: str) -> str:
    """What the tables call a method: the DISPLAY_NAME the run recorded, else its method file's, else its name."""
    return (report.get("labels") or {}).get(method) or method_label(method)


def _prior_scope(key: str, entry: dict) -> str | None:
    """'shared' or 'per_class': recorded by the run; for older reports, from the method file if it is there."""
    if entry.get("scope"):
        return entry["scope"]
    method, _, name = key.partition(".")
    try:
        if (methods_dir() / f"{method}.py").exists():
            return prior_by_name(load_method(method), name).scope
    except Exception:  # a file changed since the run: the scope stays unknown (its priors are not amortised)
        return None
    return None


def method_priors(run: dict, method: str) -> tuple[dict, dict]:
    """({prior key: entry} of a method in one precision row, {prior key: scope}); a key is '<method>.<prior>'."""
    entries = {k: e for k, e in (run.get("priors") or {}).items() if k.partition(".")[0] == method}
    return entries, {k: _prior_scope(k, e) for k, e in entries.items()}


def summarize(runs: dict, paper: dict, reference: str | None = None, classes: int | None = None) -> dict:
    """Ratios per precision, beside the paper's; none without a reference method among the measured ones."""
    classes = classes or paper_forget_classes()
    claims = paper_claims(reference) if reference else {}
    p_rte = {m: v["rte_min"] for m, v in paper.items()}
    p_gpu = {m: v["gpu_gb"] for m, v in paper.items()}
    out = {}
    for precision, run in runs.items():
        methods = run.get("methods", {})
        s = {}
        out[precision] = s
        if reference not in methods:
            continue
        rte = {m: e.get("projected_rte_min") for m, e in methods.items()}
        mem = {m: (e.get("cost") or {}).get("gpu_peak_gb") for m, e in methods.items()}
        alloc = {m: (e.get("cost") or {}).get("torch_peak_allocated_gb") for m, e in methods.items()}
        ref = reference
        for m in methods:
            if m == ref:
                continue
            s[f"rte_{m}_over_{ref}"] = div(rte[m], rte[ref])
            s[f"paper_rte_{m}_over_{ref}"] = div(p_rte.get(m), p_rte.get(ref))
            saving = div(mem.get(ref), mem.get(m))
            s[f"gpu_saving_{ref}_vs_{m}_pct"] = None if saving is None else 100 * (1 - saving)
            a = div(alloc.get(ref), alloc.get(m))
            s[f"torch_alloc_saving_{ref}_vs_{m}_pct"] = None if a is None else 100 * (1 - a)
            ps = div(p_gpu.get(ref), p_gpu.get(m))
            s[f"paper_gpu_saving_{ref}_vs_{m}_pct"] = None if ps is None else 100 * (1 - ps)
            entries, scopes = method_priors(run, m)
            minutes = [e.get("projected_min") for e in entries.values()]
            if not entries or None in minutes or rte[m] is None:
                continue
            shared = sum(e["projected_min"] for k, e in entries.items() if scopes[k] == "shared")
            s[f"{m}_priors_projected_min"] = sum(minutes)
            s[f"rte_{m}_with_priors_over_{ref}"] = div(rte[m] + sum(minutes), rte[ref])
            s[f"paper_rte_{m}_with_priors_over_{ref}"] = claims.get((m, RTE_WITH_PRIORS_RATIO))
            if any(scope == "shared" for scope in scopes.values()):
                # The shared priors serve every forget class: above charged to one class (as the paper counts
                # them), here amortised over the classes that share them.
                s[f"{m}_priors_shared_by_classes"] = classes
                s[f"rte_{m}_with_amortised_priors_over_{ref}"] = div(
                    rte[m] + sum(minutes) - shared + shared / classes, rte[ref]
                )
    return out


def ratio_quantities(report: dict) -> list[list]:
    """[precision, quantity, measured, paper] per ratio of report["summary"] (numbers: the tables format them)."""
    ref = report_reference(report)
    rows = []
    for precision, s in (report.get("summary") or {}).items():
        if not s or ref is None:
            continue
        run = report["runs"].get(precision, {})
        others = [m for m in run.get("methods", {}) if m != ref]
        R = label(report, ref)
        quantities = [
            (f"rte_{m}_over_{ref}", f"RTE {label(report, m)} / {R}", f"paper_rte_{m}_over_{ref}") for m in others
        ]
        for m in others:
            entries, scopes = method_priors(run, m)
            A, names = label(report, m), " + ".join(k.partition(".")[2] for k in entries)
            shared = [k.partition(".")[2] for k, scope in scopes.items() if scope == "shared"]
            n = s.get(f"{m}_priors_shared_by_classes")
            once = (
                ""
                if not shared
                else f": computed once, shared by the {n} classes"
                if len(shared) == len(scopes)
                else f": {' + '.join(shared)} computed once, shared by the {n} classes"
            )
            amortised = (
                f"RTE ({A} + priors / {n}) / {R}: priors amortised over the {n} classes"
                if len(shared) == len(scopes)
                else f"RTE ({A} + priors, shared ones / {n}) / {R}: shared priors amortised over the {n} classes"
            )
            quantities += [
                (f"{m}_priors_projected_min", f"{A} priors ({names}), min{once}", None),
                (
                    f"rte_{m}_with_priors_over_{ref}",
                    f"RTE ({A} + priors) / {R}: all priors charged to one class (the paper's count)",
                    f"paper_rte_{m}_with_priors_over_{ref}",
                ),
                (f"rte_{m}_with_amortised_priors_over_{ref}", amortised, None),
            ]
        quantities += [
            (
                f"gpu_saving_{ref}_vs_{m}_pct",
                f"GPU memory saved by {R} vs {label(report, m)} (NVML) %",
                f"paper_gpu_saving_{ref}_vs_{m}_pct",
            )
            for m in others
        ]
        quantities += [
            (
                f"torch_alloc_saving_{ref}_vs_{m}_pct",
                f"torch peak alloc saved vs {label(report, m)} %",
                f"paper_gpu_saving_{ref}_vs_{m}_pct",
            )
            for m in others
        ]
        rows += [
            [precision, text, s.get(key), s.get(paper_key) if paper_key else None]
            for key, text, paper_key in quantities
            if key in s
        ]
    return rows
