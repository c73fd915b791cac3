"""GA (gradient ascent), a baseline of SalUn (Fan et al., ICLR 2024, arXiv 2310.12508) for class-conditional DDPMs.

Source: SalUn's public DDPM code (`train.py --mode saliency_unlearn --method ga`, configs/
cifar10_saliency_unlearn.yml, which all its `--method`s share). Each step, on real images:
    loss = -L(forget batch of c_f) + alpha * L(retain batch of the other classes),
L the standard noise-prediction loss ||eps - eps_theta(x_t, c, t)||^2 (the run's loss reduction, mean over the
batch), each term with its own timesteps and noise; from that config: Adam 1e-4, the full gradient clipped to norm
1, batch 128 + 128, 1000 steps, no EMA (the raw weights are trained and evaluated), as SalUn's.

As in the reference both terms are the model's training loss, whose label is dropped to the null class with
probability 0.1 (`cond_dropout` on the retain term, `forget_cond_dropout` on the forget term: the ascent then also
reaches the unconditional eps that guidance uses on 10 % of the forget images). The retain term's dropout keeps the
null embedding trained, as the base model's training did, so guided sampling of the remaining classes stays intact.

Inferred: alpha = 1e-3, SalUn's (methods/salun.py). It is a command-line argument of the code (`--alpha`, default
1.0), and the README gives 1e-3 only for SalUn's own run (`--method rl` with a mask). alpha is NOT scaled with the
image dimension (SalUn's `pixel_sum_weight` rule): here both terms are the same loss with the same reduction, so
alpha is a ratio of like quantities, and 1e-3 keeps the reference's balance at any image size under either
reduction (the rule exists for SalUn's element-mean forget term against its pixel-summed retain term).

Not here: SalUn's code also applies its saliency mask to GA when given one (`--mask_path`). A mask switched by a
param does not fit the interface (every prior in PRIORS is a job of every run and counts in its cost), so this file
is plain GA (NOTE).
"""

import torch

from unlearnbench.method_api import LOOP_PARAM_SCHEMA
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "GA"
COLOR = "tab:cyan"
NOTE = (
    "GA without SalUn's saliency mask (its code can apply the mask to GA); alpha 1e-3, SalUn's, not scaled with "
    "the image size (both terms are the same loss)"
)
DEFAULTS = {
    "steps": 1000,  # the reference config's n_iters, shared by its --method ga | rl (and SalUn)
    "batch_size": 128,  # forget batch
    "retain_batch_size": 128,
    "lr": 1.0e-4,
    "grad_clip": 1.0,
    "alpha": 1.0e-3,  # retain weight: SalUn's value (inferred); not scaled (module docstring)
    "cond_dropout": 0.1,  # on the retain term, as SalUn's
    "forget_cond_dropout": 0.1,  # on the forget term: the reference's GA term is the training loss (cond_drop_prob 0.1)
}
# How a smaller config scales these paper-scale values (unlearnbench/scaling.py; the config's `scale` section).
SCALED = {"steps": "steps", "batch_size": "batch", "retain_batch_size": "batch"}
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "retain_batch_size": {"type": "integer", "minimum": 1},
    "alpha": {"type": "number", "minimum": 0},
    "cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "forget_cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
}


def ga_loss(model, ctx, forget_batch, retain_batch) -> torch.Tensor:
    """-L(forget) + alpha L(retain), L = ctx.epsilon_loss; draws (timesteps, noise, label dropout) forget term first."""
    p = ctx.params
    with ctx.autocast():
        forget = ctx.epsilon_loss(model, *forget_batch, cond_dropout=p["forget_cond_dropout"])
        retain = ctx.epsilon_loss(model, *retain_batch, cond_dropout=p["cond_dropout"])
    return -forget + p["alpha"] * retain


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    forget = ctx.batches([ctx.forget_class], p["batch_size"])
    retain = ctx.batches(ctx.remaining_classes(), p["retain_batch_size"])

    def step(_):
        optimizer_step(optimizer, ga_loss(model, ctx, next(forget), next(retain)), model.parameters(), p["grad_clip"])

    ctx.run_steps(p["steps"], step, desc="ga")
    return model
