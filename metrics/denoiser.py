"""What a model predicts as noise, per label: the size of eps_theta(x_t, c, t) on noised real images.

A trained DDPM predicts unit-variance noise (mean squared value ~1 per pixel) for every label. SAFEMax's fresh-noise
target pulls eps_theta(x_t, c_f, t) towards 0 in expectation; if the other labels' predictions shrink with it, the
whole model has moved, not the forgotten class alone (docs/safemax-finding.md).
"""

from __future__ import annotations

import torch

EPS_GROUPS = ("forget", "remaining", "null")  # c_f on its images; each image's own class; the null label


@torch.no_grad()
def eps_mean_squares(
    model,
    schedule,
    forget_images: torch.Tensor,
    remaining_images: torch.Tensor,
    remaining_labels: torch.Tensor,
    forget_class: int,
    null_label: int,
    generator: torch.Generator,
    batch_size: int = 512,
) -> dict[str, float]:
    """Mean over images, timesteps (uniform) and pixels of eps_theta(x_t, c, t)^2, for the groups of EPS_GROUPS:
    the forgotten class's images under c_f, the remaining classes' images under their own labels, and the same
    remaining images under the null label. One timestep and noise draw per image (the null group reuses the
    remaining group's x_t, so the two differ by the label alone). 1.0 is the size of the true noise."""

    def draw(x0):
        t = torch.randint(0, schedule.timesteps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        return schedule.q_sample(x0, t, noise), t

    def mean_square(x_t, t, labels) -> float:
        device = next(model.parameters()).device
        total = 0.0
        for i in range(0, len(x_t), batch_size):
            part = slice(i, i + batch_size)
            eps = model(x_t[part].to(device), t[part].to(device), labels[part].to(device)).float()
            total += eps.pow(2).sum().item()
        return total / x_t.numel()

    x_f, t_f = draw(forget_images)
    x_r, t_r = draw(remaining_images)
    return {
        "forget": mean_square(x_f, t_f, torch.full((len(x_f),), forget_class, dtype=torch.long)),
        "remaining": mean_square(x_r, t_r, remaining_labels.long()),
        "null": mean_square(x_r, t_r, torch.full((len(x_r),), null_label, dtype=torch.long)),
    }
