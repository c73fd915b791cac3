"""ESD, Erasing Concepts from Diffusion Models (Gandikota, Materzynska, Fiotto-Kaufman, Bau; ICCV 2023), for class
labels as SalUn's DDPM code adapts it: the label c_f takes the place of the erased prompt.

A frozen copy eps* of the original model gives each step's target, negative guidance away from c_f:
    loss = || eps_theta(x_t, c_f, t) - [eps*(x_t, null, t) - eta (eps*(x_t, c_f, t) - eps*(x_t, null, t))] ||^2,
an element mean (ESD's MSELoss), eta = 7.5, "null" the suite's class-free label (networks.null_class); the target
is computed without gradient and eps* never changes. Adam lr 1e-5 (ESD's), batch 128, the gradient clipped to norm
1, 1000 steps; the non-EMA weights trained and evaluated.

x_t (`x_t_source`):
- "real" (default, for speed): real images of c_f noised to a uniformly random t, as the suite's other losses;
- "generated": ESD's recipe: the trained model's own guided samples of c_f (a fresh x_T per image), taken by the
  suite's DDIM update (diffusion.ddim_step, guided_eps) from t = T-1 down to a timestep drawn uniformly among the
  `gen_steps` sampler timesteps, one per batch (ESD draws one per iteration of its one-image batch), and trained at
  that timestep. ESD's sampler: 50 DDIM steps, eta 0, guidance scale 3 (eps_u + 3 (eps_c - eps_u), w = 2 here).
  ESD trains at a DDPM timestep drawn inside the interval its stopping step maps to; here it is exactly the
  timestep x_t was denoised to. It costs up to gen_steps guided passes of the batch per step, hence not the default.

Inferred: the batch of 128 and the gradient clip (ESD trains one image per step, unclipped); eps* in eval mode (no
dropout: a deterministic target); the samples drawn in eval mode. The 1000 steps are ESD's iteration count, which
its paper set by its cost budget, not by convergence.
"""

import torch

from unlearnbench.diffusion import ddim_step, guided_eps, randn_like, sampling_timesteps
from unlearnbench.method_api import LOOP_PARAM_SCHEMA
from unlearnbench.networks import null_class, predict_eps
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "ESD"
COLOR = "tab:olive"
DEFAULTS = {
    "steps": 1000,  # ESD's 1000 iterations: the ESD paper's count, set by its cost budget
    "batch_size": 128,
    "lr": 1.0e-5,  # ESD's
    "grad_clip": 1.0,
    "eta": 7.5,  # negative guidance
    "x_t_source": "real",  # real | generated
    # "generated" only: ESD's sampler (50 DDIM steps, eta 0, guidance scale 3 = w 2)
    "gen_steps": 50,
    "gen_eta": 0.0,
    "gen_guidance_w": 2.0,
}
# How a smaller config scales these paper-scale values (unlearnbench/scaling.py; the config's `scale` section).
SCALED = {"steps": "steps", "batch_size": "batch"}
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "eta": {"type": "number", "minimum": 0, "title": "η  (negative guidance)"},
    "x_t_source": {"enum": ["real", "generated"]},
    "gen_steps": {"type": "integer", "minimum": 1},
    "gen_eta": {"type": "number", "minimum": 0},
    "gen_guidance_w": {"type": "number", "minimum": 0},
}


def esd_target(frozen, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, eta: float) -> torch.Tensor:
    """eps*(x_t, null, t) - eta (eps*(x_t, c, t) - eps*(x_t, null, t)) from the frozen model, without gradient."""
    null = torch.full_like(labels, null_class(frozen))
    with torch.no_grad():
        both = predict_eps(frozen, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.float().chunk(2)
        return uncond - eta * (cond - uncond)


def esd_loss(model, frozen, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, eta: float) -> torch.Tensor:
    """Element mean of (eps_theta(x_t, c, t) - esd_target)^2."""
    target = esd_target(frozen, x_t, t, labels, eta)
    return (predict_eps(model, x_t, t, labels).float() - target).pow(2).mean()


def real_x_t(ctx, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images noised to uniformly random timesteps (draws: timesteps, then noise)."""
    t = ctx.schedule.sample_timesteps(len(x0), ctx.generator, x0.device)
    return ctx.schedule.q_sample(x0, t, randn_like(x0, ctx.generator)), t


@torch.no_grad()
def generated_x_t(
    model,
    schedule,
    labels: torch.Tensor,
    image_shape,
    *,
    steps: int,
    eta: float,
    guidance_w: float,
    generator: torch.Generator,
    amp,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's guided DDIM samples of `labels`, from x_T ~ N(0, I) down to a timestep drawn uniformly among the
    sampler's `steps` timesteps (one for the batch). Draws: the stop, x_T, then each step's noise (eta > 0).
    Returns (x_t, t)."""
    ts = sampling_timesteps(schedule.timesteps, steps)
    stop = int(torch.randint(0, len(ts), (1,), generator=generator, device=generator.device))
    x = randn_like(torch.empty((len(labels), *image_shape), device=labels.device), generator)
    was_training = model.training
    model.eval()
    for i in range(stop):  # x at ts[i] -> x at ts[i + 1]
        tt = torch.full((len(labels),), ts[i], device=labels.device, dtype=torch.long)
        with amp():
            eps = guided_eps(model, x, tt, labels, guidance_w).float()
        noise = randn_like(x, generator) if eta > 0 else None
        x = ddim_step(schedule, x, eps, ts[i], ts[i + 1], eta, noise)
    model.train(was_training)
    return x, torch.full((len(labels),), ts[stop], device=labels.device, dtype=torch.long)


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False)
    frozen = ctx.load_original(ema=False).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    if p["x_t_source"] == "real":
        forget = ctx.batches([ctx.forget_class], p["batch_size"])
    labels = torch.full((p["batch_size"],), ctx.forget_class, device=ctx.device, dtype=torch.long)

    def step(_):
        if p["x_t_source"] == "real":
            x0, y = next(forget)
            x_t, t = real_x_t(ctx, x0)
        else:
            y = labels
            x_t, t = generated_x_t(
                model,
                ctx.schedule,
                y,
                ctx.data.image_shape,
                steps=p["gen_steps"],
                eta=p["gen_eta"],
                guidance_w=p["gen_guidance_w"],
                generator=ctx.generator,
                amp=ctx.autocast,
            )
        with ctx.autocast():
            loss = esd_loss(model, frozen, x_t, t, y, p["eta"])
        optimizer_step(optimizer, loss, model.parameters(), p["grad_clip"])

    ctx.run_steps(p["steps"], step, desc="esd")
    return model
