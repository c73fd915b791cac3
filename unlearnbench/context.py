"""What a method's stages see: the RunContext (config, params, data, schedule, device, seeds, cost meter, and the
helpers a loop needs), and the views that let a stage read only what it declared (method_api.py: SECTIONS, a
prior's params and sections), so that a cached result never depends on what its fingerprint does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import require_finite
from .data import class_subset, to_float
from .diffusion import epsilon_loss, sample_as_configured
from .errors import UndeclaredError, UserError, did_you_mean
from .method_api import GUARDED_SECTIONS, RUN_SCOPE_KEYS, Prior
from .settings import Runtime, SamplerSettings
from .training import BatchStream, autocast, progress, resumable_steps


class _DeclaredView(dict):
    """What a stage declared it reads, and nothing else: reading anything else (with [] or .get) is an error
    that says how to declare it, never a silently stale cache."""

    def __init__(self, full: dict, hidden, kind: str, where: str, how: str):
        self._hidden = set(hidden)
        super().__init__({k: v for k, v in full.items() if k not in self._hidden})
        self._kind, self._where, self._how = kind, where, how

    def _refuse(self, key):
        raise UndeclaredError(
            f"{self._where} reads {self._kind} {key!r}, which it does not declare; declare it "
            f"with {self._how} so that changing it reruns this stage"
        )

    def __missing__(self, key):
        if key in self._hidden:
            self._refuse(key)
        raise self._absent(key)

    def _absent(self, key) -> KeyError:
        return KeyError(key)

    def get(self, key, default=None):
        if key in self._hidden:
            self._refuse(key)
        return super().get(key, default)


class DeclaredSections(_DeclaredView):
    """A stage's view of the config: the evaluation-side sections it did not declare, and the run-scope keys,
    are hidden."""

    def __init__(self, config: dict, sections, where: str, how: str):
        hidden = [s for s in GUARDED_SECTIONS if s not in sections] + list(RUN_SCOPE_KEYS)
        super().__init__(config, hidden, "config section", where, how)

    def _refuse(self, key):
        if key not in RUN_SCOPE_KEYS:
            super()._refuse(key)
        instead = RUN_SCOPE_KEYS[key]
        raise UndeclaredError(
            f"{self._where} reads config key {key!r}, which describes the whole run, not this "
            "stage (its result would not rerun when it changes)" + (f"; use {instead}" if instead else "")
        )


def _unknown_param(method: str, key, known) -> UndeclaredError:
    close = did_you_mean([key], known)[2:]  # "did you mean x?" or ""
    fix = f"{close} (else add it to DEFAULTS in its method file)" if close else "add it to DEFAULTS in its method file"
    return UndeclaredError(
        f"method {method!r} reads param {key!r}, which is not one of its params "
        f"({', '.join(sorted(known)) or 'none'}): {fix}"
    )


class MethodParams(dict):
    """A method's params (DEFAULTS, then the config's): reading one it lacks says so, not a bare KeyError."""

    def __init__(self, params: dict, method: str):
        super().__init__(params)
        self._method = method

    def __missing__(self, key):
        raise _unknown_param(self._method, key, self)


class DeclaredParams(_DeclaredView):
    """A prior's view of its method's params: only those it declared."""

    def __init__(self, params: dict, prior: Prior, method: str):
        super().__init__(
            params,
            [k for k in params if k not in prior.params],
            "param",
            f"prior {prior.name!r} of method {method!r}",
            "Prior(..., params=...)",
        )
        self._method = method

    def _absent(self, key) -> KeyError:
        return _unknown_param(self._method, key, [*self, *self._hidden])


class _Priors(dict):
    """prior name -> folder; a name the stage did not require is an error that says how to require it."""

    def __missing__(self, key):
        raise UndeclaredError(
            f"ctx.priors[{key!r}]: this stage did not require prior {key!r}; list it in "
            f"Prior(..., requires=(...)) of the prior that reads it (unlearn() gets every prior of "
            f"its method; it has {sorted(self) or 'none'})"
        )


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
    runtime: Runtime = field(default_factory=Runtime)  # the job's device switches (bf16 autocast, compile)
    forget_class: int | None = None
    priors: dict = field(default_factory=dict)  # prior name -> folder it wrote
    out_dir: Path | None = None  # priors only: where to write
    state_path: Path | None = None  # where run_steps keeps its resumable state
    state_key: str | None = None  # what defines this run (config, params, seed, code): a state resumes only its own
    diverged_hint: str = "Lower its learning rate or check its loss."  # what a DivergedError tells the user to do
    _streams: list = field(default_factory=list)

    def __post_init__(self):
        self.priors = _Priors(self.priors)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def reduction(self) -> str:
        return self.config["diffusion"]["loss_reduction"]

    def images(self, classes) -> tuple[torch.Tensor, torch.Tensor]:
        """Real training images of the given classes as float [-1, 1] tensors, with labels."""
        x, y = class_subset(self.data.train_x, self.data.train_y, classes)
        return to_float(x), torch.as_tensor(y)

    @property
    def hflip(self) -> bool:
        """Whether training images are randomly mirrored (base.hflip: CIFAR-10 yes, digits no)."""
        return self.config["base"].get("hflip", False)

    def batches(self, classes, batch_size: int):
        """Endless seeded batches of real images of the given classes, on the device (flipped as `hflip` says)."""
        return self.stream(*self.images(classes), batch_size, hflip=self.hflip)

    def stream(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, hflip: bool = False):
        """Endless seeded batches of the given images; its position is part of run_steps' resumable state."""
        shuffle = torch.Generator().manual_seed(self.seed * 7 + len(self._streams) + 1)  # each stream its own
        stream = BatchStream(x, y, batch_size, shuffle, self.device, hflip=hflip)
        self._streams.append(stream)
        return stream

    def run_steps(
        self, steps: int, step_fn, *, desc: str, checkpoint_every: int = 0, modules: dict | None = None
    ) -> None:
        """Run step_fn(i) for i < steps inside the RTE timer.

        With checkpoint_every, the state of `modules` (models, optimizers: anything with state_dict), the
        generators and the batch streams is saved every so many steps, outside the timer; a restarted job of the
        same config, params and code resumes from the last save, RTE included, and ends as an uninterrupted run
        would. Before each save the models among `modules` must have finite weights (else DivergedError).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            # Zero steps would pass the original model off as an unlearned one.
            raise UserError(
                f"{desc}: the number of steps must be a whole number >= 1; got {steps!r} (a param? "
                "give it a PARAM_SCHEMA entry such as {'type': 'integer', 'minimum': 1} in the method "
                "file, and a config is checked before any job runs)"
            )
        if checkpoint_every and not modules:
            # A resumed run would restore its step count and generators onto freshly loaded weights.
            raise UserError(
                f"{desc}: checkpoint_every needs modules={{name: object}} with every model and optimizer "
                "the loop changes (their state_dict is what a resumed run restores)"
            )

        def finite(step):
            for name, module in (modules or {}).items():
                if isinstance(module, torch.nn.Module):
                    require_finite(module, f"{desc} diverged by step {step} ({name})", self.diverged_hint)

        resumable = bool(checkpoint_every and self.state_path)
        resumable_steps(
            steps,
            step_fn,
            desc=desc,
            meter=self.meter,
            every=checkpoint_every if resumable else 0,
            state_path=self.state_path,
            state_key=f"{self.state_key}|{desc}|steps={steps}",
            modules=modules,
            generator=self.generator,
            streams=self._streams,
            before_save=finite,
        )
        if resumable and self.state_path.exists():
            self.state_path.unlink()

    def epsilon_loss(self, model, x0: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        """The standard DDPM loss (diffusion.epsilon_loss) with this run's schedule, loss reduction and seeded
        generator; kwargs as there (cond_dropout, timesteps, noise, per_sample)."""
        return epsilon_loss(
            model, self.schedule, x0, labels, reduction=self.reduction, generator=self.generator, **kwargs
        )

    def remaining_classes(self) -> list[int]:
        return [c for c in range(self.num_classes) if c != self.forget_class]

    def autocast(self):
        return autocast(self.runtime.performance, self.device)

    def sample(self, model, labels: torch.Tensor, generator: torch.Generator, **overrides) -> torch.Tensor:
        """Images of `labels` from `model` with the evaluation sampler (config `sampler`, which the method must
        declare in SECTIONS: its result depends on it), this run's schedule and precision; `overrides` as
        diffusion.sample's keywords (progress, steps)."""
        return sample_as_configured(
            model,
            SamplerSettings.parse(self.config["sampler"]),
            self.schedule,
            labels,
            generator,
            self.device,
            performance=self.runtime.performance,
            **overrides,
        )

    def progress(self, iterable, desc: str):
        return progress(iterable, desc)


UnlearnContext = RunContext
PriorContext = RunContext
