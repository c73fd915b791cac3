"""The method interface: one file methods/<name>.py per unlearning method, found by its name in the config.

A method file defines
    DEFAULTS: dict                      hyper-parameters (config `method_params.<name>` overrides them)
    PRIORS: list[Prior]                 work done once before unlearning (optional)
    def unlearn(ctx: UnlearnContext) -> torch.nn.Module
        runs the unlearning loop inside `with ctx.meter.timed():` and returns the model to evaluate.
A prior's `run(ctx: PriorContext)` writes its files into ctx.out_dir; the workflow caches each prior as its
own job: scope "shared" runs once for all forget classes, scope "per_class" once per forget class.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError

PACKAGE_METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"


@dataclass(frozen=True)
class Prior:
    name: str
    run: Callable
    scope: str = "shared"  # "shared" (all forget classes) or "per_class"
    requires: tuple[str, ...] = ()  # other priors of the same method, made first

    def __post_init__(self):
        if self.scope not in ("shared", "per_class"):
            raise ValueError(f"prior {self.name}: scope must be 'shared' or 'per_class', got {self.scope!r}")


def methods_dir(explicit: str | Path | None = None) -> Path:
    """methods/ of the working directory (a user's workflow copy) first, else the installed one."""
    if explicit:
        return Path(explicit)
    local = Path.cwd() / "methods"
    return local if local.is_dir() else PACKAGE_METHODS_DIR


def available_methods(directory: str | Path | None = None) -> list[str]:
    d = methods_dir(directory)
    return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))


def load_method(name: str, directory: str | Path | None = None):
    """Import methods/<name>.py and check it offers the interface."""
    path = methods_dir(directory) / f"{name}.py"
    if not path.exists():
        raise UserError(f"method {name!r} not found: no file {path}. Available: {', '.join(available_methods(directory))}")
    module_name = f"unlearnbench_methods.{name}"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "unlearn", None)):
        raise UserError(f"method file {path} must define unlearn(ctx) (see unlearnbench/method_api.py)")
    module.DEFAULTS = dict(getattr(module, "DEFAULTS", {}))
    module.PRIORS = list(getattr(module, "PRIORS", []))
    names = [p.name for p in module.PRIORS]
    for prior in module.PRIORS:
        missing = [r for r in prior.requires if r not in names]
        if missing:
            raise UserError(f"method {name}: prior {prior.name} requires unknown prior(s) {missing}")
    return module


def prior_by_name(module, name: str) -> Prior:
    for prior in module.PRIORS:
        if prior.name == name:
            return prior
    raise UserError(f"method has no prior {name!r}; it declares {[p.name for p in module.PRIORS]}")


@dataclass
class RunContext:
    """What every stage of a method sees: config, params, data, schedule, device, seeds, cost meter."""

    config: dict
    params: dict
    data: object  # unlearnbench.data.ImageData
    schedule: object  # unlearnbench.diffusion.Schedule
    device: torch.device
    seed: int
    generator: torch.Generator  # on the device: timesteps, noise, label dropout
    meter: object  # unlearnbench.cost.CostMeter
    load_original: Callable  # load_original(ema: bool) -> UNet on the device, in train mode
    forget_class: int | None = None
    priors: dict = field(default_factory=dict)  # prior name -> folder it wrote
    out_dir: Path | None = None  # priors only: where to write

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def reduction(self) -> str:
        return self.config["diffusion"]["loss_reduction"]

    def images(self, classes) -> tuple[torch.Tensor, torch.Tensor]:
        """Real training images of the given classes as float [-1, 1] tensors, with labels."""
        from .data import class_subset, to_float

        x, y = class_subset(self.data.train_x, self.data.train_y, classes)
        return to_float(x), torch.as_tensor(y)

    def batches(self, classes, batch_size: int):
        """Endless seeded batches of real images of the given classes, on the device."""
        from .training import BatchStream

        x, y = self.images(classes)
        self._streams = getattr(self, "_streams", 0) + 1  # each stream its own seeded shuffling
        shuffle = torch.Generator().manual_seed(self.seed * 7 + self._streams)
        return BatchStream(x, y, batch_size, shuffle, self.device, hflip=self.config["base"].get("hflip", False))

    def remaining_classes(self) -> list[int]:
        return [c for c in range(self.num_classes) if c != self.forget_class]

    def autocast(self):
        from .training import autocast

        return autocast(self.config, self.device)

    def progress(self, iterable, desc: str):
        from .training import progress

        return progress(iterable, desc)


UnlearnContext = RunContext
PriorContext = RunContext
