"""An untrained original model adopted through base.checkpoint: what tests of single stages start from."""

import torch

from unlearnbench import stages
from unlearnbench.checkpoints import save_unet
from unlearnbench.networks import build_unet


def adopted_original(tmp_path, config, poison=False, distinct_ema=False):
    """An untrained UNet of the config's shape adopted as the original model (base.checkpoint); its EMA weights
    equal the raw ones unless `distinct_ema`."""
    model = build_unet(config["model"]["preset"], 10, config["model"].get("overrides"))
    mine = tmp_path / "mine"
    if distinct_ema:
        torch.manual_seed(1)
        save_unet(build_unet(config["model"]["preset"], 10, config["model"].get("overrides")), mine / "unet_ema")
    else:
        save_unet(model, mine / "unet_ema")
    if poison:
        with torch.no_grad():
            next(model.parameters()).view(-1)[:3] = float("nan")
    save_unet(model, mine / "unet")
    stages.prepare_data(config, tmp_path / "data.npz")
    config["base"]["checkpoint"] = str(mine)
    return stages.train_base(config, tmp_path / "data.npz", tmp_path / "original")
