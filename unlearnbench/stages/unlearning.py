"""A method's stages: its priors and its unlearning run (the RTE), checked before and after; models made
elsewhere adopted as the methods' own (import_model)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from .. import checkpoints as ckpt
from ..acceleration import switches_label, switches_that_ran
from ..config import (
    checked_params,
    config_hash,
    imported_architecture_fix,
    imported_model_dir,
    method_params,
    parse_yaml,
)
from ..context import DeclaredParams, DeclaredSections, MethodParams, RunContext
from ..cost import CostMeter
from ..data import ImageData
from ..diffusion import Schedule
from ..errors import MissingResourceError, UserError
from ..method_api import load_method, prior_by_name
from ..settings import Runtime, Settings
from ..training import bf16_uses, prepare_model, setup_runtime
from ..workflow import fingerprint
from .foundation import device_generator


# ---------------------------------------------------------------- priors and unlearning
def _context(
    config,
    method,
    params,
    data,
    device,
    seed,
    meter,
    original_dir,
    forget_class=None,
    priors=None,
    out_dir=None,
    state_path=None,
    prior=None,
    state_key=None,
):
    """The RunContext of a method's stage: unlearn() if prior is None, else that prior's run()."""
    if forget_class is not None and not 0 <= forget_class < data.num_classes:
        raise UserError(
            f"forget class {forget_class} is out of range: the dataset's classes are 0..{data.num_classes - 1}"
        )
    settings = Settings.parse(config)  # the whole config's, before the method's view of it below
    expect = ckpt.unet_expectations(settings.model, data.num_classes)
    module = load_method(method)
    if prior is None:
        params = MethodParams(params, method)
        config = DeclaredSections(
            config, module.SECTIONS, f"unlearn() of method {method!r}", "SECTIONS = (...) in its method file"
        )
    else:
        declared = prior_by_name(module, prior)  # a prior sees only the params and sections it declares
        params = MethodParams(params, method) if declared.params is None else DeclaredParams(params, declared, method)
        config = DeclaredSections(
            config, declared.sections, f"prior {prior!r} of method {method!r}", "Prior(..., sections=...)"
        )

    def load_original(ema: bool = False):
        model = ckpt.load_unet(Path(original_dir) / ("unet_ema" if ema else "unet"), expect=expect)
        return prepare_model(model, settings.runtime.performance, device).train()

    return RunContext(
        config=config,
        params=params,
        data=data,
        schedule=Schedule.of(settings.diffusion),
        device=device,
        seed=seed,
        generator=device_generator(seed, device),
        meter=meter,
        load_original=load_original,
        runtime=settings.runtime,
        forget_class=forget_class,
        priors=priors or {},
        out_dir=out_dir,
        state_path=state_path,
        state_key=state_key,
        diverged_hint=diverged_hint(method, params),
    )


def diverged_hint(method: str, params) -> str:
    where = f"method_params.{method}.lr = {params['lr']}" if "lr" in params else f"method_params.{method}"
    return f"Its training diverged: lower its learning rate ({where}) or check its loss; nothing was saved."


def method_code_digest(method: str) -> str:

    digest = hashlib.sha256()
    for path in load_method(method).SOURCES:  # a variant's file and its base's
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def parse_overrides(items: list[str] | None) -> dict:
    """['lambda=50'] -> {'lambda': 50.0}; values parsed as YAML scalars."""

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key] = parse_yaml(value)
    return out


def run_prior(
    config: dict,
    method_name: str,
    prior_name: str,
    data_path,
    original_dir,
    out_dir,
    forget_class: int | None = None,
    required: dict | None = None,
) -> dict:
    module = load_method(method_name)
    prior = prior_by_name(module, prior_name)
    check_priors(required)
    check_original(original_dir)
    params = method_params(config, method_name, module)
    data = ImageData.load(data_path)
    runtime = Runtime.parse(config)
    device = setup_runtime(runtime)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Not from config["seeds"]: a prior is made once for all seeds, and `seeds` is not part of its fingerprint,
    # so a cached prior must not depend on it.
    seed = forget_class if forget_class is not None else 999
    bf16_before = bf16_uses()
    with CostMeter(device) as meter:
        ctx = _context(
            config,
            method_name,
            params,
            data,
            device,
            seed,
            meter,
            original_dir,
            forget_class,
            {k: Path(v) for k, v in (required or {}).items()},
            tmp,
            prior=prior_name,
        )
        prior.run(ctx)
    where = f"prior {prior_name!r} of method {method_name!r}"
    if not any(tmp.iterdir()):
        raise UserError(
            f"{where} wrote nothing to ctx.out_dir ({tmp}): unlearn() would find no prior; save its result there"
        )
    if meter.timed_blocks == 0:
        raise UserError(
            f"{where} timed nothing, so its cost would read 0 min: wrap its computation (not its file "
            "writing) in `with ctx.meter.timed():`"
        )
    cost = meter.result()
    cost["requires"] = sorted(required or {})
    cost["files"] = prior_files(tmp)
    cost["speed_switches"] = switches_label(switches_that_ran(runtime, device, bf16_uses() > bf16_before))
    ckpt.write_json(tmp / "cost.json", cost)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return cost


def prior_files(folder) -> dict[str, int]:
    """A prior folder's files (but cost.json) and their sizes, as its job wrote them."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "cost.json"
    }


def check_priors(priors: dict | None) -> None:
    """Each prior folder still holds the files its job recorded. Its job's output is cost.json alone, so a file
    deleted or cut short later would otherwise fail to load with advice that a plain rerun cannot follow."""
    for name, folder in (priors or {}).items():
        folder = Path(folder)
        recorded = ckpt.read_json(folder / "cost.json").get("files")
        if recorded is None:  # written by an older version, which did not record them
            continue
        have = prior_files(folder)
        lost = [
            f"{f} ({'missing' if f not in have else f'{have[f]} bytes, written {size}'})"
            for f, size in recorded.items()
            if have.get(f) != size
        ]
        if lost:
            raise MissingResourceError(
                f"prior {name!r} in {folder} no longer holds what its job wrote: {', '.join(lost)}. Delete the "
                f"folder {folder} and run snakemake again: it redoes the prior and what was made from it"
            )


def check_original(original_dir) -> None:
    """Both weight folders of the original model are whole, before a method's loop runs: a corrupt file found after
    it (e.g. by original_weights_in) would cost every step, at paper scale hours."""
    for sub in ("unet", "unet_ema"):
        ckpt.check_unet_folder(Path(original_dir) / sub)


def unlearning_state_key(
    config: dict, method: str, params: dict, seed: int, forget_class: int, original_dir, priors: dict | None
) -> str:
    """What a resumable unlearning state belongs to: its config, params, seed, class and method code, and what
    it starts from (the original weights, the priors' files). A rerun after any of them changed starts over."""
    return config_hash(
        {
            "stage": fingerprint(config, "method", method),
            "params": params,
            "seed": seed,
            "forget_class": forget_class,
            "code": method_code_digest(method),
            "original": [ckpt.folder_digest(Path(original_dir) / sub) for sub in ("unet", "unet_ema")],
            "priors": {k: ckpt.folder_digest(v) for k, v in sorted((priors or {}).items())},
        }
    )


def original_weights_in(model, original_dir) -> str | None:
    """Which of the original model's weight folders (unet, unet_ema) `model` equals bit for bit, if any."""
    return next((sub for sub in ("unet", "unet_ema") if ckpt.same_weights(model, Path(original_dir) / sub)), None)


def run_unlearning(
    config: dict,
    method_name: str,
    forget_class: int,
    seed: int,
    data_path,
    original_dir,
    out_dir,
    priors: dict | None = None,
    overrides: dict | None = None,
) -> dict:
    module = load_method(method_name)
    missing = [p.name for p in module.PRIORS if p.name not in (priors or {})]
    if missing:
        raise UserError(
            f"method {method_name!r} needs its prior(s) {', '.join(missing)}: pass "
            f"--priors {' '.join(f'{name}=DIR' for name in missing)} with the folders `unlearnbench prior` "
            "wrote (the workflow passes them)"
        )
    check_priors(priors)
    if overrides:  # --set, checked as the config's method_params are
        overrides, problems = checked_params(module, overrides, ("--set",))
        if problems:
            raise UserError(f"{method_name}: {'; '.join(problems)}")
    params, origins = method_params(config, method_name, module, overrides, with_origins=True)
    check_original(original_dir)  # its EMA weights are compared only after the loop (original_weights_in)
    data = ImageData.load(data_path)
    runtime = Runtime.parse(config)
    device = setup_runtime(runtime)
    out_dir = Path(out_dir)
    bf16_before = bf16_uses()
    with CostMeter(device) as meter:
        # The resumable state lives beside the outputs, which Snakemake removes after a failure; it does not.
        state_key = unlearning_state_key(config, method_name, params, seed, forget_class, original_dir, priors)
        ctx = _context(
            config,
            method_name,
            params,
            data,
            device,
            seed * 1000 + forget_class,
            meter,
            original_dir,
            forget_class,
            {k: Path(v) for k, v in (priors or {}).items()},
            state_path=out_dir / "unlearn_state.pt",
            state_key=state_key,
        )
        model = module.unlearn(ctx)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "save_pretrained"):
            raise UserError(
                f"unlearn() of method {method_name!r} returned {type(model).__name__}; it must return "
                "the unlearned UNet (the model it got from ctx.load_original, trained)"
            )
        if meter.timed_blocks == 0:  # e.g. the original returned untouched: RTE 0 and the base model's metrics
            raise UserError(
                f"unlearn() of method {method_name!r} ran no timed step: run its loop through "
                "ctx.run_steps(steps, step_fn, desc=...), which times it (the RTE)"
            )
        run = method_name + (f" with {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else "")
        ckpt.require_finite(
            model,
            f"{run} (forget class {forget_class}, seed {seed}) ended with non-finite weights",
            diverged_hint(method_name, params),
        )
    if weights := original_weights_in(model, original_dir):  # else the original would be scored as unlearned
        raise UserError(
            f"unlearn() of method {method_name!r} returned the original model's weights "
            f"({weights}/) unchanged: its loop changed nothing. Check that its optimizer holds the "
            "parameters of the model it returns and that each step calls optimizer.step() (a zero "
            "learning rate or an all-zero mask also leave it unchanged)"
        )
    cost = meter.result()
    prior_min = prior_shared_min = 0.0  # the shared priors serve every forget class: reported apart, once
    scopes = {prior.name: prior.scope for prior in module.PRIORS}
    for name, folder in (priors or {}).items():
        minutes = ckpt.read_json(Path(folder) / "cost.json")["rte_min"]
        prior_min += minutes
        prior_shared_min += minutes if scopes.get(name) == "shared" else 0.0
    record = {
        "method": method_name,
        "forget_class": forget_class,
        "seed": seed,
        "params": params,
        "param_origins": origins,
        "prior_min": prior_min if priors else None,
        "prior_shared_min": prior_shared_min if priors else None,
        **cost,
        "speed_switches": switches_label(switches_that_ran(runtime, device, bf16_uses() > bf16_before)),
    }
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
    expect = ckpt.unet_expectations(Settings.parse(config).model, ImageData.load(data_path).num_classes)
    model = ckpt.load_users_unet(
        src,
        expect,
        f"imported model {src}",
        f"replace the folder, or take {name!r} out of 'imported'",
        imported_architecture_fix(name),
    )
    if weights := original_weights_in(model, original_dir):  # the wrong folder: it would be scored as unlearned
        raise UserError(
            f"imported model {src} ({name}, forget class {forget_class}) holds the run's original "
            f"model ({weights}/) unchanged: point 'imported.{name}' to the unlearned models"
        )
    out_dir = Path(out_dir)
    ckpt.save_unet(model, out_dir / "unet")
    record = {
        "method": name,
        "forget_class": forget_class,
        "seed": seed,
        "params": None,
        "prior_min": None,
        "rte_s": None,
        "rte_min": None,
        "gpu_peak_gb": None,
        "gpu_null_reason": IMPORTED_COST_REASON,
        "imported_from": str(src.resolve()),
        "source_digest": ckpt.folder_digest(src),
    }
    ckpt.write_json(out_dir / "cost.json", record)
    print(f"imported {src} as {name} (forget class {forget_class}, seed {seed})")
    return record
