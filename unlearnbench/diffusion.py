"""DDPM core shared by every stage: linear schedule, epsilon loss, conditioning dropout, guided sampler."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .networks import null_class, predict_eps
from .runtime import autocast_dtype, note_bf16_use, to_device
from .settings import DiffusionSettings, Performance, SamplerSettings


@dataclass
class Schedule:
    """Linear betas (Ho et al. 2020). Index t in {0..T-1}; alpha_bar[t] = prod_{s<=t} (1 - beta_s)."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    antithetic: bool = False  # sample_timesteps draws pairs (t, T-1-t), as the DDPM/DDIM reference code does

    def __post_init__(self):
        self.betas = torch.linspace(self.beta_start, self.beta_end, self.timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    @classmethod
    def of(cls, diffusion: DiffusionSettings) -> "Schedule":
        """The schedule of config `diffusion`."""
        return cls(diffusion.timesteps, diffusion.beta_start, diffusion.beta_end, diffusion.antithetic_timesteps)

    def _table(self, name: str, device, dtype) -> torch.Tensor:
        """sqrt(alpha_bar) or sqrt(1 - alpha_bar), cached per device and dtype (no copy per step)."""
        key = (name, str(device), dtype)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            values = self.alpha_bar.sqrt() if name == "signal" else (1 - self.alpha_bar).sqrt()
            cache[key] = values.to(device=device, dtype=dtype)
        return cache[key]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        shape = (-1, *([1] * (x0.dim() - 1)))
        signal = self._table("signal", x0.device, x0.dtype)[t].view(shape)
        noise_scale = self._table("noise", x0.device, x0.dtype)[t].view(shape)
        return signal * x0 + noise_scale * noise

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform indices, drawn on the generator's device (no host round trip on GPU). Antithetic: n // 2 + 1
        uniform draws t, then T-1-t for as many as fill n (the reference's layout): each index is still uniform,
        and the pairs lower the variance of a batch's loss over t."""
        where = _gen_device(generator, device)
        if not self.antithetic:
            return torch.randint(0, self.timesteps, (n,), generator=generator, device=where).to(device)
        t = torch.randint(0, self.timesteps, (n // 2 + 1,), generator=generator, device=where)
        return torch.cat([t, self.timesteps - 1 - t])[:n].to(device)


def _gen_device(generator: torch.Generator | None, fallback) -> torch.device:
    return generator.device if generator is not None else torch.device(fallback or "cpu")


def drop_labels(labels: torch.Tensor, p: float, null: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null class with probability p (classifier-free guidance training)."""
    if p <= 0:
        return labels
    drop = (
        torch.rand(labels.shape, generator=generator, device=_gen_device(generator, labels.device)).to(labels.device)
        < p
    )
    return torch.where(drop, torch.full_like(labels, null), labels)


def reduce_squared_error(pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample squared error: 'sum' over pixels (the reference's scale) or 'mean' over pixels. Shape (N,)."""
    err = (pred.float() - target.float()).pow(2).flatten(1)
    if reduction == "sum":
        return err.sum(1)
    if reduction == "mean":
        return err.mean(1)
    raise ValueError(f"loss reduction must be 'sum' or 'mean', got {reduction!r}")


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise from a seeded generator (on the generator's device, then moved if needed)."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=_gen_device(generator, x.device)).to(
        device=x.device, dtype=x.dtype
    )


def epsilon_loss(
    model,
    schedule: Schedule,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "sum",
    cond_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """The standard DDPM loss ||eps - eps_theta(x_t, c, t)||^2, averaged over the batch."""
    t = schedule.sample_timesteps(len(x0), generator, x0.device) if timesteps is None else timesteps
    noise = randn_like(x0, generator) if noise is None else noise
    labels = drop_labels(labels, cond_dropout, null_class(model), generator)
    pred = predict_eps(model, schedule.q_sample(x0, t, noise), t, labels)
    losses = reduce_squared_error(pred, noise, reduction)
    return losses if per_sample else losses.mean()


def guided_eps(model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: float) -> torch.Tensor:
    """eps = (1 + w) eps(x, c) - w eps(x, null), conditional and null passes batched into one forward."""
    if w == 0:
        return predict_eps(model, x, t, labels)
    null = torch.full_like(labels, null_class(model))
    eps = predict_eps(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    # Under bf16 autocast each pass is already rounded to bf16, and the combination amplifies that by up to
    # 1 + 2w whatever its precision; forming it in fp32 only spares it a rounding of its own.
    eps_c, eps_u = eps.float().chunk(2)
    return (1 + w) * eps_c - w * eps_u


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly spaced indices from T-1 down to 0 ('steps' of them); steps = T gives every step (ancestral)."""
    stride = timesteps / steps
    return sorted({int(math.floor(i * stride)) for i in range(steps)}, reverse=True)


@torch.no_grad()
def ddim_step(
    schedule: Schedule,
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float,
    noise: torch.Tensor | None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, eq. 12). eta = 1 with every step is DDPM ancestral sampling."""
    a_t = schedule.alpha_bar[t].item()
    a_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev) if t_prev >= 0 else 0.0
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def _denoise(
    schedule: Schedule,
    eps_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    ts: list[int],
    eta: float,
    noise_gen: torch.Generator,
    clip_x0: bool,
    on_step=lambda n: None,
) -> torch.Tensor:
    """DDIM steps from x at ts[0] down through ts, then to x_0: the loop of `sample` and `denoise_from`."""
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((len(y),), t, device=x.device, dtype=torch.long)
        eps = eps_fn(x, tt, y)
        noise = to_device(torch.randn(x.shape, generator=noise_gen), x.device) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(schedule, x, eps, t, t_prev, eta, noise, clip_x0)
        on_step(1)
    return x


@torch.no_grad()
def sample(
    model,
    schedule: Schedule,
    labels: torch.Tensor,
    *,
    steps: int,
    eta: float = 1.0,
    guidance_w: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    progress: bool = False,
    eps_fn=None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Generate one image per label with guided DDIM (eta = 1, steps = T: the reference's ancestral sampler).

    Noise comes from CPU generators, so a seed and batch size give the same images on any device.
    `eps_fn(x, t, labels)` replaces the network (tests use an exact oracle; set `eps_fn.image_shape`).
    """
    device = torch.device(device)
    if model is not None:
        shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        was_training = model.training
        model.eval()
    else:
        shape = eps_fn.image_shape
    if eps_fn is None:
        if autocast_dtype is not None:
            note_bf16_use()

        def eps_fn(x, t, y):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                return guided_eps(model, x, t, y, guidance_w).float()

    ts = sampling_timesteps(schedule.timesteps, steps)
    labels = labels.long()
    n = len(labels)
    x_init = torch.randn((n, *shape), generator=generator)
    step_noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = []
    batches = range(0, n, batch_size)
    quiet = not progress or os.environ.get("UNLEARNBENCH_QUIET") == "1"
    bar = tqdm(total=len(batches) * len(ts), desc="sampling", disable=quiet, mininterval=5)
    for start in batches:
        y = to_device(labels[start : start + batch_size], device)
        x = to_device(x_init[start : start + batch_size], device)
        # One noise stream per batch, seeded by its offset: cheap and deterministic. Drawn on the host while
        # the GPU runs the step before; to_device queues the copy without waiting for the GPU.
        noise_gen = torch.Generator().manual_seed(step_noise_seed + start)
        out.append(_denoise(schedule, eps_fn, x, y, ts, eta, noise_gen, clip_x0, bar.update).float().cpu())
    bar.close()
    if model is not None and was_training:
        model.train()
    return torch.cat(out)


def sample_as_configured(
    model,
    sampler: SamplerSettings,
    schedule: Schedule,
    labels: torch.Tensor,
    generator: torch.Generator,
    device,
    *,
    performance: Performance,
    **overrides,
) -> torch.Tensor:
    """`sample` with config `sampler` (steps, eta, guidance w, clip_x0, batch size) and the precision of config
    `performance`: the one mapping of those sections to the sampler; `overrides` replace any of sample()'s keywords
    (progress, steps)."""
    device = torch.device(device)
    kwargs = {
        "steps": sampler.steps,
        "eta": sampler.eta,
        "guidance_w": float(sampler.guidance_w),
        "clip_x0": sampler.clip_x0,
        "batch_size": sampler.batch_size,
        "autocast_dtype": autocast_dtype(performance, device),
        **overrides,
    }
    return sample(model, schedule, labels, generator=generator, device=device, **kwargs)


@torch.no_grad()
def denoise_from(
    model,
    schedule: Schedule,
    x_t: torch.Tensor,
    t_start: int,
    labels: torch.Tensor,
    *,
    steps: int,
    eta: float,
    guidance_w: float,
    generator: torch.Generator,
    clip_x0: bool = False,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Images x_t, noised to timestep `t_start`, denoised to x_0 under `labels` in `steps` evenly spaced guided
    DDIM steps (from t_start down): the partial-diffusion probe's second half (docs/robustness.md)."""
    if not 0 <= t_start < schedule.timesteps:
        raise ValueError(f"t_start = {t_start}: a timestep in [0, {schedule.timesteps})")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ts = sampling_timesteps(t_start + 1, min(steps, t_start + 1))
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = []
    for start in range(0, len(x_t), batch_size):
        y = to_device(labels[start : start + batch_size].long(), device)
        x = to_device(x_t[start : start + batch_size].float(), device)
        noise_gen = torch.Generator().manual_seed(noise_seed + start)
        out.append(
            _denoise(
                schedule,
                lambda x, t, y: guided_eps(model, x, t, y, guidance_w).float(),
                x,
                y,
                ts,
                eta,
                noise_gen,
                clip_x0,
            ).cpu()
        )
    model.train(was_training)
    return torch.cat(out)
