"""SalUn (Fan et al., 2024): saliency-masked unlearning by relabelling.

Prior (per forget class): the saliency mask, the top half of all weights ranked by |sum over batches of
the clipped gradient of the guided loss| on real images of c_f. Each unlearning step: the forget term
pulls eps_theta(x_t, c_f, t) onto the detached eps_theta(x_t, c_p, t) with c_p = (c_f + 1) mod K (each label
dropped to the null class with probability 0.1, as the reference's training-mode passes), plus alpha times the
standard loss on the other classes; the clipped gradient is masked before Adam.
"""

from contextlib import nullcontext

import torch

from unlearnbench.checkpoints import load_tensors, save_tensors
from unlearnbench.diffusion import drop_labels, guided_eps, randn_like, reduce_squared_error
from unlearnbench.method_api import LOOP_PARAM_SCHEMA, Prior
from unlearnbench.networks import null_class, predict_eps
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "SalUn"
COLOR = "tab:orange"
DEFAULTS = {
    "steps": 1000,
    "batch_size": 128,  # forget batch
    "retain_batch_size": 128,
    "lr": 1.0e-4,
    "grad_clip": 1.0,
    "alpha": 1.0e-3,  # retain weight, at CIFAR-10's image dimension (SCALED below)
    "cond_dropout": 0.1,  # on the retain term
    # On each of the forget term's two passes, its own draw: the reference runs both in the model's training mode,
    # which drops the label with the config's cond_drop_prob = 0.1.
    "forget_cond_dropout": 0.1,
    "mask_ratio": 0.5,  # fraction of entries kept
    "mask_guidance_w": 2.0,  # guided loss of the mask: eps = 3 eps_c - 2 eps_null
    "mask_batch_size": 128,
    "mask_grad_clip": 1.0,  # each mask batch's gradient clipped to this norm before the signed sum
}
# How a smaller config scales these paper-scale values (unlearnbench/scaling.py; the config's `scale` section).
# alpha weighs the pixel-summed retain loss against the element-mean forget term: its balance follows the image
# dimension (1e-3 at CIFAR-10's 3072 values is 0.048 at digits' 64).
SCALED = {
    "steps": "steps",
    "batch_size": "batch",
    "retain_batch_size": "batch",
    "mask_batch_size": "batch",
    "alpha": "pixel_sum_weight",
}
# What each value may be (JSON Schema; the config is checked against it before any job runs).
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "retain_batch_size": {"type": "integer", "minimum": 1},
    "alpha": {"type": "number", "minimum": 0},
    "cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "forget_cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "mask_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "mask_guidance_w": {"type": "number", "minimum": 0},
    "mask_batch_size": {"type": "integer", "minimum": 1},
    "mask_grad_clip": {"type": "number", "exclusiveMinimum": 0},
}


def saliency_scores(
    model, schedule, batches, *, guidance_w: float, reduction: str, generator, grad_clip: float = 1.0, amp=nullcontext
) -> dict:
    """|sum over batches of the (norm-`grad_clip` clipped) gradient of the guided loss|, per parameter entry.
    `amp` wraps the forward passes (bf16 autocast)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for x0, y in batches:
        model.zero_grad(set_to_none=True)
        t = schedule.sample_timesteps(len(x0), generator, x0.device)
        noise = randn_like(x0, generator)
        with amp():
            pred = guided_eps(model, schedule.q_sample(x0, t, noise), t, y, guidance_w)
        reduce_squared_error(pred, noise, reduction).mean().backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
        for n, p in params.items():
            total[n] += p.grad.detach()
    return {n: g.abs() for n, g in total.items()}


def top_fraction_mask(scores: dict, ratio: float) -> dict:
    """1 for the top `ratio` of all entries ranked globally (exactly floor(ratio * n), ties by position)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(ratio * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


def compute_mask(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False).eval()  # no dropout, as the reference's generate_mask (model.eval())
    x, y = ctx.images([ctx.forget_class])
    batches = [
        (x[i : i + p["mask_batch_size"]].to(ctx.device), y[i : i + p["mask_batch_size"]].to(ctx.device))
        for i in range(0, len(x), p["mask_batch_size"])
    ]
    with ctx.meter.timed():
        scores = saliency_scores(
            model,
            ctx.schedule,
            batches,
            guidance_w=p["mask_guidance_w"],
            reduction=ctx.reduction,
            generator=ctx.generator,
            grad_clip=p["mask_grad_clip"],
            amp=ctx.autocast,
        )
        mask = top_fraction_mask(scores, p["mask_ratio"])
    save_tensors(ctx.out_dir / "mask.safetensors", {n: m.to(torch.uint8) for n, m in mask.items()})


def mask_work(ctx) -> int:
    """Images of the forgotten class the mask's pass went over."""
    return int((ctx.data.train_y == ctx.forget_class).sum())


PRIORS = [
    Prior(
        "mask",
        compute_mask,
        scope="per_class",
        params=("mask_batch_size", "mask_guidance_w", "mask_ratio", "mask_grad_clip"),
        work=mask_work,
        work_units="images",
        paper_work=5000,
        paper_size="one pass over the 5,000 real images of the forgotten class",
    )
]


def relabel_loss(model, x_t, t, labels, relabel: int, cond_dropout: float, generator) -> torch.Tensor:
    """Element-mean squared error between eps_theta(x_t, c_f, t) and the detached eps_theta(x_t, c_p, t); each
    pass's labels are the null class with probability `cond_dropout`, drawn apart (the target's first)."""
    null = null_class(model)
    target_labels = drop_labels(torch.full_like(labels, relabel), cond_dropout, null, generator)
    forget_labels = drop_labels(labels, cond_dropout, null, generator)
    with torch.no_grad():
        target = predict_eps(model, x_t, t, target_labels)
    return (predict_eps(model, x_t, t, forget_labels).float() - target.float()).pow(2).mean()


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False)
    named = dict(model.named_parameters())
    masks = load_tensors(ctx.priors["mask"] / "mask.safetensors", ctx.device)
    grad_mask = {named[n]: m.to(named[n].dtype) for n, m in masks.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    forget = ctx.batches([ctx.forget_class], p["batch_size"])
    retain = ctx.batches(ctx.remaining_classes(), p["retain_batch_size"])
    relabel = (ctx.forget_class + 1) % ctx.num_classes

    def step(_):
        x0, y = next(forget)
        t = ctx.schedule.sample_timesteps(len(x0), ctx.generator, ctx.device)
        x_t = ctx.schedule.q_sample(x0, t, randn_like(x0, ctx.generator))
        with ctx.autocast():
            forget_loss = relabel_loss(model, x_t, t, y, relabel, p["forget_cond_dropout"], ctx.generator)
            x_r, y_r = next(retain)
            retain_loss = ctx.epsilon_loss(model, x_r, y_r, cond_dropout=p["cond_dropout"])
        optimizer_step(optimizer, forget_loss + p["alpha"] * retain_loss, model.parameters(), p["grad_clip"], grad_mask)

    ctx.run_steps(p["steps"], step, desc="salun")
    return model
