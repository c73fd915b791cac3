"""RL (random label), a baseline of SalUn (Fan et al., ICLR 2024, arXiv 2310.12508) for class-conditional DDPMs.

Source: SalUn's public DDPM code (`train.py --mode saliency_unlearn --method rl`, without `--mask_path`): SalUn is
this loss with its saliency mask; RL is the same loss on all weights. Each step, on real images of c_f:
    forget = mean over elements of (eps_theta(x_t, c_f, t) - stopgrad eps_theta(x_t, c', t))^2,
    loss   = forget + alpha * L(retain batch of the other classes),
L the standard noise-prediction loss (the run's loss reduction, mean over the batch), c' = (c_f + 1) mod K (the
code's fixed choice; `other_label: random` draws c' per image uniformly among the K - 1 other classes, an option the
code does not use). Both forget passes run in the model's training mode, where the reference drops each label to
the null class with probability 0.1, each pass its own draw (`forget_cond_dropout`); the retain term drops labels
with probability 0.1 too (`cond_dropout`: keeps the null embedding that guidance uses trained). From the code's
shared config: Adam 1e-4, the full gradient clipped to norm 1, batch 128 + 128, 1000 steps, no EMA.

alpha is SalUn's 1e-3 (inferred: a command-line argument of the code, default 1.0; its README gives 1e-3 for the
same loss with the mask), scaled as SalUn's (`pixel_sum_weight`): the forget term is an element mean, the retain
term is summed over the image's values (`loss_reduction: sum`, the reference's).

The forget term is computed as SalUn's (methods/salun.py, `relabel_loss`): tests/test_baselines_ga_rl.py checks that
the two agree bit for bit. It is written here, not imported, because a method's jobs rerun when its own file
changes, not when a file it imports does.
"""

import torch

from unlearnbench.diffusion import drop_labels, randn_like
from unlearnbench.method_api import LOOP_PARAM_SCHEMA
from unlearnbench.networks import null_class, predict_eps
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "RL"
COLOR = "tab:pink"
DEFAULTS = {
    "steps": 1000,  # the reference config's n_iters, shared by its --method ga | rl (and SalUn)
    "batch_size": 128,  # forget batch
    "retain_batch_size": 128,
    "lr": 1.0e-4,
    "grad_clip": 1.0,
    "alpha": 1.0e-3,  # retain weight, at CIFAR-10's image dimension (SCALED below), SalUn's (inferred)
    "cond_dropout": 0.1,  # on the retain term, as SalUn's
    "forget_cond_dropout": 0.1,  # on each of the forget term's two passes, its own draw, as SalUn's
    "other_label": "next",  # next: c' = (c_f + 1) mod K (the code's); random: per image, any class but c_f
}
# How a smaller config scales these paper-scale values (unlearnbench/scaling.py; the config's `scale` section).
# alpha weighs the pixel-summed retain loss against the element-mean forget term, as SalUn's.
SCALED = {"steps": "steps", "batch_size": "batch", "retain_batch_size": "batch", "alpha": "pixel_sum_weight"}
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "retain_batch_size": {"type": "integer", "minimum": 1},
    "alpha": {"type": "number", "minimum": 0},
    "cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "forget_cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "other_label": {"enum": ["next", "random"]},
}


def other_labels(labels: torch.Tensor, num_classes: int, kind: str, generator) -> torch.Tensor:
    """c' for each image of class c: (c + 1) mod K ("next"), or (c + u) mod K with u uniform in 1..K-1 drawn per image
    from `generator` ("random": uniform over the classes other than c, never c)."""
    if kind == "next":
        return (labels + 1) % num_classes
    if kind == "random":
        shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=generator.device)
        return (labels + shift.to(labels.device)) % num_classes
    raise ValueError(f"rl other_label must be 'next' or 'random', got {kind!r}")


def relabel_loss(model, x_t, t, labels, target_labels, cond_dropout: float, generator) -> torch.Tensor:
    """Element-mean squared error between eps_theta(x_t, labels, t) and the detached eps_theta(x_t, target_labels, t);
    each pass's labels are the null class with probability `cond_dropout`, drawn apart (the target's first)."""
    null = null_class(model)
    target_labels = drop_labels(target_labels, cond_dropout, null, generator)
    forget_labels = drop_labels(labels, cond_dropout, null, generator)
    with torch.no_grad():
        target = predict_eps(model, x_t, t, target_labels)
    return (predict_eps(model, x_t, t, forget_labels).float() - target.float()).pow(2).mean()


def rl_loss(model, ctx, forget_batch, retain_batch) -> torch.Tensor:
    """forget + alpha L(retain); draws: the forget term's timesteps, noise, c' ("random"), label dropout, then the
    retain term's."""
    p = ctx.params
    x0, y = forget_batch
    t = ctx.schedule.sample_timesteps(len(x0), ctx.generator, x0.device)
    x_t = ctx.schedule.q_sample(x0, t, randn_like(x0, ctx.generator))
    target_labels = other_labels(y, ctx.num_classes, p["other_label"], ctx.generator)
    with ctx.autocast():
        forget = relabel_loss(model, x_t, t, y, target_labels, p["forget_cond_dropout"], ctx.generator)
        retain = ctx.epsilon_loss(model, *retain_batch, cond_dropout=p["cond_dropout"])
    return forget + p["alpha"] * retain


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    forget = ctx.batches([ctx.forget_class], p["batch_size"])
    retain = ctx.batches(ctx.remaining_classes(), p["retain_batch_size"])

    def step(_):
        optimizer_step(optimizer, rl_loss(model, ctx, next(forget), next(retain)), model.parameters(), p["grad_clip"])

    ctx.run_steps(p["steps"], step, desc="rl")
    return model
