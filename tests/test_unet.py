"""The suite's UNet against diffusers' UNet2DModel, the independent reference it mirrors: bit for bit."""

import json

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DModel

from unlearnbench.checkpoints import load_unet, save_unet
from unlearnbench.errors import MissingResourceError
from unlearnbench.networks import UNET_PRESETS, build_unet, predict_eps
from unlearnbench.unet import UNet

TINY = {**UNET_PRESETS["tiny"], "num_class_embeds": 11}
CONFIGS = {
    "tiny": TINY,
    "paper": {**UNET_PRESETS["paper"], "num_class_embeds": 11},
    # options the presets leave at their defaults: multi-head attention, dropout, asymmetric downsample
    # padding, a mid-block scale, a time embedding width of its own
    "variant": {
        **TINY,
        "attention_head_dim": 8,
        "dropout": 0.2,
        "downsample_padding": 0,
        "mid_block_scale_factor": 2,
        "time_embedding_dim": 48,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
    },
    "no_mid_attention": {
        **TINY,
        "add_attention": False,
        "layers_per_block": 2,
        "down_block_types": ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D"),
    },
}


def both(kwargs):
    torch.manual_seed(0)
    reference = UNet2DModel(**kwargs)
    torch.manual_seed(0)
    return reference, UNet(**kwargs)


def inputs(kwargs, n=4):
    g = torch.Generator().manual_seed(1)
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    return (
        torch.randn(n, channels, size, size, generator=g),
        torch.tensor([0, 17, 500, 999])[:n],
        torch.tensor([0, 3, 10, 5])[:n],
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_same_parameters_outputs_and_gradients_as_diffusers(name):
    kwargs = CONFIGS[name]
    reference, ours = both(kwargs)
    # same names in the same order (gradient-norm sums and SalUn's global ranking follow it), same initial values
    assert list(reference.state_dict()) == list(ours.state_dict())
    assert [n for n, _ in reference.named_parameters()] == [n for n, _ in ours.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), ours.state_dict().values()))
    x, t, y = inputs(kwargs)
    for mode in ("train", "eval"):  # train: dropout draws the same masks from the same seed
        reference.train(mode == "train")
        ours.train(mode == "train")
        torch.manual_seed(5)
        want = reference(x, t, class_labels=y).sample
        torch.manual_seed(5)
        got = ours(x, t, y)
        assert torch.equal(want, got), f"{name} {mode}: max |diff| {(want - got).abs().max()}"
        reference.zero_grad()
        ours.zero_grad()
        (want * x).sum().backward()
        (got * x).sum().backward()
        for (n, p), q in zip(reference.named_parameters(), ours.parameters()):
            assert torch.equal(p.grad, q.grad), f"{name} {mode}: gradient of {n} differs"


def test_checkpoints_are_interchangeable_with_diffusers(tmp_path):
    reference, ours = both(TINY)
    reference.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    save_unet(ours, tmp_path / "ours")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # the same files, byte for byte
        assert (tmp_path / "theirs" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    x, t, y = inputs(TINY)
    loaded = load_unet(tmp_path / "theirs").eval()
    back = UNet2DModel.from_pretrained(tmp_path / "ours", low_cpu_mem_usage=False).eval()
    assert isinstance(loaded, UNet)
    assert torch.equal(predict_eps(loaded, x, t, y), back(x, t, class_labels=y).sample)


def test_scalar_timestep_applies_to_every_image():
    model = build_unet("tiny", 10).eval()
    x, _, y = inputs(TINY)
    assert torch.equal(model(x, torch.tensor(17), y), model(x, torch.full((4,), 17), y))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift='scale_shift' is not supported"),
        (
            "down_block_types",
            ["DownBlock2D", "CrossAttnDownBlock2D"],
            "unsupported blocks \\['CrossAttnDownBlock2D'\\]",
        ),
        ("time_embedding_type", "fourier", "time_embedding_type='fourier' is not supported"),
        ("num_class_embeds", None, "num_class_embeds and norm_num_groups must be set"),
        ("_class_name", "UNet2DConditionModel", "describes a UNet2DConditionModel, not a UNet2DModel"),
    ],
)
def test_unsupported_checkpoint_options_are_named(tmp_path, key, value, message):
    save_unet(build_unet("tiny", 10), tmp_path / "unet")
    config_path = tmp_path / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(MissingResourceError, match=f"cannot be used: UNet config.*{message}"):
        load_unet(tmp_path / "unet")


def test_unknown_constructor_argument_is_refused():
    with pytest.raises(ValueError, match="\\['cross_attention_dim'\\] are not UNet2DModel arguments"):
        UNet(**TINY, cross_attention_dim=8)


def test_workflow_jobs_never_import_diffusers(tmp_path):
    """The point of the twin: a job that builds, saves, loads and runs a UNet (every method file loaded) must not
    pay diffusers' import (~2.7 s per process on top of torch). Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import torch\n"
        "from unlearnbench import cli, stages\n"
        "from unlearnbench.checkpoints import load_unet, save_unet\n"
        "from unlearnbench.method_api import load_method\n"
        "from unlearnbench.networks import build_unet, predict_eps\n"
        "for m in ('sa', 'salun', 'safemax'):\n"
        "    load_method(m)\n"
        f"save_unet(build_unet('tiny', 10), {str(tmp_path / 'unet')!r})\n"
        f"model = load_unet({str(tmp_path / 'unet')!r})\n"
        "predict_eps(model, torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers')\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_older_diffusers_layout_is_converted_and_adopted_in_the_suites_own(tmp_path, tiny_config):
    """A user's checkpoint as older diffusers saved it (pickled .bin weights): load_unet converts it through
    diffusers, and adopting it as base.checkpoint re-saves it in the suite's layout, which loads directly."""
    from unlearnbench import stages
    from unlearnbench.unet import WEIGHTS_NAME

    reference, _ = both(TINY)
    for sub in ("unet", "unet_ema"):
        reference.save_pretrained(tmp_path / "mine" / sub, safe_serialization=False)
    assert not (tmp_path / "mine" / "unet" / WEIGHTS_NAME).exists()
    converted = load_unet(tmp_path / "mine" / "unet")
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), converted.state_dict().values()))

    stages.prepare_data(tiny_config, tmp_path / "data.npz")
    config = json.loads(json.dumps(tiny_config))
    config["base"]["checkpoint"] = str(tmp_path / "mine")
    record = stages.train_base(config, tmp_path / "data.npz", tmp_path / "original")
    assert record["source"] == str((tmp_path / "mine").resolve())
    for sub in ("unet", "unet_ema"):
        adopted = UNet.from_pretrained(tmp_path / "original" / sub)  # no conversion needed any more
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), adopted.state_dict().values()))


def test_the_workflow_declares_the_files_a_saved_model_has(tmp_path):
    """rules/*.smk declare a UNet's files as outputs and inputs by these names: they must be what save_unet writes."""
    from unlearnbench.checkpoints import save_unet
    from unlearnbench.networks import build_unet
    from unlearnbench.workflow import UNET_FILES

    save_unet(build_unet("tiny", 10), tmp_path / "unet")
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == sorted(UNET_FILES)
