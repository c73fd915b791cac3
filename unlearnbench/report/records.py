"""The metrics records and what every report shares: the table metrics, metrics.csv (one row per job's record,
its columns declared here), the paper's numbers, claims and ablation (data files beside this package)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ..checkpoints import read_json
from ..errors import UserError
from ..files import atomic_output
from ..method_api import method_label

display_name = method_label  # a method file's DISPLAY_NAME


class Metric(NamedTuple):
    """A table column: its label, its record column, its paper_numbers.csv column, precision, direction."""

    label: str
    column: str
    paper_column: str
    decimals: int
    lower_is_better: bool


FID = Metric("FID", "fid", "fid", 2, True)
RTE = Metric("RTE [min]", "rte_min", "rte_min", 3, True)
GPU = Metric("GPU [GB]", "gpu_peak_gb", "gpu_gb", 2, True)
ENTROPY = Metric("H [nats]", "H", "H", 3, False)
UA = Metric("UA [%]", "UA", "UA", 2, False)
METRICS = (FID, RTE, GPU, ENTROPY, UA)
# Not in the paper's tables: the share of the remaining classes' samples the evaluator recognises (a model that
# forgets by collapsing every class shows here, where guidance can hide it from FID).
REMAINING = Metric("Remaining recognised [%]", "remaining_acc", "", 1, False)
TABLE1_METRICS = (FID, RTE, GPU)
TABLE2_METRICS = (ENTROPY, UA)

RECORD_COLUMNS = [
    "method",
    "variant",
    "forget_class",
    "seed",
    "fid",
    "kid",
    "H",
    "UA",
    "forget_prob",
    "remaining_acc",
    "rte_min",
    "prior_min",
    "prior_shared_min",
    "gpu_peak_gb",
    "gpu_peak_source",
    "gpu_null_reason",
    "torch_peak_allocated_gb",
    "host_rss_peak_gb",
    "device_name",
    "speed_switches",
    "imported_from",
    "params",
    "param_origins",  # JSON: the effective params of what ran, and where each non-published value came from
]
_REQUIRED = ("method", "forget_class", "seed")
_IDENTITY = ["method", "variant", "forget_class", "seed"]
# Every evaluation writes these, and every unlearning job its RTE: a record without one is broken, and a mean
# taken without it would silently cover fewer classes or seeds than the others.
_MEASURED = ("fid", "H", "UA")
_TOP_LEVEL = ("fid", "kid", "H", "UA", "forget_prob", "remaining_acc", "prior_min", "prior_shared_min", "imported_from")
_JSON = ("params", "param_origins")  # kept whole, as JSON text in one cell each
_FROM_COST = (
    "rte_min",
    "gpu_peak_gb",
    "gpu_peak_source",
    "gpu_null_reason",
    "torch_peak_allocated_gb",
    "host_rss_peak_gb",
    "device_name",
    "speed_switches",
)
_NUMERIC = (
    "fid",
    "kid",
    "H",
    "UA",
    "forget_prob",
    "remaining_acc",
    "rte_min",
    "prior_min",
    "prior_shared_min",
    "gpu_peak_gb",
    "torch_peak_allocated_gb",
    "host_rss_peak_gb",
)

# The ratios of a method to the comparison's reference (config `reference_method`), as comparison.md labels them:
# "{reference}" is the reference's display name.
RTE_RATIO = "RTE / {reference} RTE [x]"
RTE_WITH_PRIORS_RATIO = "(RTE + priors) / {reference} RTE [x]"  # as the paper counts: all shared priors on one class
RTE_WITH_AMORTISED_PRIORS_RATIO = "(RTE + priors, shared ones / classes) / {reference} RTE [x]"
GPU_RATIO = "GPU / {reference} GPU [x]"
GPU_SAVING = "{reference} GPU saving [%]"
# paper_claims.csv's names of the quantities the poster states a headline figure for
CLAIMED_QUANTITIES = {"rte_ratio": RTE_RATIO, "rte_with_priors_ratio": RTE_WITH_PRIORS_RATIO, "gpu_saving": GPU_SAVING}


def method_order(methods: Sequence[str] = ()):
    """A sort key: the original first, then `methods` in their order (the config's: the tables' columns follow
    it), then any other method by name."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(["original", *methods]))}
    return lambda method: (rank.get(method, len(rank)), method)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------------------- files


def _write_text(path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_paper_numbers() -> pd.DataFrame:
    """The paper's Tables 1 and 2 as tidy rows (method, forget_class, fid, rte_min, gpu_gb, H, UA)."""
    with resources.files("unlearnbench").joinpath("paper_numbers.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_claims(reference: str | None) -> dict[tuple[str, str], float]:
    """The poster's headline figures (paper_claims.csv) relative to `reference`: {(method, quantity label): value}."""
    with resources.files("unlearnbench").joinpath("paper_claims.csv").open("r", encoding="utf-8") as f:
        claims = pd.read_csv(f)
    return {
        (row.method, CLAIMED_QUANTITIES[row.quantity]): float(row.claim)
        for row in claims.itertuples(index=False)
        if row.reference == reference
    }


def load_paper_ablation() -> pd.DataFrame:
    """The paper's ablations (paper_ablation.csv): method, param, forget_class, value, UA, fid (NaN: not reported)."""
    with resources.files("unlearnbench").joinpath("paper_ablation.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_errata() -> str:
    """What the paper's printed summary cells get wrong against its per-class numbers (paper_errata.txt)."""
    return resources.files("unlearnbench").joinpath("paper_errata.txt").read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------------------- metrics.csv


def _flatten_record(record: Mapping, source) -> dict:
    """One tidy row from one metrics record. Identity keys and the measured metrics are mandatory, numbers must
    be numbers; optional values (GPU memory on a CPU, priors) may be missing and become NaN."""
    missing = [key for key in _REQUIRED if record.get(key) is None]
    if missing:
        raise UserError(f"metrics record {source} lacks {', '.join(missing)}")
    try:
        row = {
            "method": str(record["method"]),
            "variant": str(record.get("variant") or record["method"]),
            "forget_class": int(record["forget_class"]),
            "seed": int(record["seed"]),
        }
    except (TypeError, ValueError) as err:
        raise UserError(f"metrics record {source}: forget_class and seed must be integers ({err})") from None
    cost = record.get("cost") or {}
    provenance = record.get("provenance") or {}
    row.update({key: record.get(key) for key in _TOP_LEVEL})
    row.update({key: cost.get(key) for key in _FROM_COST})
    row.update({key: None if record.get(key) is None else json.dumps(record[key], sort_keys=True) for key in _JSON})
    if row["rte_min"] is None and cost.get("rte_s") is not None:
        row["rte_min"] = cost["rte_s"] / 60.0
    if row["device_name"] is None:
        row["device_name"] = provenance.get("device_name")
    for key in _NUMERIC:
        if row[key] is not None:
            try:
                row[key] = float(row[key])
            except (TypeError, ValueError):
                raise UserError(f"metrics record {source}: {key!r} = {row[key]!r} is not a number") from None
    absent = [key for key in _MEASURED if _is_missing(row[key])]
    if row["method"] != "original" and not row["imported_from"] and _is_missing(row["rte_min"]):
        absent.append("rte_min")
    if absent:
        raise UserError(
            f"metrics record {source} has no value for {', '.join(absent)}: the job that wrote it did "
            "not finish measuring; delete the record and rerun the workflow, which redoes it"
        )
    for key, value in provenance.items():
        if key == "versions" and isinstance(value, Mapping):
            row.update({f"version_{pkg}": version for pkg, version in value.items()})
            continue
        name = f"provenance_{key}" if key in RECORD_COLUMNS else key  # e.g. provenance's own seed
        row[name] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return row


def collect_records(paths: Iterable, methods: Sequence[str] = ()) -> pd.DataFrame:
    """Per-job metrics JSON records -> one tidy row each, in method (method_order(methods)), variant, class, seed
    order."""

    rows, sources = [], {}
    for path in paths:
        row = _flatten_record(read_json(path), path)
        # A model scored at another guidance weight (the sweep) is another measurement, not a second copy.
        key = tuple(row.get(k) for k in (*_IDENTITY, "guidance_w"))
        if key in sources:  # averaged in, it would weigh one job twice (or mix two runs' results)
            raise UserError(
                f"two metrics records of {dict(zip(_IDENTITY, key))}: {sources[key]} and {path}; "
                "pass each job's record once, from one run"
            )
        sources[key] = path
        rows.append(row)
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in RECORD_COLUMNS))
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS + extra)
    for column in _NUMERIC:
        df[column] = df[column].astype(float)
    if df.empty:
        return df
    key = method_order(methods)
    order = pd.DataFrame({"rank": df["method"].map(lambda m: key(m)[0]), "side": df["variant"] != df["method"]})
    df = pd.concat([order, df], axis=1)
    df = df.sort_values(["rank", "method", "side", "variant", "forget_class", "seed"], kind="stable")
    return df.drop(columns=["rank", "side"]).reset_index(drop=True)


def check_coverage(df: pd.DataFrame, methods: Sequence[str], classes: Sequence[int], seeds: Sequence[int]) -> None:
    """The main records must be exactly methods x classes x seeds: a table of other classes or seeds than the
    config's, or of fewer, would read like the configured one."""
    main = df[df["variant"] == df["method"]]
    have = set(zip(main["method"], main["forget_class"].astype(int), main["seed"].astype(int)))
    want = {(m, int(c), int(s)) for m in methods for c in classes for s in seeds}
    for problem, keys in (
        ("no record", want - have),
        ("a record outside the config's methods, forget_classes and seeds", have - want),
    ):
        if keys:
            listed = ", ".join(f"{m} class {c} seed {s}" for m, c, s in sorted(keys)[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            raise UserError(
                f"{problem} for {listed}{more}; the tables need one record per method, forgotten class "
                "and seed of the config (the workflow's aggregate rule passes exactly these)"
            )


def write_metrics_csv(df: pd.DataFrame, path) -> None:
    """Write metrics.csv atomically (NaN as empty cells)."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)


# ---------------------------------------------------------------------------- history


def history_snapshots(history) -> list[Path]:
    """The copies keep_history made in `history`, oldest first: only those (history/ also holds the ablation's and
    the guidance sweep's folders), in time order (a name has whole seconds: copies within one second are told
    apart by their folders' mtimes)."""

    copies = [p for p in Path(history).glob("*") if p.is_dir() and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", p.name)]
    return sorted(copies, key=lambda p: (p.name[:16], p.stat().st_mtime_ns))


def keep_history(out_dir, names: Sequence[str], folder: str = "history") -> Path | None:
    """A copy of the tables `names` (the first is the one compared) in <out_dir>/<folder>/<UTC time>-<digest of the
    first>/, unless the latest copy has the same first table. Snakemake deletes a job's outputs before redoing it, so
    a rerun after a config change under the same run_name would otherwise leave no trace of the tables it replaced;
    these copies are no job's outputs, so Snakemake never deletes them. Returns the new copy's folder (None if the
    first table is unchanged)."""
    out_dir = Path(out_dir)
    key = (out_dir / names[0]).read_bytes()
    history = out_dir / folder
    earlier = history_snapshots(history)
    if earlier and (earlier[-1] / names[0]).is_file() and (earlier[-1] / names[0]).read_bytes() == key:
        return None
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{hashlib.sha256(key).hexdigest()[:8]}"
    tmp = history / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in names:
        shutil.copy(out_dir / file, tmp / file)
    os.replace(tmp, history / name)  # whole, or not at all
    return history / name
