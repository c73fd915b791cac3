"""Fine-tuning (FT), a control rather than an unlearning method: keep training on the remaining classes only.

Not in the paper. It is SAFEMax's retain term with the forget term removed (same loss, batches, optimiser and
clipping), so the two differ only in the forget objective. Whatever FT also does to FID on the remaining
classes comes from the extra training, not from unlearning; the forgotten class is forgotten, if at all,
only by drift. Run it beside the others with `--config methods=[sa,salun,safemax,finetune]`.
"""

import torch

from unlearnbench.method_api import LOOP_PARAM_SCHEMA
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "FT"
CONTROL = True  # a reference point: shown in the tables, never marked best
DEFAULTS = {
    "steps": 1000,  # SAFEMax's
    "batch_size": 128,  # images of the remaining classes per step
    "lr": 1.0e-4,
    "grad_clip": 1.0,
    "cond_dropout": 0.0,  # 0 as in SAFEMax's retain term; 0.1 would be the base model's training
}
SCALED = {"steps": "steps", "batch_size": "batch"}
PARAM_SCHEMA = {
    **LOOP_PARAM_SCHEMA,  # steps, batch_size, lr, grad_clip
    "cond_dropout": {"type": "number", "minimum": 0, "maximum": 1},
}


def unlearn(ctx):
    p = ctx.params
    model = ctx.load_original(ema=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    retain = ctx.batches(ctx.remaining_classes(), p["batch_size"])

    def step(_):
        x, y = next(retain)
        with ctx.autocast():
            loss = ctx.epsilon_loss(model, x, y, cond_dropout=p["cond_dropout"])
        optimizer_step(optimizer, loss, model.parameters(), p["grad_clip"])

    ctx.run_steps(p["steps"], step, desc="finetune")
    return model
