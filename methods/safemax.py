"""SAFEMax (Spartalis et al., 2025): make the model predict uninformative noise for the forgotten class.

Loss on real images of the forgotten class c_f:  psi(t) * || eps_T - eps_theta(x_t, c_f, t) ||^2,
psi(t) = exp(-lambda t / T) (t in [1, T]), eps_T a fresh standard normal draw independent of the noise
that built x_t (or, with target "x_t", the noisy input itself). As eps_T is independent of x_t, this pulls
eps_theta(x_t, c_f, t) towards 0: samples of c_f lose their class, which the evaluation sees as high entropy H.
"""

import torch

from unlearnbench.diffusion import randn_like, reduce_squared_error
from unlearnbench.method_api import LOOP_PARAM_SCHEMA
from unlearnbench.networks import predict_eps
from unlearnbench.training import ema_update, make_ema, optimizer_step

DISPLAY_NAME = "SAFEMax"
COLOR = "tab:green"
DEFAULTS = {
    "steps": 1000,  # inferred from the reported RTE (docs/protocol-notes.md, SAFEMax)
    "batch_size": 128,
    "lr": 1.0e-4,
    "grad_clip": 1.0,
    "lambda": 1.0,  # psi(t) = exp(-lambda t / T); 0 disables the scheduler
    "target": "fresh_noise",  # fresh_noise | x_t
    "retain_weight": 0.0,  # no retain loss on the poster
    "retain_batch_size": 128,
    # Inferred too (docs/protocol-notes.md, SAFEMax): start from the base model's non-EMA weights, evaluate the raw weights.
    "start_weights": "raw",  # raw | ema: which of the base model's weights unlearning starts from
    "ema_decay": None,  # null: evaluate the raw weights; a number: keep an EMA, continued from the base
    # model's EMA as SA's is, and evaluate it
}
# How a smaller config scales these paper-scale values (unlearnbench/scaling.py; the config's `scale` section).
SCALED = {"steps": "steps", "batch_size": "batch", "retain_batch_size": "batch", "ema_decay": "ema"}
# What each value may be (JSON Schema; the config is checked against it before any job runs).
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "lambda": {"type": "number", "minimum": 0, "title": "λ  (ψ(t) = exp(−λ·t/T))"},  # title: the figures' axis
    "target": {"enum": ["fresh_noise", "x_t"]},
    "retain_weight": {"type": "number", "minimum": 0},
    "retain_batch_size": {"type": "integer", "minimum": 1},
    "start_weights": {"enum": ["raw", "ema"]},
    "ema_decay": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1},
}


def psi(t_index: torch.Tensor, timesteps: int, lam: float) -> torch.Tensor:
    """exp(-lambda t / T) with the paper's t in [1, T] (index t_index in [0, T-1])."""
    return torch.exp(-lam * (t_index.float() + 1.0) / timesteps)


def forget_target(x_t: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "fresh_noise":
        return randn_like(x_t, generator)
    if kind == "x_t":
        return x_t
    raise ValueError(f"safemax target must be 'fresh_noise' or 'x_t', got {kind!r}")


def safemax_loss(model, ctx, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p, sched = ctx.params, ctx.schedule
    t = sched.sample_timesteps(len(x0), ctx.generator, x0.device)
    x_t = sched.q_sample(x0, t, randn_like(x0, ctx.generator))
    target = forget_target(x_t, p["target"], ctx.generator)
    with ctx.autocast():
        pred = predict_eps(model, x_t, t, labels)
    return (psi(t, sched.timesteps, p["lambda"]) * reduce_squared_error(pred, target, ctx.reduction)).mean()


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=p["start_weights"] == "ema")
    ema = make_ema(ctx.load_original(ema=True)) if p["ema_decay"] is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    forget = ctx.batches([ctx.forget_class], p["batch_size"])
    retain = ctx.batches(ctx.remaining_classes(), p["retain_batch_size"]) if p["retain_weight"] > 0 else None

    def step(_):
        loss = safemax_loss(model, ctx, *next(forget))
        if retain is not None:
            x_r, y_r = next(retain)
            with ctx.autocast():
                loss = loss + p["retain_weight"] * ctx.epsilon_loss(model, x_r, y_r)
        optimizer_step(optimizer, loss, model.parameters(), p["grad_clip"])
        if ema is not None:
            ema_update(ema, model, p["ema_decay"])

    ctx.run_steps(p["steps"], step, desc="safemax")
    return model if ema is None else ema
