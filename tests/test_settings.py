"""The typed config sections (unlearnbench/settings.py): each shipped config parses into them with the values its
YAML holds, a left-out key takes the value the code ran with before sections existed, and a section is frozen."""

import dataclasses

import pytest

from unlearnbench.config import load_config
from unlearnbench.settings import (
    DataSettings,
    DiffusionSettings,
    ModelSettings,
    Performance,
    Runtime,
    SamplerSettings,
    ScaleSettings,
    Settings,
)


@pytest.mark.parametrize("overlay", ["default", "test", "paper", "paper-bf16"])
def test_every_shipped_config_parses_into_its_sections_with_its_values(root, overlay):
    config = load_config(*([root / "config" / f"{overlay}.yaml"] if overlay != "default" else []))
    s = Settings.parse(config)
    for name, section in (("diffusion", s.diffusion), ("sampler", s.sampler)):
        assert {k: v for k, v in dataclasses.asdict(section).items() if k in config[name]} == config[name]
    assert (s.model.preset, dict(s.model.overrides)) == (
        config["model"]["preset"],
        config["model"].get("overrides") or {},
    )
    assert s.data.dataset == config["dataset"]
    assert {k: getattr(s.data, k) for k in config.get("data") or {}} == (config.get("data") or {})
    assert {k: getattr(s.scale, k) for k in config.get("scale") or {}} == (config.get("scale") or {})
    assert (s.runtime.device, s.runtime.threads, s.runtime.deterministic) == (
        config["device"],
        config.get("threads"),
        config.get("deterministic", True),
    )
    assert {k: getattr(s.runtime.performance, k) for k in config.get("performance") or {}} == (
        config.get("performance") or {}
    )


def test_a_left_out_key_takes_the_value_the_code_used_to_default_to():
    """The values each layer's `.get(key, default)` gave before the sections: a config that leaves them out runs
    as it did."""
    assert Runtime.parse({}) == Runtime("auto", None, True, Performance(False, False, False, False, False))
    assert (
        DiffusionSettings.parse(
            {"timesteps": 10, "beta_start": 1e-4, "beta_end": 0.02, "loss_reduction": "sum"}
        ).antithetic_timesteps
        is False
    )
    sampler = SamplerSettings.parse({"steps": 3, "eta": 1.0, "guidance_w": 2})
    assert (sampler.clip_x0, sampler.batch_size) == (False, 1000)
    assert DataSettings.parse({"dataset": "digits"}) == DataSettings("digits", "data", True, 0.2, 0)
    assert ScaleSettings.parse(None) == ScaleSettings(1.0, 1.0)
    assert dict(ModelSettings.parse({"preset": "tiny"}).overrides) == {}


def test_a_section_is_frozen_and_refuses_a_key_it_does_not_have():
    sampler = SamplerSettings.parse({"steps": 3, "eta": 1.0, "guidance_w": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampler.steps = 4
    with pytest.raises(TypeError):  # the overrides of a frozen section are read-only too
        ModelSettings.parse({"preset": "tiny", "overrides": {"dropout": 0.1}}).overrides["dropout"] = 0.2
    with pytest.raises(ValueError, match=r"SamplerSettings: unknown keys \['step'\]"):
        SamplerSettings.parse({"step": 3, "eta": 1.0, "guidance_w": 2})


def test_each_section_has_a_field_for_every_key_the_schema_allows(root):
    """A key added to config/schema.yaml but not to its section would pass validation and fail every job."""
    import yaml

    schema = yaml.safe_load((root / "config" / "schema.yaml").read_text())["properties"]
    sections = {
        "diffusion": DiffusionSettings,
        "sampler": SamplerSettings,
        "model": ModelSettings,
        "data": DataSettings,
        "scale": ScaleSettings,
        "performance": Performance,
    }
    for name, cls in sections.items():
        fields = {f.name for f in dataclasses.fields(cls)} - ({"dataset"} if cls is DataSettings else set())
        assert set(schema[name]["properties"]) == fields, name
    runtime = {f.name for f in dataclasses.fields(Runtime)}
    assert runtime <= set(schema) and {"device", "threads", "deterministic", "performance"} == runtime
