"""Typed, frozen views of the config sections that the low layers read: a stage parses them from the validated
config (config/schema.yaml has already checked every key and type) and passes each down alone.

The layers below the stages (training, acceleration, runtime, diffusion, checkpoints, data, scaling) receive the
one section they use, never the whole config: `setup_runtime(settings.runtime)`, `Schedule.of(settings.diffusion)`,
`load_dataset(settings.data)`. The stages, the workflow and the reports, which orchestrate a whole run, keep the
validated config mapping: it is what is hashed into fingerprints and written into every record's provenance.

A default here is the value a config that leaves the key out runs with (the schema requires the others). This
module imports nothing of the suite's, so every layer can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping


def _parse(cls, section: Mapping | None, **extra):
    """`cls` from a config section: its keys are the fields (the schema allows no others); absent ones default."""
    section = dict(section or {})
    unknown = set(section) - {f.name for f in fields(cls)}
    if unknown:  # the schema refuses these; a typo in code that builds a section by hand must not pass silently
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**section, **extra)


@dataclass(frozen=True)
class Performance:
    """The GPU speed switches (config `performance`); every one is off on CPU (docs/performance.md)."""

    bf16: bool = False
    tf32: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_sampling: bool = False

    @classmethod
    def parse(cls, section: Mapping | None) -> "Performance":
        return _parse(cls, {k: bool(v) for k, v in (section or {}).items()})


@dataclass(frozen=True)
class Runtime:
    """How a job runs, from the config's top-level `device`, `threads`, `deterministic` and `performance`."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # None: $UNLEARNBENCH_THREADS, else 1
    deterministic: bool = True
    performance: Performance = field(default_factory=Performance)

    @classmethod
    def parse(cls, config: Mapping) -> "Runtime":
        return cls(
            device=config.get("device") or "auto",
            threads=config.get("threads"),
            deterministic=bool(config.get("deterministic", True)),
            performance=Performance.parse(config.get("performance")),
        )


@dataclass(frozen=True)
class DiffusionSettings:
    """Config `diffusion`: the noise schedule and the loss's reduction over pixels."""

    timesteps: int
    beta_start: float
    beta_end: float
    loss_reduction: str  # sum | mean
    antithetic_timesteps: bool = False

    @classmethod
    def parse(cls, section: Mapping) -> "DiffusionSettings":
        return _parse(cls, section)


@dataclass(frozen=True)
class SamplerSettings:
    """Config `sampler`: the evaluation sampler (DDIM steps, eta, guidance weight) and its batch."""

    steps: int
    eta: float
    guidance_w: float
    clip_x0: bool = False
    batch_size: int = 1000

    @classmethod
    def parse(cls, section: Mapping) -> "SamplerSettings":
        return _parse(cls, section)


@dataclass(frozen=True)
class ModelSettings:
    """Config `model`: the UNet preset and the keys it overrides."""

    preset: str
    overrides: Mapping = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, section: Mapping) -> "ModelSettings":
        section = dict(section)
        return _parse(cls, {**section, "overrides": MappingProxyType(dict(section.get("overrides") or {}))})


@dataclass(frozen=True)
class DataSettings:
    """The config's `dataset` and its `data` section (each key applies to one dataset)."""

    dataset: str
    root: str = "data"  # cifar10: the folder that holds cifar-10-batches-py/
    download: bool = True  # cifar10
    test_fraction: float = 0.2  # digits: stratified split
    split_seed: int = 0  # digits

    @classmethod
    def parse(cls, config: Mapping) -> "DataSettings":
        return _parse(cls, config.get("data"), dataset=config["dataset"])


@dataclass(frozen=True)
class ScaleSettings:
    """Config `scale`: the factors of the scale rules (unlearnbench/scaling.py); 1 is the paper's scale."""

    steps: float = 1.0
    batch: float = 1.0

    @classmethod
    def parse(cls, section: Mapping | None) -> "ScaleSettings":
        return _parse(cls, {k: float(v) for k, v in (section or {}).items()})


@dataclass(frozen=True)
class Settings:
    """The typed sections of one validated config."""

    runtime: Runtime
    diffusion: DiffusionSettings
    sampler: SamplerSettings
    model: ModelSettings
    data: DataSettings
    scale: ScaleSettings

    @classmethod
    def parse(cls, config: Mapping) -> "Settings":
        return cls(
            runtime=Runtime.parse(config),
            diffusion=DiffusionSettings.parse(config["diffusion"]),
            sampler=SamplerSettings.parse(config["sampler"]),
            model=ModelSettings.parse(config["model"]),
            data=DataSettings.parse(config),
            scale=ScaleSettings.parse(config.get("scale")),
        )
