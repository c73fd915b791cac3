"""Scale rules: how a method file's paper-scale DEFAULTS become the values a smaller config runs.

A method file names the rule of each scale-dependent parameter (`SCALED = {"steps": "steps", ...}`); the config's
`scale` section gives the factors (`scale: {steps: 0.06, batch: 0.5}`; 1 at the paper's scale) and the dataset
gives the image dimension. A value set in `method_params` is taken as given and recorded as set by hand, so every
deviation from a written rule shows in the tables' notes (report.param_notes).

The rules (docs/protocol-notes.md, "Scaling the protocol down"):
- steps: step counts times `scale.steps`, so the paper's step ratios between methods are kept;
- batch: batch sizes times `scale.batch`;
- ema: an EMA decay d becomes d ** (paper steps / steps), with the method's `steps` in effect (a rule's or a
  hand-set one): after the run the EMA keeps the paper's share of the starting weights (0.9999 ** 20000 =
  d' ** steps);
- pixel_sum_weight: a weight that balances a pixel-summed loss against an element-mean one (SalUn's alpha) keeps
  the paper's balance: times 3072 / d under `loss_reduction: sum` (d = C*H*W; 3072 is CIFAR-10's), times 3072
  under `mean`, where both terms are element means.
"""

from __future__ import annotations

import math

from .settings import ScaleSettings

PAPER_IMAGE_DIM = 3 * 32 * 32  # CIFAR-10: the images the paper's weights were chosen for


def _count(value, factor: float):
    return None if value is None else max(1, int(round(value * factor)))


def _image_dim(image_shape) -> int:
    return math.prod(image_shape)


RULES = {
    "steps": lambda value, scale, image_shape, reduction: _count(value, scale.steps),
    "batch": lambda value, scale, image_shape, reduction: _count(value, scale.batch),
    "pixel_sum_weight": lambda value, scale, image_shape, reduction: (
        value * PAPER_IMAGE_DIM / (_image_dim(image_shape) if reduction == "sum" else 1)
    ),
    "ema": None,  # needs the method's steps in effect: resolve_params applies it last
}
RULE_TEXT = {
    "steps": "x scale.steps",
    "batch": "x scale.batch",
    "ema": "** (paper steps / steps)",
    "pixel_sum_weight": "x 3072 / image dimension",
}


def scaled_value(rule: str, value, scale: ScaleSettings, image_shape, loss_reduction: str):
    """`value` (a paper-scale default) under `rule` for these scale factors, images and loss reduction (config
    `diffusion.loss_reduction`); not "ema": see resolve_params."""
    if RULES.get(rule) is None:
        raise KeyError(f"no context-free scale rule {rule!r}; rules: {', '.join(RULES)}")
    return RULES[rule](value, scale, tuple(image_shape), loss_reduction)


def ema_decay_for(decay, paper_steps, steps):
    """The decay whose EMA keeps, after `steps`, the share of the starting weights `decay` keeps after
    `paper_steps`."""
    return None if decay is None else decay ** (paper_steps / steps)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def resolve_params(
    defaults: dict,
    scaled: dict,
    given: dict,
    overrides: dict,
    scale: ScaleSettings,
    image_shape,
    loss_reduction: str,
    variant: dict | None = None,
) -> tuple[dict, dict]:
    """A method's effective params and where each one that is not the published default came from.

    Order: DEFAULTS (the paper's values), a variant's changes (`variant`, at the paper's scale too), the scale
    rules of `scaled` ({param: rule}), the config's `method_params` (`given`, set by hand), then `overrides` (an
    ablation point or `--set`). Returns (params, origins), origins[param] a short text for each value that differs
    from the published default.
    """
    start = {**defaults, **(variant or {})}
    origins = {
        name: f"variant; published {defaults[name]!r}"
        for name, value in (variant or {}).items()
        if not _same(value, defaults[name])
    }
    by_hand = {
        name: (source, value)
        for source, values in (("config", given), ("override", overrides))
        for name, value in (values or {}).items()
    }  # an override wins over the config
    params = dict(start)
    for name, rule in scaled.items():
        if rule != "ema":
            params[name] = scaled_value(rule, start[name], scale, image_shape, loss_reduction)
    steps = by_hand["steps"][1] if "steps" in by_hand else params.get("steps")
    for name, rule in scaled.items():  # an EMA decay follows the steps in effect
        if rule == "ema":
            params[name] = ema_decay_for(start[name], start["steps"], steps)
    for name, rule in scaled.items():
        if not _same(params[name], start[name]):
            origins[name] = f"rule: {start[name]!r} {RULE_TEXT[rule]}"
    for name, (source, value) in by_hand.items():
        if _same(value, params[name]):
            continue  # the value in force restated: nothing changes
        if name in scaled:
            origins[name] = f"{source}; the rule gives {params[name]!r}"
        else:
            origins[name] = f"{source}; {'variant' if name in (variant or {}) else 'published'} {start[name]!r}"
        params[name] = value
    return params, origins
