"""The robustness report (config `robustness`, rules/robustness.smk): robustness.csv and robustness.md from the
score records (the forgotten class under every evaluator, its distance to the real class), the attack records
(relearning, resurgence, partial diffusion) and the main metrics records of the methods and Retrain.

The modules: this one reads and checks the records and makes robustness.csv's rows; robustness_md.py renders
robustness.md from them; report/__init__.py's aggregate_robustness is the job that writes both.

robustness.csv is tidy: one row per model, forgotten class, seed and attack point. A unit's own row has attack
"none" (its generations as evaluated); every row also carries the unit's columns (every evaluator's verdicts, the
distance to the real class, the main record's FID on the remaining classes, the attack summary). A relearning that
did not bring the class back within the budget is `inf` steps; a unit that was not attacked has empty attack cells.
A row's own values (ua, ua_noise_aware, no_class_share: on an attack row, the point's) take precedence over a unit
column of the same name: the noise-aware evaluator named `noise_aware` has its unit UA on the "none" rows only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..checkpoints import read_json
from ..config import evaluated_methods
from ..errors import UserError
from ..workflow import noise_aware_evaluator
from .records import display_name

ROBUSTNESS_TABLES = ("robustness.csv", "robustness.md")
ORIGINAL, RETRAIN, NO_ATTACK = "original", "retrain", "none"
ATTACKS = ("relearning", "resurgence", "partial_diffusion")
RECOVERED_BELOW = 50.0  # UA (%) below which the class counts as recognised (the attack records' own line)
RELEARN_PREFIX = "relearn_steps_to_recover_k"
PROVENANCE = ("run_name", "config_hash", "model_digest", "dataset", "fid_backend")
POINT_COLUMNS = [
    "method",
    "forget_class",
    "seed",
    "attack",
    "attack_param",
    "attack_value",
    "step",
    "t_start",
    "ua",
    "ua_noise_aware",
    "no_class_share",
    "attack_rte_min",
]


def model_label(name: str) -> str:
    """A row's name in the report: Retrain is the suite's reference, not a method file."""
    return "Retrain" if name == RETRAIN else display_name(name)


def models_of(config: dict) -> list[str]:
    """The report's rows in order: the original, the config's methods, then Retrain (when configured)."""
    retrain = [RETRAIN] if (config.get("robustness") or {}).get("retrain") else []
    return [ORIGINAL, *evaluated_methods(config), *retrain]


# ---------------------------------------------------------------------------- records


def _load(paths: Iterable, kind: str) -> dict:
    """{(method, class, seed): (record, path)}; a unit twice is refused (it would weigh twice)."""
    out = {}
    for path in paths:
        record = read_json(path)
        if kind == "metrics" and record.get("variant") not in (None, record.get("method")):
            continue  # a side variant (an ablation's): not the unit's main model
        try:
            key = (str(record["method"]), int(record["forget_class"]), int(record["seed"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{kind} record {path} lacks an integer forget_class and seed or a method: it is not a "
                "record of the robustness jobs; delete it and rerun the workflow"
            ) from None
        if key in out:
            raise UserError(
                f"two {kind} records of {key[0]} class {key[1]} seed {key[2]}: {out[key][1]} and "
                f"{path}; pass each job's record once, from one run"
            )
        out[key] = (record, path)
    return out


def _check_units(records: Mapping, want: set, kind: str) -> None:
    have = set(records)
    for problem, keys in (
        (f"no {kind} record", want - have),
        (f"a {kind} record outside the config's models, forget_classes and seeds", have - want),
    ):
        if keys:
            listed = ", ".join(f"{m} class {c} seed {s}" for m, c, s in sorted(keys)[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            raise UserError(
                f"{problem} for {listed}{more}; robustness.csv needs one per model, forgotten class and "
                "seed of the config (the workflow's robustness_table rule passes exactly these): run "
                "`snakemake robustness`"
            )


def _judged_alike(records: Mapping, kind: str, rule: str, what: str, key) -> None:
    """Every record of a kind judged alike (`key`: what the scoring depended on): a table of two judges would mix
    their results. Not the whole config's hash: records of one run carry several (a job reruns only when a section
    it reads changes; adding a method reruns no score)."""
    by_key: dict = {}
    for record, path in records.values():
        by_key.setdefault(json.dumps(key(record), sort_keys=True, default=str), []).append(str(path))
    if len(by_key) > 1:
        parts = "; ".join(f"{k}: {len(p)} record(s), e.g. {p[0]}" for k, p in by_key.items())
        raise UserError(
            f"the {kind} records were made with {len(by_key)} different {what} ({parts}); a table of "
            f"them would mix their results. Remake them (`snakemake --forcerun {rule} robustness`), or "
            "pass one run's records"
        )


def _score_judges(record: Mapping) -> dict:
    provenance, distance = record.get("provenance") or {}, record.get("forget_distance") or {}
    return {
        "evaluators": provenance.get("evaluators"),
        "fid_backend": provenance.get("fid_backend"),
        "k": distance.get("k"),
    }


def _number(value) -> float:
    return np.nan if value is None else float(value)


def _unit_columns(
    score: Mapping, main: Mapping | None, attack: Mapping | None, extras: Sequence[str], ks: Sequence[int]
) -> dict:
    """The columns every row of a (model, class, seed) unit carries."""
    evaluators, distance = score.get("evaluators") or {}, score.get("forget_distance") or {}
    row = {"ua_main": _number(evaluators["main"]["ua"]), "H": _number(evaluators["main"].get("entropy"))}
    for name in extras:
        verdict = evaluators.get(name) or {}
        row |= {
            f"ua_{name}": _number(verdict.get("ua")),
            f"h_{name}": _number(verdict.get("entropy")),
            f"ua_agreement_{name}": _number(verdict.get("ua_agreement")),
            f"no_class_share_{name}": _number(verdict.get("no_class_share")),
        }
    row |= {f"forget_{key}": _number(distance.get(key)) for key in ("fid", "kid", "precision", "recall")}
    row |= {
        "forget_pr_k": _number(distance.get("k")),
        "forget_n_real": _number(distance.get("n_real")),
        "n_generated": _number(score.get("n_generated")),
    }
    cost = (main or {}).get("cost") or {}
    rte = cost.get("rte_min", None if cost.get("rte_s") is None else cost["rte_s"] / 60.0)
    row |= {
        "fid_remaining": _number((main or {}).get("fid")),
        "kid_remaining": _number((main or {}).get("kid")),
        "remaining_acc": _number((main or {}).get("remaining_acc")),
        "ua_record": _number((main or {}).get("UA")),
        "rte_min": _number(rte),
    }
    summary, settings = (attack or {}).get("summary") or {}, (attack or {}).get("settings") or {}
    for k in ks:  # None: not recovered within the budget (right-censored), inf here
        value = summary.get(f"{RELEARN_PREFIX}{k}")
        row[f"{RELEARN_PREFIX}{k}"] = np.nan if attack is None else math.inf if value is None else float(value)
    row |= {
        "resurgence_ua_final": _number(summary.get("resurgence_ua_final")),
        "partial_diffusion_ua_mean": _number(summary.get("partial_diffusion_ua_mean")),
        **_noise_aware_summary((attack or {}).get("points") or []),
        "attacked": attack is not None,
        "relearn_budget_steps": _number((settings.get("relearning") or {}).get("steps")),
        "resurgence_budget_steps": _number((settings.get("resurgence") or {}).get("steps")),
        "recovered_below_ua": _number(settings.get("recovered_below_ua")),
        "attacks_rte_min": (
            sum(_number(c.get("rte_min")) for c in attack["cost"].values()) if attack and attack.get("cost") else np.nan
        ),
    }
    provenance = score.get("provenance") or {}
    row |= {key: provenance.get(key) for key in PROVENANCE}
    row["attack_config_hash"] = ((attack or {}).get("provenance") or {}).get("config_hash")
    return row


def _noise_aware_summary(points: Sequence[Mapping]) -> dict:
    """The attack summaries of the noise-aware UA (the records' are of the main evaluator's): the final resurgence
    point's and the mean over the partial-diffusion strengths."""
    resurgence = [p for p in points if p["attack"] == "resurgence" and p.get("ua_noise_aware") is not None]
    probe = [
        p["ua_noise_aware"]
        for p in points
        if p["attack"] == "partial_diffusion" and p.get("ua_noise_aware") is not None
    ]
    final = max(resurgence, key=lambda p: p["step"])["ua_noise_aware"] if resurgence else None
    return {
        "resurgence_ua_noise_aware_final": _number(final),
        "partial_diffusion_ua_noise_aware_mean": float(np.mean(probe)) if probe else np.nan,
    }


def robustness_table(config: dict, scores: Mapping, attacks: Mapping, mains: Mapping) -> pd.DataFrame:
    """The tidy rows of robustness.csv from the loaded records ({(method, class, seed): (record, path)})."""
    models = models_of(config)
    extras = list((config.get("robustness") or {}).get("evaluators") or {})
    noise_aware = noise_aware_evaluator(config)
    configured = ((config.get("robustness") or {}).get("attacks") or {}).get("relearning", {}).get("k") or []
    found = {
        int(key[len(RELEARN_PREFIX) :])
        for record, _ in attacks.values()
        for key in (record.get("summary") or {})
        if key.startswith(RELEARN_PREFIX)
    }
    ks = sorted({int(k) for k in configured} | found)
    rows = []
    for key, (score, _) in scores.items():
        main = mains.get(key, (None,))[0]
        attack = attacks.get(key, (None,))[0]
        unit = _unit_columns(score, main, attack, extras, ks)
        identity = dict(zip(("method", "forget_class", "seed"), key))
        rows.append(
            {
                **identity,
                **unit,
                "attack": NO_ATTACK,
                "ua": unit["ua_main"],
                "ua_noise_aware": unit.get(f"ua_{noise_aware}", np.nan),
                "no_class_share": unit.get(f"no_class_share_{noise_aware}", np.nan),
            }
        )
        for point in (attack or {}).get("points") or []:
            name = point["attack"]
            cost_key = f"relearning_k{point['value']:g}" if name == "relearning" else name
            rows.append(
                {
                    **identity,
                    **unit,
                    "attack": name,
                    "attack_param": point.get("param"),
                    "attack_value": _number(point.get("value")),
                    "step": _number(point.get("step")),
                    "t_start": _number(point.get("t_start")),
                    "ua": _number(point.get("ua")),
                    "ua_noise_aware": _number(point.get("ua_noise_aware")),
                    "no_class_share": _number(point.get("no_class_share")),
                    "attack_rte_min": _number(((attack.get("cost") or {}).get(cost_key) or {}).get("rte_min")),
                }
            )
    df = pd.DataFrame(rows)
    columns = POINT_COLUMNS + [c for c in df.columns if c not in POINT_COLUMNS]
    df = df.reindex(columns=columns)
    rank = {m: i for i, m in enumerate(models)}
    order = pd.DataFrame(
        {
            "r": df["method"].map(rank),
            "a": df["attack"].map({a: i for i, a in enumerate((NO_ATTACK, *ATTACKS))}).fillna(len(ATTACKS) + 1),
        }
    )
    df = pd.concat([order, df], axis=1).sort_values(
        ["r", "forget_class", "seed", "a", "attack_value", "step"], kind="stable", na_position="first"
    )
    return df.drop(columns=["r", "a"]).reset_index(drop=True)


def checked_records(
    config: dict, score_paths: Iterable, attack_paths: Iterable, record_paths: Iterable
) -> tuple[dict, dict, dict]:
    """The score, attack and main metrics records of a robustness report, checked to be the config's models x
    forget classes x seeds (the attacks: x robustness.attacks.seeds), each kind from one configuration and all
    from one run."""
    robust = config.get("robustness") or {}
    if not robust:
        raise UserError(
            "the config has no `robustness` section: add one (config/default.yaml's) to make the robustness report"
        )
    models = models_of(config)
    classes, seeds = [int(c) for c in config["forget_classes"]], [int(s) for s in config["seeds"]]
    attack_seeds = [int(s) for s in (robust.get("attacks") or {}).get("seeds") or []]
    scores, attacks, mains = (
        _load(score_paths, "score"),
        _load(attack_paths, "attack"),
        _load(record_paths, "metrics"),
    )
    unlearned = [m for m in models if m != ORIGINAL]
    _check_units(scores, {(m, c, s) for m in models for c in classes for s in seeds}, "score")
    _check_units(attacks, {(m, c, s) for m in unlearned for c in classes for s in attack_seeds}, "attack")
    _check_units(mains, {(m, c, s) for m in unlearned for c in classes for s in seeds}, "main metrics")
    _judged_alike(scores, "score", "score_robustness", "evaluators or FID features", _score_judges)
    runs = {
        (record.get("provenance") or {}).get("run_name")
        for group in (scores, attacks, mains)
        for record, _ in group.values()
    }
    if len(runs - {None}) > 1:
        raise UserError(
            f"the records come from several runs ({', '.join(sorted(runs - {None}))}); pass one run's "
            "records (results/<run_name>/ of one config)"
        )
    return scores, attacks, mains
