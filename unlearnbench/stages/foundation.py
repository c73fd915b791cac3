"""The stages before any method: load a run's config, prepare the data, train (or adopt) the original model,
train the evaluation classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import checkpoints as ckpt
from ..acceleration import effective_switches, switches_label
from ..config import config_hash, load_config, read_yaml
from ..cost import CostMeter
from ..data import ImageData, class_subset, load_dataset, to_float
from ..diffusion import Schedule
from ..errors import MissingResourceError, UserError
from ..networks import build_classifier, build_unet
from ..settings import Settings
from ..training import (
    BatchStream,
    autocast,
    classifier_accuracy,
    prepare_model,
    seed_everything,
    setup_runtime,
    train_classifier,
    train_diffusion,
)
from ..workflow import EVALUATOR_WEIGHTS, fingerprint


def load_run_config(path: str | Path) -> dict:
    """The config a stage runs with.

    The workflow's files (results/<run>/configs/<config_hash>.yaml, validated when the Snakefile wrote them) are
    read as they are. Any other file, e.g. for a stage run by hand, is merged onto config/default.yaml and
    validated as the Snakefile does, so that it gets the same checks and a partial file works.
    """

    config = read_yaml(path)
    if Path(path).stem == config_hash(config):
        return config
    return load_config(path)


# ---------------------------------------------------------------- data and base model
def prepare_data(config: dict, out: str | Path) -> ImageData:
    data = load_dataset(Settings.parse(config).data)
    data.save(out)
    print(
        f"data: {len(data.train_x)} train / {len(data.test_x)} test images of shape {data.image_shape}, "
        f"{data.num_classes} classes -> {out}"
    )
    return data


def train_base(config: dict, data_path: str | Path, out_dir: str | Path, without_class: int | None = None) -> dict:
    """Train the class-conditional DDPM (or adopt base.checkpoint); writes unet/, unet_ema/ and train.json.

    `without_class`: Retrain, the unlearning literature's gold standard: the same recipe on the train images of
    every other class (never adopted from base.checkpoint). The class keeps its label and embedding, untrained.
    """
    out_dir = Path(out_dir)
    base = config["base"]
    settings = Settings.parse(config)
    data = ImageData.load(data_path)
    device = setup_runtime(settings.runtime)
    expect = ckpt.unet_expectations(settings.model, data.num_classes)
    train_x, train_y = data.train_x, data.train_y
    if without_class is not None:
        if not 0 <= without_class < data.num_classes:
            raise UserError(f"Retrain without class {without_class}: the data has classes 0..{data.num_classes - 1}")
        train_x, train_y = class_subset(train_x, train_y, [c for c in range(data.num_classes) if c != without_class])
    elif base.get("checkpoint"):
        src = Path(base["checkpoint"])
        models = {
            sub: ckpt.load_users_unet(
                src / sub,
                expect,
                f"'base.checkpoint' {src / sub}",  # both checked first
                "point 'base.checkpoint' to another trained model, or set it to null to train one",
            )
            for sub in ("unet", "unet_ema")
        }
        for sub, model in models.items():  # re-saved in the suite's layout: later jobs load it without conversion
            ckpt.save_unet(model, out_dir / sub)
        record = {
            "source": str(src.resolve()),
            "source_digest": {sub: ckpt.folder_digest(src / sub) for sub in models},
            "cost": None,
            "steps": None,
        }
        ckpt.write_json(out_dir / "train.json", record)
        return record
    shuffle = seed_everything(base.get("seed", 0))
    generator = device_generator(base.get("seed", 0), device)
    model = prepare_model(
        build_unet(settings.model.preset, data.num_classes, settings.model.overrides),
        settings.runtime.performance,
        device,
    )
    stream = BatchStream(
        to_float(train_x), torch.as_tensor(train_y), base["batch_size"], shuffle, device, hflip=base.get("hflip", False)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with CostMeter(device) as meter:
        model, ema, losses = train_diffusion(
            model,
            Schedule.of(settings.diffusion),
            stream,
            steps=base["steps"],
            lr=base["lr"],
            grad_clip=base.get("grad_clip"),
            ema_decay=base.get("ema_decay", 0.9999),
            cond_dropout=base.get("cond_dropout", 0.1),
            reduction=settings.diffusion.loss_reduction,
            generator=generator,
            warmup_steps=base.get("warmup_steps", 0),
            state_path=out_dir / "train_state.pt",
            checkpoint_every=base.get("checkpoint_every", 0),
            state_key=fingerprint(config, "base") + ("" if without_class is None else f"-without{without_class}"),
            amp=lambda: autocast(settings.runtime.performance, device),
            meter=meter,
        )
    ckpt.save_unet(model, out_dir / "unet")
    ckpt.save_unet(ema, out_dir / "unet_ema")
    cost = {**meter.result(), "speed_switches": switches_label(effective_switches(settings.runtime, device))}
    record = {
        "steps": base["steps"],
        "loss_trace": losses,
        "cost": cost,
        "without_class": without_class,
        "n_train": int(len(train_x)),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    ckpt.write_json(out_dir / "train.json", record)
    (out_dir / "train_state.pt").unlink(missing_ok=True)
    return record


def evaluator_path(folder: str | Path) -> Path:
    return Path(folder) / EVALUATOR_WEIGHTS


def train_evaluator(config: dict, data_path: str | Path, out_dir: str | Path) -> dict:
    """The evaluation classifier of config `evaluator`, trained on the real train images."""
    return fit_evaluator(
        config["evaluator"],
        ImageData.load(data_path),
        out_dir,
        setup_runtime(Settings.parse(config).runtime),
        hflip=config["base"].get("hflip", False),
    )


def fit_evaluator(
    spec: dict,
    data: ImageData,
    out_dir: str | Path,
    device,
    *,
    hflip: bool = False,
    extra: tuple | None = None,
    record: dict | None = None,
) -> dict:
    """Train a classifier of `spec` (arch, epochs, batch_size, lr, seed) on the real train images, plus
    `extra` = (uint8 images, their labels) when given (the noise-aware evaluator's "no class" images); saves its
    weights and evaluator.json (+ `record`) in `out_dir`. Its test accuracy is on the real test images."""
    generator = seed_everything(spec.get("seed", 0))
    c, h, _ = data.image_shape
    x, y = data.train_x, data.train_y
    if extra is not None:
        x, y = np.concatenate([x, extra[0]]), np.concatenate([y, extra[1]])
    num_outputs = int(y.max()) + 1 if extra is not None else data.num_classes
    model = build_classifier(spec["arch"], c, num_outputs)
    train_classifier(
        model,
        to_float(x),
        torch.as_tensor(y),
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        generator=generator,
        device=device,
        hflip=hflip,
    )
    ckpt.require_finite(
        model, "evaluator training ended with non-finite weights", "Lower the evaluator's lr; nothing was saved."
    )
    acc = classifier_accuracy(model, to_float(data.test_x), torch.as_tensor(data.test_y))
    out_dir = Path(out_dir)
    ckpt.save_tensors(evaluator_path(out_dir), model.state_dict())
    info = {
        "test_accuracy": acc,
        "arch": spec["arch"],
        "in_channels": c,
        "num_classes": num_outputs,
        "image_size": h,
        "n_test": len(data.test_x),
        **(record or {}),
    }
    ckpt.write_json(out_dir / "evaluator.json", info)
    print(f"evaluator test accuracy: {acc:.2f}%")
    return info


def load_evaluator(folder: str | Path, device) -> torch.nn.Module:
    info = ckpt.read_json(Path(folder) / "evaluator.json")
    weights = ckpt.load_tensors(evaluator_path(folder))
    try:
        model = build_classifier(info["arch"], info["in_channels"], info["num_classes"])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as exc:  # a record or weights of another version, or overwritten by hand
        raise MissingResourceError(
            f"the evaluator in {folder} does not match its evaluator.json ({exc}): delete the "
            "folder and rerun, the train_evaluator job remakes it"
        ) from None
    return model.to(device).eval()


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    seed_everything(seed)
    return torch.Generator(device=device).manual_seed(seed)
