"""Samples: which a model draws for an evaluation (counts, seeds, the sampler), their file format (npz + a PNG
grid), and whether samples drawn earlier still match the config."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import checkpoints as ckpt
from ..acceleration import effective_switches, switches_label
from ..cost import device_name
from ..data import to_uint8
from ..diffusion import Schedule, sample_as_configured
from ..errors import MissingResourceError, UserError
from ..files import atomic_output
from ..settings import Settings
from ..training import prepare_model, setup_runtime


# ---------------------------------------------------------------- evaluation
def sampling_seed(seed: int, forget_class: int | None) -> int:
    """Every unlearned model of a (class, seed) cell is sampled from the same noise: differences come from the
    models. The original (forget_class None) is sampled once per seed for all classes, from noise of its own."""
    return 7919 * (seed + 1) + (forget_class if forget_class is not None else 97)


def sample_counts(config: dict, num_classes: int, forget_class: int | None) -> dict[int, int]:
    ev = config["evaluation"]
    if forget_class is None:  # the original model: enough of every class to serve every forget class
        return {c: max(ev["n_forget"], ev["n_per_remaining_class"]) for c in range(num_classes)}
    return {c: ev["n_forget"] if c == forget_class else ev["n_per_remaining_class"] for c in range(num_classes)}


def sampler_name(config: dict) -> str:
    """'ancestral' (DDPM) when every timestep is visited with eta = 1, else 'ddim'."""
    s = config["sampler"]
    return "ancestral" if s["steps"] == config["diffusion"]["timesteps"] and s["eta"] == 1 else "ddim"


def with_guidance(config: dict, guidance_w: float) -> dict:
    """The config with the sampler's guidance weight set to `guidance_w` (a guidance-sweep evaluation).
    Records then carry that w and the hash of this config, not the run's."""
    if not (math.isfinite(guidance_w) and guidance_w >= 0):
        raise UserError(f"guidance weight {guidance_w}: it is a finite number >= 0 (0 is unguided)")
    return {**config, "sampler": {**config["sampler"], "guidance_w": float(guidance_w)}}


def sample_meta(config: dict, model_dir, seed: int, forget_class: int | None, num_classes: int) -> dict:
    """What defines a sample set: the exact weights, the sampler, the seed and the per-class counts."""
    return {
        "model_dir": str(model_dir),
        "model_digest": ckpt.folder_digest(model_dir),
        "seed": seed,
        "forget_class": forget_class,
        "sampler": sampler_name(config),
        **config["sampler"],
        "counts": {str(k): v for k, v in sample_counts(config, num_classes, forget_class).items()},
    }


def generate_samples(config: dict, model_dir, out_path, seed: int, forget_class: int | None, num_classes: int) -> dict:
    """Sample the configured images per class with the evaluation sampler; npz + PNG grid."""
    settings = Settings.parse(config)
    device = setup_runtime(settings.runtime)
    model = prepare_model(ckpt.load_unet(model_dir), settings.runtime.performance, device, sampling=True)
    counts = sample_counts(config, num_classes, forget_class)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in counts.items()])
    generator = torch.Generator().manual_seed(sampling_seed(seed, forget_class))
    images = sample_as_configured(
        model,
        settings.sampler,
        Schedule.of(settings.diffusion),
        labels,
        generator,
        device,
        performance=settings.runtime.performance,
        progress=True,
    )
    meta = {
        **sample_meta(config, model_dir, seed, forget_class, num_classes),
        "device_name": device_name(device),
        "speed_switches": switches_label(effective_switches(settings.runtime, device, sampling=True)),
    }
    save_samples(out_path, to_uint8(images), labels.numpy(), meta)
    return meta


def presampled_matches(
    config: dict, presampled, model_dir, seed: int, forget_class: int | None, num_classes: int
) -> bool:
    """True when `presampled` holds exactly the samples the current config asks of this model."""
    presampled = Path(presampled)
    if not presampled.exists():
        return False
    try:
        _, _, meta = load_samples(presampled)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UserError):  # unreadable or an older format: draw afresh
        return False
    want = sample_meta(config, model_dir, seed, forget_class, num_classes)
    return all(meta.get(k) == v for k, v in want.items() if k != "model_dir")


def save_samples(path, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    path = Path(path)
    with atomic_output(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, images=images, labels=labels, meta=json.dumps(meta))
    save_grid(path.with_suffix(".png"), images, labels)


def load_samples(path) -> tuple[np.ndarray, np.ndarray, dict]:
    path = Path(path)
    if not path.exists():
        raise MissingResourceError(f"samples {path} are missing: run the sampling step first")
    with np.load(path) as f:
        if not {"images", "labels", "meta"} <= set(f.files):
            raise UserError(
                f"{path} is not a samples file (it holds {sorted(f.files)}); pass one written by "
                "`unlearnbench sample` or `evaluate`"
            )
        return f["images"], f["labels"], json.loads(str(f["meta"]))


def save_grid(path, images: np.ndarray, labels: np.ndarray, per_class: int = 8) -> None:
    """One row per class, the first images of each: a quick look at what a model generates."""
    rows = []
    for c in np.unique(labels):
        imgs = images[labels == c][:per_class]
        pad = np.zeros((per_class - len(imgs), *images.shape[1:]), dtype=np.uint8)
        rows.append(np.concatenate([np.concatenate([imgs, pad]).transpose(0, 2, 3, 1)], axis=0))
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    scale = max(1, 128 // images.shape[-1])
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
