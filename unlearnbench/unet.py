"""The class-conditional DDPM UNet, a twin of diffusers' `UNet2DModel` for the configurations the suite uses.

Same parameter names, same initialisation order, same arithmetic op for op, same checkpoint folder
(`config.json` + `diffusion_pytorch_model.safetensors`): diffusers loads what this saves and the reverse, and
`tests/test_unet.py` checks weights, outputs and gradients against diffusers bit for bit. Why not diffusers
itself: importing it costs ~3 s per process on top of torch (it pulls in torch._dynamo and scipy). Measured
2026-12-07, 2-core AMD EPYC, CPU, medians of 5 with torch imported first: `-X importtime` cumulative 2.66 s for
`diffusers.models.unets.unet_2d`, 0.004 s for this module; a `python -c` importing torch and it: 5.14 s vs 1.90 s wall.

Supported: blocks DownBlock2D, AttnDownBlock2D, UpBlock2D, AttnUpBlock2D and UNetMidBlock2D; positional
time embedding; an nn.Embedding class embedding (num_class_embeds); "default" time-embedding addition;
conv down/upsamplers. A config asking for anything else is refused with the key that is not supported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CLASS = "UNet2DModel"
DIFFUSERS_VERSION = "0.42.1"  # the version whose UNet2DModel this mirrors (the suite's pin)

# Every UNet2DModel constructor argument with diffusers' default; config.json holds all of them.
DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Options of UNet2DModel this twin does not implement: (key, the values it accepts).
SUPPORTED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default",),
    "class_embed_type": (None,),
}
DOWN_BLOCKS, UP_BLOCKS = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")


class UNetConfig(dict):
    """The constructor arguments, readable as keys or attributes (`model.config.in_channels`), like diffusers'."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def resolve_config(kwargs: dict) -> UNetConfig:
    """All constructor arguments (defaults filled in), checked against what this twin implements."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"UNet config keys {unknown} are not UNet2DModel arguments")
    cfg = {**DEFAULTS, **kwargs}
    for key, allowed in SUPPORTED.items():
        if cfg[key] not in allowed:
            raise ValueError(f"UNet config {key}={cfg[key]!r} is not supported (supported: {list(allowed)})")
    for key, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        bad = [b for b in cfg[key] if b not in allowed]
        if bad:
            raise ValueError(f"UNet config {key} has unsupported blocks {bad} (supported: {list(allowed)})")
    if not (len(cfg["down_block_types"]) == len(cfg["up_block_types"]) == len(cfg["block_out_channels"])):
        raise ValueError("UNet config: down_block_types, up_block_types and block_out_channels differ in length")
    if cfg["num_class_embeds"] is None or cfg["norm_num_groups"] is None:
        raise ValueError("UNet config: num_class_embeds and norm_num_groups must be set (a class-conditional UNet)")
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = tuple(cfg[key])
    return UNetConfig(cfg)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-dropout-conv, plus the shortcut."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_ch: int,
        groups: int,
        eps: float,
        dropout: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        return (x + h) / self.output_scale_factor


class SelfAttention(nn.Module):
    """GroupNorm, multi-head self-attention over the H*W positions (scaled dot product), residual."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float, rescale_output_factor: float = 1.0):
        super().__init__()
        self.heads = channels // head_dim
        inner = self.heads * head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])
        self.rescale_output_factor = rescale_output_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = x.view(b, c, hgt * wid).transpose(1, 2)  # (B, HW, C)
        h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        q, k, v = (
            proj(h).view(b, -1, self.heads, proj.out_features // self.heads).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]).to(q.dtype)
        h = self.to_out[1](self.to_out[0](h))
        return (h.transpose(-1, -2).reshape(b, c, hgt, wid) + x) / self.rescale_output_factor


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:  # diffusers' asymmetric padding
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 64:  # nearest upsampling of large NHWC batches needs contiguous input (diffusers does this)
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """DownBlock2D, or AttnDownBlock2D with attention. Built resnet i, then attention i (diffusers' init order);
    registered attentions first (its parameter order, which gradient-norm sums and SalUn's ranking follow)."""

    def __init__(self, in_ch, out_ch, temb_ch, layers, groups, eps, dropout, head_dim, attention, downsample, padding):
        super().__init__()
        resnets, attentions = [], []
        for i in range(layers):
            resnets.append(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps, dropout))
            if attention:
                attentions.append(SelfAttention(out_ch, head_dim, groups, eps))
        self.attentions = nn.ModuleList(attentions) if attention else None
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = nn.ModuleList([Downsample(out_ch, padding)]) if downsample else None

    def forward(self, x, temb):
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class UpBlock(nn.Module):
    """UpBlock2D, or AttnUpBlock2D with attention; built and registered like DownBlock."""

    def __init__(self, in_ch, prev_ch, out_ch, temb_ch, layers, groups, eps, dropout, head_dim, attention, upsample):
        super().__init__()
        resnets, attentions = [], []
        for i in range(layers):
            skip_ch = in_ch if i == layers - 1 else out_ch
            resnets.append(
                ResnetBlock((prev_ch if i == 0 else out_ch) + skip_ch, out_ch, temb_ch, groups, eps, dropout)
            )
            if attention:
                attentions.append(SelfAttention(out_ch, head_dim, groups, eps))
        self.attentions = nn.ModuleList(attentions) if attention else None
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x, skips, temb):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2D: resnet, attention, resnet (built in that order, attentions registered first)."""

    def __init__(self, ch, temb_ch, groups, attn_groups, eps, dropout, head_dim, attention, scale):
        super().__init__()
        first = ResnetBlock(ch, ch, temb_ch, groups, eps, dropout, scale)
        attentions = [SelfAttention(ch, head_dim, attn_groups, eps, scale)] if attention else []
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList([first, ResnetBlock(ch, ch, temb_ch, groups, eps, dropout, scale)])

    def forward(self, x, temb):
        x = self.resnets[0](x, temb)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x, temb)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float, max_period: int = 10000):
    """The DDPM sinusoidal embedding of (integer) timesteps, in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 else emb


class UNet(nn.Module):
    """eps_theta(x_t, t, c): `model(x, t, class_labels)` returns the predicted noise, shaped like x."""

    def __init__(self, **kwargs):
        super().__init__()
        self.config = cfg = resolve_config(kwargs)
        chans = cfg.block_out_channels
        temb_ch = cfg.time_embedding_dim or chans[0] * 4
        groups, eps, dropout = cfg.norm_num_groups, cfg.norm_eps, cfg.dropout

        def head_dim(ch):
            return cfg.attention_head_dim if cfg.attention_head_dim is not None else ch

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_ch)
        self.class_embedding = nn.Embedding(cfg.num_class_embeds, temb_ch)
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block, filled after it: diffusers' orders
        out_ch = chans[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, chans[i]
            self.down_blocks.append(
                DownBlock(
                    in_ch,
                    out_ch,
                    temb_ch,
                    cfg.layers_per_block,
                    groups,
                    eps,
                    dropout,
                    head_dim(out_ch),
                    kind == "AttnDownBlock2D",
                    i < len(chans) - 1,
                    cfg.downsample_padding,
                )
            )
        self.mid_block = MidBlock(
            chans[-1],
            temb_ch,
            groups,
            cfg.attn_norm_num_groups or groups,
            eps,
            dropout,
            head_dim(chans[-1]),
            cfg.add_attention,
            cfg.mid_block_scale_factor,
        )
        rev = list(reversed(chans))
        out_ch = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch, in_ch = out_ch, rev[i], rev[min(i + 1, len(chans) - 1)]
            self.up_blocks.append(
                UpBlock(
                    in_ch,
                    prev_ch,
                    out_ch,
                    temb_ch,
                    cfg.layers_per_block + 1,
                    groups,
                    eps,
                    dropout,
                    head_dim(out_ch),
                    kind == "AttnUpBlock2D",
                    i < len(chans) - 1,
                )
            )
        self.conv_norm_out = nn.GroupNorm(groups, chans[0], eps=eps)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)
        self.time_features = dict(dim=chans[0], flip_sin_to_cos=cfg.flip_sin_to_cos, shift=cfg.freq_shift)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        t = t * torch.ones(x.shape[0], dtype=t.dtype, device=t.device)  # a scalar t applies to every image
        features = timestep_features(t, **self.time_features)
        emb = self.time_embedding(features.to(dtype=self.dtype))
        emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        h = self.conv_in(x)
        skips = (h,)
        for block in self.down_blocks:
            h, block_skips = block(h, emb)
            skips += block_skips
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            h, skips = block(h, skips[-n:], emb), skips[:-n]
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    # ------------------------------------------------------------ checkpoints (diffusers' folder format)
    def save_pretrained(self, folder: str | Path) -> None:

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "_class_name": DIFFUSERS_CLASS,
            "_diffusers_version": DIFFUSERS_VERSION,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "UNet":
        """A folder saved by `save_pretrained` here or by diffusers' UNet2DModel."""

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        if config.get("_class_name", DIFFUSERS_CLASS) != DIFFUSERS_CLASS:
            raise ValueError(f"config.json describes a {config['_class_name']}, not a {DIFFUSERS_CLASS}")
        model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return model
