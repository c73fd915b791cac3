"""What a benchmark run works on: synthetic data, a randomly initialised original model, config variants of each
precision and switch, and the workflow's RunContext with every loop step timed (harness.py measures with them).

It knows no method by name: a method's priors, steps and batch sizes come from its file."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..acceleration import maybe_compile
from ..checkpoints import save_unet
from ..context import RunContext
from ..data import ImageData
from ..method_api import Prior
from ..networks import build_unet
from ..settings import Runtime
from ..stages import _context
from .instruments import StepClock, SyncCounter

PRECISIONS = {  # precision -> performance switches it sets (the others come from the config)
    "fp32": {"bf16": False, "tf32": False},
    "tf32": {"bf16": False, "tf32": True},
    "bf16": {"bf16": True, "tf32": True},
}


@dataclasses.dataclass
class BenchContext(RunContext):
    """The workflow's RunContext, with every step of the method's loop timed by `clock`."""

    clock: StepClock | None = None
    syncs: SyncCounter | None = None

    def progress(self, iterable, desc: str):
        return self.clock.wrap(iterable, desc) if self.clock else super().progress(iterable, desc)

    def run_steps(self, steps: int, step_fn, *, desc: str, **kwargs):
        marks = self.clock.new_loop(desc) if self.clock else None

        def timed_step(i):
            if marks is not None and not marks:
                marks.append(self.clock.mark())
            if self.syncs is not None:
                self.syncs.step(i, step_fn)
            else:
                step_fn(i)
            if marks is not None:
                marks.append(self.clock.mark())

        return super().run_steps(steps, timed_step, desc=desc, **kwargs)


def make_context(
    config,
    method,
    params,
    data,
    device,
    seed,
    meter,
    original_dir,
    *,
    clock=None,
    rows=None,
    syncs=None,
    forget_class=None,
    priors=None,
    out_dir=None,
    prior=None,
) -> BenchContext:
    """stages._context's RunContext (the one `unlearnbench unlearn`/`prior` use), instrumented, with
    load_original passing through acceleration.maybe_compile (idempotent if the stage compiles too).
    `rows` (a RowCounter) is attached to the models only when they are not compiled."""
    base = _context(
        config, method, params, data, device, seed, meter, original_dir, forget_class, priors, out_dir, prior=prior
    )
    ctx = BenchContext(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}, clock=clock, syncs=syncs
    )
    load = base.load_original
    perf = Runtime.parse(config).performance
    count = rows is not None and not (perf.compile and torch.device(device).type == "cuda")

    def load_original(ema: bool = False):
        model = load(ema)
        if count:
            rows.attach(model)
        return maybe_compile(model, perf, device)

    ctx.load_original = load_original
    return ctx


def synthetic_data(
    shape: tuple[int, int, int],
    per_class: int,
    num_classes: int = 10,
    seed: int = 0,
    forget_class: int = 0,
    forget_count: int | None = None,
) -> ImageData:
    """Random uint8 images (costs do not depend on pixel values), `per_class` per class."""
    rng = np.random.default_rng(seed)
    counts = [
        forget_count if (c == forget_class and forget_count is not None) else per_class for c in range(num_classes)
    ]
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    ty = np.repeat(np.arange(num_classes, dtype=np.int64), 2)
    tx = rng.integers(0, 256, size=(len(ty), *shape), dtype=np.uint8)
    return ImageData(x, y, tx, ty)


def save_original(config: dict, num_classes: int, folder: Path) -> int:
    """A randomly initialised UNet of the config's preset as unet/ and unet_ema/ (same weights)."""
    torch.manual_seed(0)
    model = build_unet(config["model"]["preset"], num_classes, config["model"].get("overrides"))
    save_unet(model, folder / "unet")
    save_unet(model, folder / "unet_ema")
    return sum(p.numel() for p in model.parameters())


def variant_config(config: dict, precision: str | None = None, switches: dict | None = None) -> dict:
    cfg = copy.deepcopy(config)
    perf = dict(cfg.get("performance") or {})
    perf.update(PRECISIONS.get(precision, {}))
    for key, value in (switches or {}).items():
        if key == "deterministic":
            cfg["deterministic"] = value
        else:
            perf[key] = value
    cfg["performance"] = perf
    return cfg


def priors_in_order(module) -> list[Prior]:
    """A method's PRIORS, each after the priors it requires (method_api has refused cycles), else as declared."""
    by_name = {p.name: p for p in module.PRIORS}
    done: dict[str, Prior] = {}

    def visit(prior: Prior) -> None:
        for required in prior.requires:
            if required not in done:
                visit(by_name[required])
        done.setdefault(prior.name, prior)

    for prior in module.PRIORS:
        visit(prior)
    return list(done.values())


def published_steps(module) -> int | None:
    """The steps of a method as published: its file's DEFAULTS (a variant's: its base's), the paper's scale."""
    steps = module.PUBLISHED_DEFAULTS.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def batch_sizes(params: dict) -> list[int]:
    return [int(v) for k, v in params.items() if k.endswith("batch_size") and isinstance(v, int)]
