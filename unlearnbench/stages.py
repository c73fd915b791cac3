"""The workflow's stages as importable functions; `unlearnbench.cli` is a thin argparse layer over them."""
from __future__ import annotations

import json
import math
import platform
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from . import checkpoints as ckpt
from .acceleration import effective_switches, switches_label, switches_that_ran
from .config import (config_hash, evaluated_methods, imported_architecture_fix, imported_model_dir, method_params,
                     read_yaml, write_resolved)
from .cost import CostMeter, device_name
from .data import ImageData, load_dataset, to_float, to_uint8
from .diffusion import Schedule, sample_as_configured
from .errors import MissingResourceError, UserError
from .files import atomic_output, check_unedited
from .method_api import DeclaredParams, DeclaredSections, MethodParams, RunContext, load_method, prior_by_name
from .networks import build_classifier, build_unet
from .training import (BatchStream, autocast, bf16_uses, classifier_accuracy, prepare_model, seed_everything,
                       setup_runtime, train_classifier, train_diffusion)
from .workflow import EVALUATOR_WEIGHTS, fingerprint, main_param_value


def load_run_config(path: str | Path) -> dict:
    """The config a stage runs with.

    The workflow's files (results/<run>/configs/<config_hash>.yaml, validated when the Snakefile wrote them) are
    read as they are. Any other file, e.g. for a stage run by hand, is merged onto config/default.yaml and
    validated as the Snakefile does, so that it gets the same checks and a partial file works.
    """
    from .config import load_config

    config = read_yaml(path)
    if Path(path).stem == config_hash(config):
        return config
    return load_config(path)


# ---------------------------------------------------------------- data and base model
def prepare_data(config: dict, out: str | Path) -> ImageData:
    data = load_dataset(config)
    data.save(out)
    print(f"data: {len(data.train_x)} train / {len(data.test_x)} test images of shape {data.image_shape}, "
          f"{data.num_classes} classes -> {out}")
    return data


def train_base(config: dict, data_path: str | Path, out_dir: str | Path) -> dict:
    """Train the class-conditional DDPM (or adopt base.checkpoint); writes unet/, unet_ema/ and train.json."""
    out_dir = Path(out_dir)
    base = config["base"]
    data = ImageData.load(data_path)
    device = setup_runtime(config)
    expect = ckpt.unet_expectations(config, data.num_classes)
    if base.get("checkpoint"):
        src = Path(base["checkpoint"])
        models = {sub: ckpt.load_users_unet(src / sub, expect, f"'base.checkpoint' {src / sub}",  # both checked first
                                            "point 'base.checkpoint' to another trained model, or set it to null to "
                                            "train one") for sub in ("unet", "unet_ema")}
        for sub, model in models.items():  # re-saved in the suite's layout: later jobs load it without conversion
            ckpt.save_unet(model, out_dir / sub)
        record = {"source": str(src.resolve()), "source_digest": {sub: ckpt.folder_digest(src / sub) for sub in models},
                  "cost": None, "steps": None}
        ckpt.write_json(out_dir / "train.json", record)
        return record
    shuffle = seed_everything(base.get("seed", 0))
    generator = device_generator(base.get("seed", 0), device)
    model = prepare_model(build_unet(config["model"]["preset"], data.num_classes, config["model"].get("overrides")), config, device)
    stream = BatchStream(to_float(data.train_x), torch.as_tensor(data.train_y), base["batch_size"], shuffle, device,
                         hflip=base.get("hflip", False))
    out_dir.mkdir(parents=True, exist_ok=True)
    with CostMeter(device) as meter:
        model, ema, losses = train_diffusion(
            model, Schedule.from_config(config), stream, steps=base["steps"], lr=base["lr"],
            grad_clip=base.get("grad_clip"), ema_decay=base.get("ema_decay", 0.9999), cond_dropout=base.get("cond_dropout", 0.1),
            reduction=config["diffusion"]["loss_reduction"], generator=generator, warmup_steps=base.get("warmup_steps", 0),
            state_path=out_dir / "train_state.pt", checkpoint_every=base.get("checkpoint_every", 0),
            state_key=fingerprint(config, "base"),
            amp=lambda: autocast(config, device), meter=meter)
    ckpt.save_unet(model, out_dir / "unet")
    ckpt.save_unet(ema, out_dir / "unet_ema")
    cost = {**meter.result(), "speed_switches": switches_label(effective_switches(config, device))}
    record = {"steps": base["steps"], "loss_trace": losses, "cost": cost,
              "parameters": sum(p.numel() for p in model.parameters())}
    ckpt.write_json(out_dir / "train.json", record)
    (out_dir / "train_state.pt").unlink(missing_ok=True)
    return record


def evaluator_path(folder: str | Path) -> Path:
    return Path(folder) / EVALUATOR_WEIGHTS


def train_evaluator(config: dict, data_path: str | Path, out_dir: str | Path) -> dict:
    ev = config["evaluator"]
    data = ImageData.load(data_path)
    device = setup_runtime(config)
    generator = seed_everything(ev.get("seed", 0))
    c, h, _ = data.image_shape
    model = build_classifier(ev["arch"], c, data.num_classes)
    train_classifier(model, to_float(data.train_x), torch.as_tensor(data.train_y), epochs=ev["epochs"],
                     batch_size=ev["batch_size"], lr=ev["lr"], generator=generator, device=device,
                     hflip=config["base"].get("hflip", False))
    ckpt.require_finite(model, "evaluator training ended with non-finite weights",
                        "Lower 'evaluator.lr'; nothing was saved.")
    acc = classifier_accuracy(model, to_float(data.test_x), torch.as_tensor(data.test_y))
    out_dir = Path(out_dir)
    ckpt.save_tensors(evaluator_path(out_dir), model.state_dict())
    record = {"test_accuracy": acc, "arch": ev["arch"], "in_channels": c, "num_classes": data.num_classes,
              "image_size": h, "n_test": len(data.test_x)}
    ckpt.write_json(out_dir / "evaluator.json", record)
    print(f"evaluator test accuracy: {acc:.2f}%")
    return record


def load_evaluator(folder: str | Path, device) -> torch.nn.Module:
    info = ckpt.read_json(Path(folder) / "evaluator.json")
    weights = ckpt.load_tensors(evaluator_path(folder))
    try:
        model = build_classifier(info["arch"], info["in_channels"], info["num_classes"])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as exc:  # a record or weights of another version, or overwritten by hand
        raise MissingResourceError(f"the evaluator in {folder} does not match its evaluator.json ({exc}): delete the "
                                   "folder and rerun, the train_evaluator job remakes it") from None
    return model.to(device).eval()


# ---------------------------------------------------------------- priors and unlearning
def _context(config, method, params, data, device, seed, meter, original_dir, forget_class=None, priors=None, out_dir=None,
             state_path=None, prior=None, state_key=None):
    """The RunContext of a method's stage: unlearn() if prior is None, else that prior's run()."""
    if forget_class is not None and not 0 <= forget_class < data.num_classes:
        raise UserError(f"forget class {forget_class} is out of range: the dataset's classes are 0..{data.num_classes - 1}")
    expect = ckpt.unet_expectations(config, data.num_classes)
    module = load_method(method)
    if prior is None:
        params = MethodParams(params, method)
        config = DeclaredSections(config, module.SECTIONS, f"unlearn() of method {method!r}",
                                  "SECTIONS = (...) in its method file")
    else:
        declared = prior_by_name(module, prior)  # a prior sees only the params and sections it declares
        params = MethodParams(params, method) if declared.params is None else DeclaredParams(params, declared, method)
        config = DeclaredSections(config, declared.sections, f"prior {prior!r} of method {method!r}",
                                  "Prior(..., sections=...)")

    def load_original(ema: bool = False):
        model = ckpt.load_unet(Path(original_dir) / ("unet_ema" if ema else "unet"), expect=expect)
        return prepare_model(model, config, device).train()

    return RunContext(config=config, params=params, data=data, schedule=Schedule.from_config(config), device=device,
                      seed=seed, generator=device_generator(seed, device), meter=meter, load_original=load_original,
                      forget_class=forget_class, priors=priors or {}, out_dir=out_dir, state_path=state_path,
                      state_key=state_key, diverged_hint=diverged_hint(method, params))


def diverged_hint(method: str, params) -> str:
    where = f"method_params.{method}.lr = {params['lr']}" if "lr" in params else f"method_params.{method}"
    return f"Its training diverged: lower its learning rate ({where}) or check its loss; nothing was saved."


def method_code_digest(method: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in load_method(method).SOURCES:  # a variant's file and its base's
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    seed_everything(seed)
    return torch.Generator(device=device).manual_seed(seed)


def parse_overrides(items: list[str] | None) -> dict:
    """['lambda=50'] -> {'lambda': 50.0}; values parsed as YAML scalars."""
    from .config import parse_yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key] = parse_yaml(value)
    return out


def run_prior(config: dict, method_name: str, prior_name: str, data_path, original_dir, out_dir,
              forget_class: int | None = None, required: dict | None = None) -> dict:
    module = load_method(method_name)
    prior = prior_by_name(module, prior_name)
    check_priors(required)
    check_original(original_dir)
    params = method_params(config, method_name, module)
    data = ImageData.load(data_path)
    device = setup_runtime(config)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Not from config["seeds"]: a prior is made once for all seeds, and `seeds` is not part of its fingerprint,
    # so a cached prior must not depend on it.
    seed = forget_class if forget_class is not None else 999
    bf16_before = bf16_uses()
    with CostMeter(device) as meter:
        ctx = _context(config, method_name, params, data, device, seed, meter, original_dir, forget_class,
                       {k: Path(v) for k, v in (required or {}).items()}, tmp, prior=prior_name)
        prior.run(ctx)
    where = f"prior {prior_name!r} of method {method_name!r}"
    if not any(tmp.iterdir()):
        raise UserError(f"{where} wrote nothing to ctx.out_dir ({tmp}): unlearn() would find no prior; save its "
                        "result there")
    if meter.timed_blocks == 0:
        raise UserError(f"{where} timed nothing, so its cost would read 0 min: wrap its computation (not its file "
                        "writing) in `with ctx.meter.timed():`")
    cost = meter.result()
    cost["requires"] = sorted(required or {})
    cost["files"] = prior_files(tmp)
    cost["speed_switches"] = switches_label(switches_that_ran(config, device, bf16_uses() > bf16_before))
    ckpt.write_json(tmp / "cost.json", cost)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return cost


def prior_files(folder) -> dict[str, int]:
    """A prior folder's files (but cost.json) and their sizes, as its job wrote them."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "cost.json"}


def check_priors(priors: dict | None) -> None:
    """Each prior folder still holds the files its job recorded. Its job's output is cost.json alone, so a file
    deleted or cut short later would otherwise fail to load with advice that a plain rerun cannot follow."""
    for name, folder in (priors or {}).items():
        folder = Path(folder)
        recorded = ckpt.read_json(folder / "cost.json").get("files")
        if recorded is None:  # written by an older version, which did not record them
            continue
        have = prior_files(folder)
        lost = [f"{f} ({'missing' if f not in have else f'{have[f]} bytes, written {size}'})"
                for f, size in recorded.items() if have.get(f) != size]
        if lost:
            raise MissingResourceError(
                f"prior {name!r} in {folder} no longer holds what its job wrote: {', '.join(lost)}. Delete the "
                f"folder {folder} and run snakemake again: it redoes the prior and what was made from it")


def check_original(original_dir) -> None:
    """Both weight folders of the original model are whole, before a method's loop runs: a corrupt file found after
    it (e.g. by original_weights_in) would cost every step, at paper scale hours."""
    for sub in ("unet", "unet_ema"):
        ckpt.check_unet_folder(Path(original_dir) / sub)


def unlearning_state_key(config: dict, method: str, params: dict, seed: int, forget_class: int, original_dir,
                         priors: dict | None) -> str:
    """What a resumable unlearning state belongs to: its config, params, seed, class and method code, and what
    it starts from (the original weights, the priors' files). A rerun after any of them changed starts over."""
    return config_hash({"stage": fingerprint(config, "method", method), "params": params, "seed": seed,
                        "forget_class": forget_class, "code": method_code_digest(method),
                        "original": [ckpt.folder_digest(Path(original_dir) / sub) for sub in ("unet", "unet_ema")],
                        "priors": {k: ckpt.folder_digest(v) for k, v in sorted((priors or {}).items())}})


def original_weights_in(model, original_dir) -> str | None:
    """Which of the original model's weight folders (unet, unet_ema) `model` equals bit for bit, if any."""
    return next((sub for sub in ("unet", "unet_ema") if ckpt.same_weights(model, Path(original_dir) / sub)), None)


def run_unlearning(config: dict, method_name: str, forget_class: int, seed: int, data_path, original_dir, out_dir,
                   priors: dict | None = None, overrides: dict | None = None) -> dict:
    module = load_method(method_name)
    missing = [p.name for p in module.PRIORS if p.name not in (priors or {})]
    if missing:
        raise UserError(f"method {method_name!r} needs its prior(s) {', '.join(missing)}: pass "
                        f"--priors {' '.join(f'{name}=DIR' for name in missing)} with the folders `unlearnbench prior` "
                        "wrote (the workflow passes them)")
    check_priors(priors)
    if overrides:  # --set, checked as the config's method_params are
        from .config import checked_params

        overrides, problems = checked_params(module, overrides, ("--set",))
        if problems:
            raise UserError(f"{method_name}: {'; '.join(problems)}")
    params, origins = method_params(config, method_name, module, overrides, with_origins=True)
    check_original(original_dir)  # its EMA weights are compared only after the loop (original_weights_in)
    data = ImageData.load(data_path)
    device = setup_runtime(config)
    out_dir = Path(out_dir)
    bf16_before = bf16_uses()
    with CostMeter(device) as meter:
        # The resumable state lives beside the outputs, which Snakemake removes after a failure; it does not.
        state_key = unlearning_state_key(config, method_name, params, seed, forget_class, original_dir, priors)
        ctx = _context(config, method_name, params, data, device, seed * 1000 + forget_class, meter, original_dir,
                       forget_class, {k: Path(v) for k, v in (priors or {}).items()}, state_path=out_dir / "unlearn_state.pt",
                       state_key=state_key)
        model = module.unlearn(ctx)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "save_pretrained"):
            raise UserError(f"unlearn() of method {method_name!r} returned {type(model).__name__}; it must return "
                            "the unlearned UNet (the model it got from ctx.load_original, trained)")
        if meter.timed_blocks == 0:  # e.g. the original returned untouched: RTE 0 and the base model's metrics
            raise UserError(f"unlearn() of method {method_name!r} ran no timed step: run its loop through "
                            "ctx.run_steps(steps, step_fn, desc=...), which times it (the RTE)")
        run = method_name + (f" with {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else "")
        ckpt.require_finite(model, f"{run} (forget class {forget_class}, seed {seed}) ended with non-finite weights",
                            diverged_hint(method_name, params))
    if weights := original_weights_in(model, original_dir):  # else the original would be scored as unlearned
        raise UserError(f"unlearn() of method {method_name!r} returned the original model's weights "
                        f"({weights}/) unchanged: its loop changed nothing. Check that its optimizer holds the "
                        "parameters of the model it returns and that each step calls optimizer.step() (a zero "
                        "learning rate or an all-zero mask also leave it unchanged)")
    cost = meter.result()
    prior_min = prior_shared_min = 0.0  # the shared priors serve every forget class: reported apart, once
    scopes = {prior.name: prior.scope for prior in module.PRIORS}
    for name, folder in (priors or {}).items():
        minutes = ckpt.read_json(Path(folder) / "cost.json")["rte_min"]
        prior_min += minutes
        prior_shared_min += minutes if scopes.get(name) == "shared" else 0.0
    record = {"method": method_name, "forget_class": forget_class, "seed": seed, "params": params,
              "param_origins": origins, "prior_min": prior_min if priors else None,
              "prior_shared_min": prior_shared_min if priors else None, **cost,
              "speed_switches": switches_label(switches_that_ran(config, device, bf16_uses() > bf16_before))}
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.save_unet(model, out_dir / "unet")
    ckpt.write_json(out_dir / "cost.json", record)
    print(f"{method_name} forgot class {forget_class} (seed {seed}) in {cost['rte_min']:.3f} min")
    return record


IMPORTED_COST_REASON = "imported: unlearned outside the suite, its cost was not measured"


def import_model(config: dict, name: str, forget_class: int, seed: int, data_path, original_dir, out_dir) -> dict:
    """An unlearned model made elsewhere (config `imported`), checked and saved as the workflow's own model folder,
    so that it is evaluated exactly as the methods' models are. Its cost.json has no RTE or GPU figure."""
    src = imported_model_dir(config, name, forget_class, seed)
    expect = ckpt.unet_expectations(config, ImageData.load(data_path).num_classes)
    model = ckpt.load_users_unet(src, expect, f"imported model {src}",
                                 f"replace the folder, or take {name!r} out of 'imported'", imported_architecture_fix(name))
    if weights := original_weights_in(model, original_dir):  # the wrong folder: it would be scored as unlearned
        raise UserError(f"imported model {src} ({name}, forget class {forget_class}) holds the run's original "
                        f"model ({weights}/) unchanged: point 'imported.{name}' to the unlearned models")
    out_dir = Path(out_dir)
    ckpt.save_unet(model, out_dir / "unet")
    record = {"method": name, "forget_class": forget_class, "seed": seed, "params": None, "prior_min": None,
              "rte_s": None, "rte_min": None, "gpu_peak_gb": None, "gpu_null_reason": IMPORTED_COST_REASON,
              "imported_from": str(src.resolve()), "source_digest": ckpt.folder_digest(src)}
    ckpt.write_json(out_dir / "cost.json", record)
    print(f"imported {src} as {name} (forget class {forget_class}, seed {seed})")
    return record


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
    return {"model_dir": str(model_dir), "model_digest": ckpt.folder_digest(model_dir), "seed": seed,
            "forget_class": forget_class, "sampler": sampler_name(config), **config["sampler"],
            "counts": {str(k): v for k, v in sample_counts(config, num_classes, forget_class).items()}}


def generate_samples(config: dict, model_dir, out_path, seed: int, forget_class: int | None, num_classes: int) -> dict:
    """Sample the configured images per class with the evaluation sampler; npz + PNG grid."""
    device = setup_runtime(config)
    model = prepare_model(ckpt.load_unet(model_dir), config, device, sampling=True)
    counts = sample_counts(config, num_classes, forget_class)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in counts.items()])
    generator = torch.Generator().manual_seed(sampling_seed(seed, forget_class))
    images = sample_as_configured(model, config, labels, generator, device, progress=True)
    meta = {**sample_meta(config, model_dir, seed, forget_class, num_classes), "device_name": device_name(device),
            "speed_switches": switches_label(effective_switches(config, device, sampling=True))}
    save_samples(out_path, to_uint8(images), labels.numpy(), meta)
    return meta


def presampled_matches(config: dict, presampled, model_dir, seed: int, forget_class: int | None, num_classes: int) -> bool:
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


def evaluate_model(config: dict, model_dir, data_path, samples_path, evaluator_dir, reference_path, forget_class: int,
                   seed: int, method: str, variant: str, cost_path=None, out_path=None, config_path=None,
                   presampled=None) -> dict:
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
    return score(config, samples_path, evaluator_dir, reference_path, forget_class, seed, method, variant, cost_path,
                 out_path, config_path)


def evaluate_at_weights(config: dict, weights, model_dir, data_path, evaluator_dir, references: dict, seed: int,
                        method: str, variant: str, cost_path, samples_paths, out_paths, config_path=None) -> list[dict]:
    """One model sampled and scored at each guidance weight (the guidance sweep), in one process: `samples_paths`
    has one file per weight, `out_paths` one record per weight and class of `references`, weight by weight.
    The original model (variant "original") is sampled once per weight for every class, as in its main evaluation."""
    classes = list(references)
    if len(samples_paths) != len(weights) or len(out_paths) != len(weights) * len(classes):
        raise UserError(f"{len(weights)} guidance weights and {len(classes)} forget classes need {len(weights)} "
                        f"--samples and {len(weights) * len(classes)} --out paths (weight by weight), got "
                        f"{len(samples_paths)} and {len(out_paths)}")
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
        generate_samples(at_w, model_dir, samples_path, seed, None if variant == "original" else classes[0], num_classes)
        outs = dict(zip(classes, out_paths[i * len(classes):(i + 1) * len(classes)]))
        records += score_classes(at_w, samples_path, evaluator_dir, references, seed, method, variant, cost_path, outs,
                                 at_w_path)
    return records


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
            raise UserError(f"{path} is not a samples file (it holds {sorted(f.files)}); pass one written by "
                            "`unlearnbench sample` or `evaluate`")
        return f["images"], f["labels"], json.loads(str(f["meta"]))


def save_grid(path, images: np.ndarray, labels: np.ndarray, per_class: int = 8) -> None:
    """One row per class, the first images of each: a quick look at what a model generates."""
    from PIL import Image

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


def fid_features(config: dict, evaluator_dir, device):
    from metrics.fid import feature_extractor

    fid = config["fid"]
    if fid["backend"] == "classifier":
        return feature_extractor("classifier", classifier=load_evaluator(evaluator_dir, device), device=device)
    return feature_extractor("inception", device=device, weights_dir=fid.get("weights_dir"))


def write_fid_references(config: dict, data_path, evaluator_dir, out_paths: dict) -> dict:
    """Feature statistics of the real train images of the remaining classes, one file per forget class
    ({forget class: npz path}). The features of every chosen real image are computed once and shared by
    all forget classes (one Inception pass over CIFAR-10's train set instead of one per class).
    """
    from metrics.fid import reference_statistics, save_statistics

    device = setup_runtime(config)
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
            parts.append(idx if n_per_class is None or n_per_class >= len(idx) else rng.choice(idx, n_per_class, replace=False))
        chosen[forget_class] = np.sort(np.concatenate(parts))
    union = np.unique(np.concatenate(list(chosen.values())))
    features = fid_features(config, evaluator_dir, device)(to_float(data.train_x[union]))
    counts = {}
    for forget_class, out in out_paths.items():
        stats = reference_statistics(features[np.searchsorted(union, chosen[forget_class])])  # keeps a feature subset for KID
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


def score(config: dict, samples_path, evaluator_dir, reference_path, forget_class: int, seed: int, method: str,
          variant: str, cost_path=None, out_path=None, config_path=None) -> dict:
    """All metrics of one (model, forget class, seed) from its saved samples; writes the per-job record."""
    return score_classes(config, samples_path, evaluator_dir, {forget_class: reference_path}, seed, method, variant,
                         cost_path, {forget_class: out_path} if out_path else None, config_path)[0]


def _check_pairing(reference_path, ref_meta: dict, samples_path, samples_meta: dict, forget_class: int,
                   backend: str) -> None:
    """The files a score pairs must be of the class it scores: a hand-run score given another class's reference
    or samples would write a plausible record of the wrong class."""
    problems = []
    if ref_meta.get("forget_class") != forget_class:
        problems.append(f"the FID reference {reference_path} leaves out class {ref_meta.get('forget_class')}")
    if ref_meta.get("backend") != backend:
        problems.append(f"the FID reference {reference_path} has {ref_meta.get('backend')} features, the config "
                        f"{backend}")
    if samples_meta.get("forget_class") not in (None, forget_class):  # None: the original's, scored for every class
        problems.append(f"the samples {samples_path} are of a model that forgot class {samples_meta['forget_class']}")
    if problems:
        raise UserError(f"scoring forgotten class {forget_class}: {'; '.join(problems)}; pass the files of that "
                        "class (the workflow does)")


def score_classes(config: dict, samples_path, evaluator_dir, references: dict, seed: int, method: str, variant: str,
                  cost_path=None, out_paths: dict | None = None, config_path=None) -> list[dict]:
    """Metrics of one model's saved samples for each forget class in `references` ({class: reference npz}).

    The evaluator's probabilities and FID features are computed once for all samples; each forget class
    then takes its own slices (the original model is scored for every class from one sample set).
    """
    from metrics.fid import feature_statistics, frechet_distance, kid_from_features, load_statistics
    from metrics.forgetting import accuracy, entropy, mean_class_probability, softmax_probabilities, unlearning_accuracy

    device = setup_runtime(config)
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
        remain_idx = np.concatenate([np.flatnonzero(labels == c)[: ev["n_per_remaining_class"]]
                                     for c in np.unique(labels) if c != forget_class])
        probs_f, probs_r = probs[forget_idx], probs[remain_idx]
        ref = load_statistics(reference_path)
        _check_pairing(reference_path, ref["meta"], samples_path, meta, forget_class, config["fid"]["backend"])
        mu, sigma = feature_statistics(features[remain_idx])
        record = {
            "method": method, "variant": variant, "forget_class": forget_class, "seed": seed,
            "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
            "kid": kid_from_features(features[remain_idx], ref["features"]),
            "H": entropy(probs_f), "UA": unlearning_accuracy(probs_f, forget_class),
            "forget_prob": mean_class_probability(probs_f, forget_class),
            "remaining_acc": accuracy(probs_r, labels[remain_idx]),
        }
        record["cost"] = {k: cost.get(k) for k in ("rte_s", "rte_min", "gpu_peak_gb", "gpu_peak_source", "gpu_null_reason",
                                                   "torch_peak_allocated_gb", "torch_peak_reserved_gb", "host_rss_peak_gb",
                                                   "device", "device_name", "speed_switches", "units")}
        record["prior_min"] = cost.get("prior_min")
        record["prior_shared_min"] = cost.get("prior_shared_min")
        record["imported_from"] = cost.get("imported_from")
        record["params"] = cost.get("params")
        record["param_origins"] = cost.get("param_origins")
        record["provenance"] = {
            "run_name": config["run_name"], "config_hash": config_hash(config), "config_path": str(config_path or ""),
            "dataset": config["dataset"], "seed": seed,
            "sampler": sampler_name(config),
            "sampler_steps": s["steps"], "eta": s["eta"], "guidance_w": s["guidance_w"],
            "n_forget_samples": int(len(forget_idx)), "n_fid_gen_per_class": ev["n_per_remaining_class"],
            "n_fid_gen": int(len(remain_idx)), "n_fid_real": int(ref["meta"]["n"]), "fid_backend": config["fid"]["backend"],
            "device_name": record["cost"].get("device_name"),  # the cost's: None where none was measured
            "sampling_device_name": meta.get("device_name"), "versions": versions(),
            "model_digest": meta.get("model_digest"),  # the exact weights sampled (ties a row to a user's checkpoint)
        }
        if out_paths:
            ckpt.write_json(out_paths[forget_class], record)
        records.append(record)
    return records


def denoiser_norms(config: dict, model_dir, data_path, forget_class: int, seed: int, variant: str, out_path) -> dict:
    """The finding study's eps check (metrics.denoiser): how large the model's noise predictions are under the
    forgotten label, the remaining classes' own labels and the null label, on noised real training images."""
    from metrics.denoiser import eps_mean_squares

    from .data import class_subset
    from .networks import null_class

    device = setup_runtime(config)
    data = ImageData.load(data_path)
    model = ckpt.load_unet(model_dir).to(device).eval()
    x_f, _ = class_subset(data.train_x, data.train_y, [forget_class])
    x_r, y_r = class_subset(data.train_x, data.train_y, [c for c in range(data.num_classes) if c != forget_class])
    schedule = Schedule.from_config(config)
    norms = eps_mean_squares(model, schedule, to_float(x_f), to_float(x_r), torch.as_tensor(y_r), forget_class,
                             null_class(model), torch.Generator().manual_seed(sampling_seed(seed, forget_class)))
    record = {"variant": variant, "forget_class": forget_class, "seed": seed, "eps_mean_square": norms,
              "model_dir": str(model_dir), "model_digest": ckpt.folder_digest(model_dir)}
    ckpt.write_json(out_path, record)
    print(f"{variant} (class {forget_class}, seed {seed}): mean eps^2 " + ", ".join(f"{k} {v:.3f}" for k, v in norms.items()))
    return record


def summarize_original(config: dict, samples_path, evaluator_dir, records: list, evaluator_record, out_path) -> dict:
    """results/original.json: the evaluator's accuracy on the original model's samples, per class, and its FIDs."""
    from metrics.forgetting import softmax_probabilities

    device = setup_runtime(config)
    images, labels, _ = load_samples(samples_path)
    preds = softmax_probabilities(load_evaluator(evaluator_dir, device), to_float(images)).argmax(1)
    per_class = {str(int(c)): float(100.0 * np.mean(preds[labels == c] == c)) for c in np.unique(labels)}
    recs = [ckpt.read_json(r) for r in records]
    out = {"sample_accuracy": float(100.0 * np.mean(preds == labels)), "sample_accuracy_per_class": per_class,
           "n_samples": int(len(labels)),
           "evaluator_test_accuracy": ckpt.read_json(evaluator_record)["test_accuracy"],
           "fid_remaining": {str(r["forget_class"]): r["fid"] for r in recs},
           "UA": {str(r["forget_class"]): r["UA"] for r in recs},
           "fid_backend": config["fid"]["backend"], "sampler": config["sampler"]}
    ckpt.write_json(out_path, out)
    return out


def render_figures(config: dict, kind: str, *, metrics=None, samples=None, forget_class=None, out_dir=None, out=None):
    """Figures from aggregated CSVs and saved samples only: no model is loaded or run."""
    import pandas as pd

    from . import figures
    from .report import display_name

    methods = evaluated_methods(config)
    colors = figures.method_colors(["original", *methods])  # alike in every figure of the run
    if metrics:
        check_unedited(metrics)  # a figure shows the records, not a hand edit of their table
    if kind == "summary":
        df = pd.read_csv(metrics)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        figures.cost_bars(df, config["methods"], Path(out_dir) / "cost.png", colors)  # imported models have no cost
        figures.per_class_metrics(df, ["original", *methods], Path(out_dir) / "per_class.png", colors)
    elif kind == "samples":
        labels = [display_name(m) for m in ("original", *methods)]
        figures.sample_grid(dict(zip(labels, samples)), forget_class, out, n=config["evaluation"].get("grid_images", 16))
    elif kind == "ablation":
        abl = config["ablation"]
        main_value = main_param_value(config, abl["method"], abl["param"])
        figures.psi_ablation(pd.read_csv(metrics), out, method=abl["method"], param=abl["param"], main_value=main_value,
                             color=colors.get(abl["method"]),
                             forget_class=abl["forget_class"])
    elif kind == "guidance":
        figures.guidance_curves(pd.read_csv(metrics), out, config["sampler"]["guidance_w"], colors)
    elif kind == "finding":
        figures.finding_bars(pd.read_csv(metrics), out, colors.get(config["finding"]["method"], figures.ORIGINAL_COLOR))
    else:
        raise UserError(f"unknown figure kind {kind!r}")
