"""Networks: UNet presets (class-conditional, last class index = null; `unlearnbench.unet`) and evaluation classifiers."""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNet

# UNet2DModel arguments (`unlearnbench.unet.UNet` mirrors diffusers' class). Each level of down blocks halves the resolution.
UNET_PRESETS = {
    # digits 8x8x1: small enough that the default benchmark runs on 2 CPU cores in minutes.
    "tiny": dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
    ),
    # The DDPM/DDIM CIFAR-10 UNet: 128 channels, (1, 2, 2, 2), 2 res blocks per level, single-head
    # attention at 16x16 (level 1) and in the middle block, dropout 0.1 (docs/protocol-notes.md, shared setup).
    "paper": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        norm_num_groups=32,
        dropout=0.1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=256,
    ),
}


def build_unet(preset: str, num_classes: int, overrides: dict | None = None):

    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; allowed: {', '.join(UNET_PRESETS)}")
    kwargs = {**UNET_PRESETS[preset], **(overrides or {})}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        kwargs[key] = tuple(kwargs[key])
    return UNet(num_class_embeds=num_classes + 1, **kwargs)


def unet_build_problem(unet_config: dict, image_shape: tuple[int, int, int]) -> str | None:
    """Why a UNet of this (resolved) config cannot denoise images of `image_shape` (C, H, W), or None.

    Built and run once on one image, so that any size that does not fit (levels too many for the resolution,
    channels not divisible by the groups, ...) is named before a job runs, not in a traceback of train_base. On
    the CPU, not torch's meta device: initialising weights there imports torch._dynamo (1.4 s per Snakefile read);
    the tiny UNet takes 0.01 s and the paper's 0.3 s.
    """

    try:
        with torch.no_grad():
            model = UNet(**unet_config)
            labels = torch.zeros(1, dtype=torch.long)
            out = model(torch.zeros(1, *image_shape), labels, labels)
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    if tuple(out.shape[1:]) != tuple(image_shape):
        return f"it returns images of shape {tuple(out.shape[1:])}, not {tuple(image_shape)}"
    return None


def predict_eps(model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The one call every stage uses to get eps_theta(x_t, c, t)."""
    return model(x, t, labels)


def null_class(model) -> int:
    """Index of the learned null embedding (the last one)."""
    return model.config.num_class_embeds - 1


class FeaturesAndHead(nn.Module):
    """An evaluator: `body` gives the penultimate features (the classifier FID backend's), dropout then a linear
    head the logits."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class SmallCNN(FeaturesAndHead):
    """Evaluator for 8x8 digits: two conv blocks, a 128-d penultimate layer (FID features), a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4, 128),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(128, num_classes)


class CifarResNet18(FeaturesAndHead):
    """ResNet-18 with a 3x3 stem and no max-pool, the usual CIFAR variant (no pretrained weights offline)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        from torchvision.models import resnet18  # here: only the ResNet-18 evaluator needs torchvision's import

        net = resnet18(num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net
        self.dropout = nn.Identity()  # as torchvision's ResNet: none before the head


class MLP(FeaturesAndHead):
    """A second kind of evaluator: no convolution, so a verdict that rests on a CNN's view of the images shows as a
    disagreement (docs/robustness.md). Images are pooled to 8x8 (digits: as they are) and flattened."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.AdaptiveAvgPool2d(8),
            nn.Flatten(),
            nn.Linear(in_channels * 64, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(128, num_classes)


CLASSIFIERS = {"small_cnn": SmallCNN, "resnet18": CifarResNet18, "mlp": MLP}


def build_classifier(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown evaluator arch {arch!r}; allowed: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[arch](in_channels=in_channels, num_classes=num_classes)
