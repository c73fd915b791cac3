"""Beyond the paper's evaluation (docs/robustness.md; config `robustness`): evaluators that noise cannot fool or of
another architecture, Retrain (the gold standard: trained without the forgotten class) and, from the saved samples,
the forgotten class's verdicts under every evaluator and its distance to the real class. The attacks on the
unlearned models: stages/attacks.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metrics.fid import fid_from_features, kid_from_features
from metrics.forgetting import entropy, softmax_probabilities, unlearning_accuracy
from metrics.robustness import no_class_verdicts, precision_recall, ua_agreement

from .. import checkpoints as ckpt
from ..config import config_hash
from ..data import NO_CLASS_KINDS, ImageData, no_class_images, to_float
from ..errors import UserError
from ..settings import Settings
from ..training import setup_runtime
from .foundation import fit_evaluator, load_evaluator
from .sampling import load_samples
from .scoring import fid_features, versions

EVALUATOR_TRAINING_KEYS = ("epochs", "batch_size", "lr")  # taken from `evaluator` unless an extra evaluator sets them


def evaluator_spec(config: dict, name: str) -> dict:
    """The effective settings of the extra evaluator `name` of robustness.evaluators."""
    specs = config["robustness"]["evaluators"]
    if name not in specs:
        raise UserError(f"'{name}' is not one of robustness.evaluators ({', '.join(specs) or 'none'})")
    return {**{k: config["evaluator"][k] for k in EVALUATOR_TRAINING_KEYS}, **specs[name]}


def train_extra_evaluator(config: dict, name: str, data_path, out_dir) -> dict:
    """An evaluator of robustness.evaluators, trained independently of the main one (its own seed and arch). With
    `no_class_images` > 0 it has one more output, "no class" (its last), learnt from images of no class
    (data.no_class_images), as many as `no_class_images` x the mean train count of a class; its record gives the
    share of held-out no-class images of each kind that it calls "no class"."""
    spec = evaluator_spec(config, name)
    data = ImageData.load(data_path)
    device = setup_runtime(Settings.parse(config).runtime)
    record = {"name": name, "seed": spec.get("seed", 0), "no_class": None}
    extra = None
    share = spec.get("no_class_images", 0)
    if share:
        n = max(len(NO_CLASS_KINDS), round(share * len(data.train_x) / data.num_classes))
        images, kinds = no_class_images(data.train_x, data.train_y, n, seed=spec.get("seed", 0))
        extra = (images, np.full(len(images), data.num_classes, dtype=np.int64))
        record |= {"no_class": data.num_classes, "n_no_class_train": n, "no_class_kinds": sorted(set(kinds))}
    info = fit_evaluator(
        spec, data, out_dir, device, hflip=config["base"].get("hflip", False), extra=extra, record=record
    )
    if extra is not None:  # held-out images of no class (other draws, test images): how many it calls so
        model = load_evaluator(out_dir, device)
        held_out, kinds = no_class_images(data.test_x, data.test_y, 500, seed=10_000 + spec.get("seed", 0))
        said = softmax_probabilities(model, to_float(held_out)).argmax(1) == data.num_classes
        kinds = np.array(kinds)
        info["no_class_test_recall"] = {k: float(100.0 * said[kinds == k].mean()) for k in sorted(set(kinds))}
        ckpt.write_json(Path(out_dir) / "evaluator.json", info)
        print(
            "no class recognised on held-out images: "
            + ", ".join(f"{k} {v:.0f}%" for k, v in info["no_class_test_recall"].items())
        )
    return info


def forget_class_images(samples_path, forget_class: int, n_forget: int) -> tuple[np.ndarray, dict]:
    """The first `n_forget` generations of `forget_class` in a samples file (as the metrics record scores them)."""
    images, labels, meta = load_samples(samples_path)
    if meta.get("forget_class") not in (None, forget_class):
        raise UserError(
            f"{samples_path} holds the samples of a model that forgot class {meta['forget_class']}, not "
            f"{forget_class}; pass that class's samples (the workflow does)"
        )
    chosen = images[np.flatnonzero(labels == forget_class)[:n_forget]]
    if len(chosen) == 0:
        raise UserError(f"{samples_path} holds no image of class {forget_class}")
    return chosen, meta


def evaluator_verdicts(probs_main: np.ndarray, probs: np.ndarray, info: dict, forget_class: int) -> dict:
    """UA and H of one extra evaluator (and its "no class" share when it has that output), and how often it
    agrees with the main evaluator on whether an image shows the forgotten class."""
    if info.get("no_class") is not None:
        v = no_class_verdicts(probs, forget_class, info["no_class"])
        out = {"ua": v["ua_noise_aware"], "entropy": v["entropy"], "no_class_share": v["no_class_share"]}
    else:
        out = {"ua": unlearning_accuracy(probs, forget_class), "entropy": entropy(probs)}
    return {**out, "ua_agreement": ua_agreement(probs_main, probs, forget_class)}


def score_robustness(
    config: dict,
    data_path,
    evaluator_dir,
    extra_evaluators: dict,
    samples: dict,
    seed: int,
    method: str,
    out_paths: dict | None = None,
) -> list[dict]:
    """The forgotten class of one model (or, for the original, of every class in `samples`: {class: npz}) under
    the main and the extra evaluators ({name: folder}), and the distance of its generations to the real class:
    FID and KID on the FID features, and precision/recall (Kynkaenniemi et al. 2019) with k of
    robustness.precision_recall_k. One record per class in `out_paths` ({class: json})."""
    device = setup_runtime(Settings.parse(config).runtime)
    data = ImageData.load(data_path)
    main = load_evaluator(evaluator_dir, device)
    extras = {
        name: (load_evaluator(folder, device), ckpt.read_json(Path(folder) / "evaluator.json"))
        for name, folder in extra_evaluators.items()
    }
    features = fid_features(config, evaluator_dir, device)
    k = config["robustness"]["precision_recall_k"]
    records = []
    for forget_class, path in samples.items():
        images, meta = forget_class_images(path, forget_class, config["evaluation"]["n_forget"])
        x = to_float(images)
        probs = softmax_probabilities(main, x)
        verdicts = {"main": {"ua": unlearning_accuracy(probs, forget_class), "entropy": entropy(probs)}}
        for name, (model, info) in extras.items():
            verdicts[name] = evaluator_verdicts(probs, softmax_probabilities(model, x), info, forget_class)
        real = features(to_float(data.train_x[data.train_y == forget_class]))
        generated = features(x)
        record = {
            "method": method,
            "forget_class": forget_class,
            "seed": seed,
            "n_generated": int(len(x)),
            "evaluators": verdicts,
            "forget_distance": {
                "fid": fid_from_features(generated, real),
                "kid": kid_from_features(generated, real),
                **precision_recall(real, generated, k=k),
                "k": k,
                "n_real": int(len(real)),
            },
            "provenance": {
                "run_name": config["run_name"],
                "config_hash": config_hash(config),
                "dataset": config["dataset"],
                "fid_backend": config["fid"]["backend"],
                "samples": str(path),
                "model_digest": meta.get("model_digest"),
                "evaluators": {
                    name: {key: info.get(key) for key in ("arch", "seed", "test_accuracy", "no_class_test_recall")}
                    for name, (_, info) in extras.items()
                },
                "versions": versions(),
            },
        }
        if out_paths:
            ckpt.write_json(out_paths[forget_class], record)
        records.append(record)
        print(
            f"{method} class {forget_class}: "
            + ", ".join(f"UA[{n}] {v['ua']:.1f}" for n, v in verdicts.items())
            + f", forget FID {record['forget_distance']['fid']:.2f}"
        )
    return records
