"""Scoring saved samples: FID references, the metrics records (FID/KID, H, UA, remaining classes), the guidance
sweep, the finding study's denoiser check, the original model's summary."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from metrics.denoiser import eps_mean_squares
from metrics.fid import (
    feature_extractor,
    feature_statistics,
    frechet_distance,
    kid_from_features,
    load_statistics,
    reference_statistics,
    save_statistics,
)
from metrics.forgetting import accuracy, entropy, mean_class_probability, softmax_probabilities, unlearning_accuracy

from .. import checkpoints as ckpt
from ..config import config_hash, write_resolved
from ..data import ImageData, class_subset, to_float
from ..diffusion import Schedule
from ..errors import UserError
from ..networks import null_class
from ..settings import Settings
from ..training import setup_runtime
from .foundation import load_evaluator
from .sampling import (
    generate_samples,
    load_samples,
    presampled_matches,
    sampler_name,
    sampling_seed,
    save_samples,
    with_guidance,
)


def evaluate_model(
    config: dict,
    model_dir,
    data_path,
    samples_path,
    evaluator_dir,
    reference_path,
    forget_class: int,
    seed: int,
    method: str,
    variant: str,
    cost_path=None,
    out_path=None,
    config_path=None,
    presampled=None,
) -> dict:
    """Samples of an unlearned model (reusing those its unlearning job drew when they match), then its metrics.

    The unlearning job samples while its model is loaded (--presample); this saves a process that loads a
    UNet per model. Changing the sampler or the counts makes the samples mismatch, and they
    are drawn again here.
    """
    num_classes = ImageData.load(data_path).num_classes
    if presampled and presampled_matches(config, presampled, model_dir, seed, forget_class, num_classes):
        images, labels, meta = load_samples(presampled)
        save_samples(samples_path, images, labels, meta)
        print(f"samples: reused {presampled} (same weights, sampler, seed and counts)")
    else:
        generate_samples(config, model_dir, samples_path, seed, forget_class, num_classes)
    return score(
        config,
        samples_path,
        evaluator_dir,
        reference_path,
        forget_class,
        seed,
        method,
        variant,
        cost_path,
        out_path,
        config_path,
    )


def evaluate_at_weights(
    config: dict,
    weights,
    model_dir,
    data_path,
    evaluator_dir,
    references: dict,
    seed: int,
    method: str,
    variant: str,
    cost_path,
    samples_paths,
    out_paths,
    config_path=None,
) -> list[dict]:
    """One model sampled and scored at each guidance weight (the guidance sweep), in one process: `samples_paths`
    has one file per weight, `out_paths` one record per weight and class of `references`, weight by weight.
    The original model (variant "original") is sampled once per weight for every class, as in its main evaluation."""
    classes = list(references)
    if len(samples_paths) != len(weights) or len(out_paths) != len(weights) * len(classes):
        raise UserError(
            f"{len(weights)} guidance weights and {len(classes)} forget classes need {len(weights)} "
            f"--samples and {len(weights) * len(classes)} --out paths (weight by weight), got "
            f"{len(samples_paths)} and {len(out_paths)}"
        )
    if variant != "original" and len(classes) != 1:
        raise UserError(f"an unlearned model ({variant}) forgot one class; got --forget-class {classes}")
    num_classes = ImageData.load(data_path).num_classes
    records = []
    for i, (w, samples_path) in enumerate(zip(weights, samples_paths)):
        at_w = with_guidance(config, float(w))
        at_w_path = None
        if config_path:  # beside the run's: the config_hash of these records names a file, as the main ones' do
            at_w_path = Path(config_path).parent / f"{config_hash(at_w)}.yaml"
            write_resolved(at_w, at_w_path)
        generate_samples(
            at_w, model_dir, samples_path, seed, None if variant == "original" else classes[0], num_classes
        )
        outs = dict(zip(classes, out_paths[i * len(classes) : (i + 1) * len(classes)]))
        records += score_classes(
            at_w, samples_path, evaluator_dir, references, seed, method, variant, cost_path, outs, at_w_path
        )
    return records


def fid_features(config: dict, evaluator_dir, device):

    fid = config["fid"]
    if fid["backend"] == "classifier":
        return feature_extractor("classifier", classifier=load_evaluator(evaluator_dir, device), device=device)
    return feature_extractor("inception", device=device, weights_dir=fid.get("weights_dir"))


def write_fid_references(config: dict, data_path, evaluator_dir, out_paths: dict) -> dict:
    """Feature statistics of the real train images of the remaining classes, one file per forget class
    ({forget class: npz path}). The features of every chosen real image are computed once and shared by
    all forget classes (one Inception pass over CIFAR-10's train set instead of one per class).
    """

    device = setup_runtime(Settings.parse(config).runtime)
    data = ImageData.load(data_path)
    n_per_class = config["evaluation"].get("n_real_per_class")
    chosen = {}
    for forget_class in out_paths:
        rng = np.random.default_rng(forget_class)
        parts = []
        for c in range(data.num_classes):
            if c == forget_class:
                continue
            idx = np.flatnonzero(data.train_y == c)
            parts.append(
                idx if n_per_class is None or n_per_class >= len(idx) else rng.choice(idx, n_per_class, replace=False)
            )
        chosen[forget_class] = np.sort(np.concatenate(parts))
    union = np.unique(np.concatenate(list(chosen.values())))
    features = fid_features(config, evaluator_dir, device)(to_float(data.train_x[union]))
    counts = {}
    for forget_class, out in out_paths.items():
        stats = reference_statistics(
            features[np.searchsorted(union, chosen[forget_class])]
        )  # keeps a feature subset for KID
        save_statistics(out, **stats, forget_class=forget_class, backend=config["fid"]["backend"])
        counts[forget_class] = stats["n"]
    return {"n_real": counts}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "diffusers", "clean-fid", "numpy", "unlearnbench"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def score(
    config: dict,
    samples_path,
    evaluator_dir,
    reference_path,
    forget_class: int,
    seed: int,
    method: str,
    variant: str,
    cost_path=None,
    out_path=None,
    config_path=None,
) -> dict:
    """All metrics of one (model, forget class, seed) from its saved samples; writes the per-job record."""
    return score_classes(
        config,
        samples_path,
        evaluator_dir,
        {forget_class: reference_path},
        seed,
        method,
        variant,
        cost_path,
        {forget_class: out_path} if out_path else None,
        config_path,
    )[0]


def _check_pairing(
    reference_path, ref_meta: dict, samples_path, samples_meta: dict, forget_class: int, backend: str
) -> None:
    """The files a score pairs must be of the class it scores: a hand-run score given another class's reference
    or samples would write a plausible record of the wrong class."""
    problems = []
    if ref_meta.get("forget_class") != forget_class:
        problems.append(f"the FID reference {reference_path} leaves out class {ref_meta.get('forget_class')}")
    if ref_meta.get("backend") != backend:
        problems.append(
            f"the FID reference {reference_path} has {ref_meta.get('backend')} features, the config {backend}"
        )
    if samples_meta.get("forget_class") not in (None, forget_class):  # None: the original's, scored for every class
        problems.append(f"the samples {samples_path} are of a model that forgot class {samples_meta['forget_class']}")
    if problems:
        raise UserError(
            f"scoring forgotten class {forget_class}: {'; '.join(problems)}; pass the files of that "
            "class (the workflow does)"
        )


def score_classes(
    config: dict,
    samples_path,
    evaluator_dir,
    references: dict,
    seed: int,
    method: str,
    variant: str,
    cost_path=None,
    out_paths: dict | None = None,
    config_path=None,
) -> list[dict]:
    """Metrics of one model's saved samples for each forget class in `references` ({class: reference npz}).

    The evaluator's probabilities and FID features are computed once for all samples; each forget class
    then takes its own slices (the original model is scored for every class from one sample set).
    """

    device = setup_runtime(Settings.parse(config).runtime)
    images, labels, meta = load_samples(samples_path)
    ev = config["evaluation"]
    x = to_float(images)
    probs = softmax_probabilities(load_evaluator(evaluator_dir, device), x)
    features = fid_features(config, evaluator_dir, device)(x)
    cost = ckpt.read_json(cost_path) if cost_path else {}
    if "cost" in cost:  # the original model's train.json
        cost = cost["cost"] or {}
    s = config["sampler"]
    records = []
    for forget_class, reference_path in references.items():
        forget_idx = np.flatnonzero(labels == forget_class)[: ev["n_forget"]]
        remain_idx = np.concatenate(
            [np.flatnonzero(labels == c)[: ev["n_per_remaining_class"]] for c in np.unique(labels) if c != forget_class]
        )
        probs_f, probs_r = probs[forget_idx], probs[remain_idx]
        ref = load_statistics(reference_path)
        _check_pairing(reference_path, ref["meta"], samples_path, meta, forget_class, config["fid"]["backend"])
        mu, sigma = feature_statistics(features[remain_idx])
        record = {
            "method": method,
            "variant": variant,
            "forget_class": forget_class,
            "seed": seed,
            "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
            "kid": kid_from_features(features[remain_idx], ref["features"]),
            "H": entropy(probs_f),
            "UA": unlearning_accuracy(probs_f, forget_class),
            "forget_prob": mean_class_probability(probs_f, forget_class),
            "remaining_acc": accuracy(probs_r, labels[remain_idx]),
        }
        record["cost"] = {
            k: cost.get(k)
            for k in (
                "rte_s",
                "rte_min",
                "gpu_peak_gb",
                "gpu_peak_source",
                "gpu_null_reason",
                "torch_peak_allocated_gb",
                "torch_peak_reserved_gb",
                "host_rss_peak_gb",
                "device",
                "device_name",
                "speed_switches",
                "units",
            )
        }
        record["prior_min"] = cost.get("prior_min")
        record["prior_shared_min"] = cost.get("prior_shared_min")
        record["imported_from"] = cost.get("imported_from")
        record["params"] = cost.get("params")
        record["param_origins"] = cost.get("param_origins")
        record["provenance"] = {
            "run_name": config["run_name"],
            "config_hash": config_hash(config),
            "config_path": str(config_path or ""),
            "dataset": config["dataset"],
            "seed": seed,
            "sampler": sampler_name(config),
            "sampler_steps": s["steps"],
            "eta": s["eta"],
            "guidance_w": s["guidance_w"],
            "n_forget_samples": int(len(forget_idx)),
            "n_fid_gen_per_class": ev["n_per_remaining_class"],
            "n_fid_gen": int(len(remain_idx)),
            "n_fid_real": int(ref["meta"]["n"]),
            "fid_backend": config["fid"]["backend"],
            "device_name": record["cost"].get("device_name"),  # the cost's: None where none was measured
            "sampling_device_name": meta.get("device_name"),
            "versions": versions(),
            "model_digest": meta.get("model_digest"),  # the exact weights sampled (ties a row to a user's checkpoint)
        }
        if out_paths:
            ckpt.write_json(out_paths[forget_class], record)
        records.append(record)
    return records


def denoiser_norms(config: dict, model_dir, data_path, forget_class: int, seed: int, variant: str, out_path) -> dict:
    """The finding study's eps check (metrics.denoiser): how large the model's noise predictions are under the
    forgotten label, the remaining classes' own labels and the null label, on noised real training images."""

    settings = Settings.parse(config)
    device = setup_runtime(settings.runtime)
    data = ImageData.load(data_path)
    model = ckpt.load_unet(model_dir).to(device).eval()
    x_f, _ = class_subset(data.train_x, data.train_y, [forget_class])
    x_r, y_r = class_subset(data.train_x, data.train_y, [c for c in range(data.num_classes) if c != forget_class])
    schedule = Schedule.of(settings.diffusion)
    norms = eps_mean_squares(
        model,
        schedule,
        to_float(x_f),
        to_float(x_r),
        torch.as_tensor(y_r),
        forget_class,
        null_class(model),
        torch.Generator().manual_seed(sampling_seed(seed, forget_class)),
    )
    record = {
        "variant": variant,
        "forget_class": forget_class,
        "seed": seed,
        "eps_mean_square": norms,
        "model_dir": str(model_dir),
        "model_digest": ckpt.folder_digest(model_dir),
    }
    ckpt.write_json(out_path, record)
    print(
        f"{variant} (class {forget_class}, seed {seed}): mean eps^2 "
        + ", ".join(f"{k} {v:.3f}" for k, v in norms.items())
    )
    return record


def summarize_original(config: dict, samples_path, evaluator_dir, records: list, evaluator_record, out_path) -> dict:
    """results/original.json: the evaluator's accuracy on the original model's samples, per class, and its FIDs."""
    device = setup_runtime(Settings.parse(config).runtime)
    images, labels, _ = load_samples(samples_path)
    preds = softmax_probabilities(load_evaluator(evaluator_dir, device), to_float(images)).argmax(1)
    per_class = {str(int(c)): float(100.0 * np.mean(preds[labels == c] == c)) for c in np.unique(labels)}
    recs = [ckpt.read_json(r) for r in records]
    out = {
        "sample_accuracy": float(100.0 * np.mean(preds == labels)),
        "sample_accuracy_per_class": per_class,
        "n_samples": int(len(labels)),
        "evaluator_test_accuracy": ckpt.read_json(evaluator_record)["test_accuracy"],
        "fid_remaining": {str(r["forget_class"]): r["fid"] for r in recs},
        "UA": {str(r["forget_class"]): r["UA"] for r in recs},
        "fid_backend": config["fid"]["backend"],
        "sampler": config["sampler"],
    }
    ckpt.write_json(out_path, out)
    return out
