"""GA and RL (methods/ga.py, methods/rl.py), SalUn's DDPM baselines: their losses against computations by hand with
plain torch ops, RL's forget term against SalUn's, their scale rules, and short runs on the tiny test config."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unlearnbench.context import RunContext
from unlearnbench.cost import CostMeter
from unlearnbench.data import to_uint8
from unlearnbench.diffusion import Schedule
from unlearnbench.method_api import load_method
from unlearnbench.networks import build_unet

ga = load_method("ga")
rl = load_method("rl")
salun = load_method("salun")

T = 20
MICRO = {
    "block_out_channels": (8, 8),
    "norm_num_groups": 4,
    "sample_size": 4,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}
K, NULL = 3, 3  # the micro UNet's classes; index 3 is its null embedding


def micro_unet(seed=0):
    torch.manual_seed(seed)
    return build_unet("tiny", K, MICRO)


def context(params, reduction="sum", seed=5, original=None, data=None, forget_class=1, priors=None):
    """A RunContext on the CPU: T = 20 linear betas, `seed` for its generator, copies of `original` as the start."""
    return RunContext(
        config={"diffusion": {"loss_reduction": reduction}, "base": {}},
        params=params,
        data=data or SimpleNamespace(num_classes=K),
        schedule=Schedule(T, 1e-4, 0.02),
        device=torch.device("cpu"),
        seed=3,
        generator=torch.Generator().manual_seed(seed),
        meter=CostMeter("cpu"),
        load_original=lambda ema=False: copy.deepcopy(original).train(),
        forget_class=forget_class,
        priors=priors or {},
    )


# --- by hand: the DDPM forward process and the standard loss, written out -------------------------------------------
ALPHA_BAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()


def noisy(x0, t, noise):
    a = ALPHA_BAR[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def dropped(labels, p, g):
    """The null class with probability p, one uniform draw per label (none drawn at p = 0)."""
    if p <= 0:
        return labels
    return torch.where(torch.rand(labels.shape, generator=g) < p, torch.full_like(labels, NULL), labels)


def standard_loss(model, x0, labels, p, reduction, g):
    """||eps - eps_theta(x_t, c, t)||^2 per image (summed or averaged over its values), averaged over the batch;
    draws in the suite's order: timesteps, noise, label dropout."""
    t = torch.randint(0, T, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    labels = dropped(labels, p, g)
    error = (noise - model(noisy(x0, t, noise), t, labels)).pow(2).flatten(1)
    return (error.sum(1) if reduction == "sum" else error.mean(1)).mean()


def batches(n=6):
    g = torch.Generator().manual_seed(11)
    forget = (torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, torch.full((n,), 1))
    retain = (torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, torch.tensor([0, 2] * (n // 2)))
    return forget, retain


# --- GA -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "alpha, reduction, forget_p, retain_p",
    [(0.0, "sum", 0.0, 0.0), (1e-3, "sum", 0.0, 0.5), (2.5, "mean", 0.5, 0.1), (1e-3, "sum", 1.0, 0.0)],
)
def test_ga_loss_is_minus_the_forget_loss_plus_alpha_times_the_retain_loss(alpha, reduction, forget_p, retain_p):
    model = micro_unet().eval()  # no dropout: the passes differ by their inputs only
    forget, retain = batches()
    params = {"alpha": alpha, "forget_cond_dropout": forget_p, "cond_dropout": retain_p}
    with torch.no_grad():
        loss = ga.ga_loss(model, context(params, reduction), forget, retain).item()
        g = torch.Generator().manual_seed(5)
        forget_loss = standard_loss(model, *forget, forget_p, reduction, g)
        retain_loss = standard_loss(model, *retain, retain_p, reduction, g)
    assert forget_loss > 0 and retain_loss > 0
    assert loss == pytest.approx(-forget_loss.item() + alpha * retain_loss.item(), rel=1e-5, abs=1e-7)
    if alpha == 0:  # pure ascent: the negated standard loss of the forgotten class
        assert loss < 0


def test_ga_gradient_ascends_the_forget_loss():
    """alpha = 0: GA's gradient is minus the standard loss's gradient on the same draws."""
    model = micro_unet().eval()
    forget, retain = batches()
    params = {"alpha": 0.0, "forget_cond_dropout": 0.0, "cond_dropout": 0.0}
    ascent = torch.autograd.grad(
        ga.ga_loss(model, context(params), forget, retain), list(model.parameters()), allow_unused=True
    )
    descent = torch.autograd.grad(
        standard_loss(model, *forget, 0.0, "sum", torch.Generator().manual_seed(5)),
        list(model.parameters()),
        allow_unused=True,
    )
    assert [a is None for a in ascent] == [d is None for d in descent]
    ascent, descent = (torch.cat([g.flatten() for g in grads if g is not None]) for grads in (ascent, descent))
    # x_t by hand rounds a little differently (sqrt in fp32), and some entries are cancellation noise (the
    # attention's key bias): agreement to 1e-5 of the largest entry
    assert descent.abs().max() > 0
    assert torch.allclose(ascent, -descent, rtol=1e-5, atol=1e-5 * descent.abs().max().item())


# --- RL -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "other_label, alpha, reduction, p, retain_p",
    [
        ("next", 1e-3, "sum", 0.0, 0.0),
        ("next", 0.5, "mean", 0.5, 0.1),
        ("random", 2.0, "sum", 0.1, 0.5),
        ("random", 0.0, "sum", 0.0, 0.0),
    ],
)
def test_rl_loss_is_the_relabelled_forget_term_plus_alpha_times_the_retain_loss(
    other_label, alpha, reduction, p, retain_p
):
    model = micro_unet().eval()
    forget, retain = batches()
    params = {"alpha": alpha, "forget_cond_dropout": p, "cond_dropout": retain_p, "other_label": other_label}
    with torch.no_grad():
        loss = rl.rl_loss(model, context(params, reduction), forget, retain).item()
        g = torch.Generator().manual_seed(5)
        x0, y = forget
        t = torch.randint(0, T, (len(x0),), generator=g)
        x_t = noisy(x0, t, torch.randn(x0.shape, generator=g))
        if other_label == "next":
            target_labels = torch.full_like(y, 2)  # (1 + 1) mod 3
        else:
            target_labels = (y + torch.randint(1, K, y.shape, generator=g)) % K
            assert not (target_labels == 1).any()
        target_labels = dropped(target_labels, p, g)  # the target's draw first, as SalUn's
        forget_labels = dropped(y, p, g)
        forget_term = (model(x_t, t, forget_labels) - model(x_t, t, target_labels)).pow(2).mean()
        retain_loss = standard_loss(model, *retain, retain_p, reduction, g)
    assert forget_term > 0
    assert loss == pytest.approx(forget_term.item() + alpha * retain_loss.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("forget_class, num_classes", [(0, 10), (9, 10), (4, 10), (1, 2)])
def test_rl_other_label_is_the_next_class_or_any_class_but_the_forgotten_one(forget_class, num_classes):
    labels = torch.full((4500,), forget_class)
    nxt = rl.other_labels(labels, num_classes, "next", torch.Generator().manual_seed(0))
    assert torch.equal(nxt, torch.full_like(labels, (forget_class + 1) % num_classes))
    drawn = rl.other_labels(labels, num_classes, "random", torch.Generator().manual_seed(0))
    assert not (drawn == forget_class).any()  # never the forgotten class
    counts = torch.bincount(drawn, minlength=num_classes)
    others = [c for c in range(num_classes) if c != forget_class]
    expected = len(labels) / len(others)
    assert all(abs(counts[c].item() - expected) < 5 * expected**0.5 for c in others)  # uniform over the others
    assert torch.equal(drawn, rl.other_labels(labels, num_classes, "random", torch.Generator().manual_seed(0)))
    assert (
        not torch.equal(drawn, rl.other_labels(labels, num_classes, "random", torch.Generator().manual_seed(1)))
        or num_classes == 2
    )
    with pytest.raises(ValueError, match="'next' or 'random'"):
        rl.other_labels(labels, num_classes, "previous", torch.Generator())


def test_rl_target_is_detached():
    """The gradient is that of (eps(c_f) - stopgrad eps(c'))^2: no gradient flows through the relabelled pass."""
    model = micro_unet().eval()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(0)
    x_t, t, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, T, (8,), generator=g), torch.full((8,), 1)
    target_labels = torch.full_like(y, 2)
    got = torch.autograd.grad(rl.relabel_loss(model, x_t, t, y, target_labels, 0.0, None), params, allow_unused=True)

    def by_hand(detach):
        target = model(x_t, t, target_labels)
        target = target.detach() if detach else target
        return torch.autograd.grad((model(x_t, t, y) - target).pow(2).mean(), params, allow_unused=True)

    detached, attached = by_hand(True), by_hand(False)
    for a, b in zip(got, detached):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-8))
    # the check can fail: with the target attached the gradient is another one
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(detached, attached) if a is not None)


@pytest.mark.parametrize("cond_dropout", [0.0, 0.1, 0.5])
def test_rl_forget_term_equals_saluns_bit_for_bit(cond_dropout):
    """RL's forget term is SalUn's (salun.relabel_loss) with c' = (c_f + 1) mod K: same value, same gradient, same
    draws from the generator (the next draw after it agrees too)."""
    model = micro_unet().train()
    x_t, t, y = torch.randn(64, 1, 4, 4), torch.randint(0, T, (64,)), torch.full((64,), 1)
    params = list(model.parameters())
    results = []
    for term in (
        lambda g: salun.relabel_loss(model, x_t, t, y, 2, cond_dropout, g),
        lambda g: rl.relabel_loss(model, x_t, t, y, rl.other_labels(y, K, "next", g), cond_dropout, g),
    ):
        g = torch.Generator().manual_seed(7)
        torch.manual_seed(0)  # dropout layers, if any, alike
        loss = term(g)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss.detach(), grads, torch.rand(1, generator=g)))
    (a_loss, a_grad, a_next), (b_loss, b_grad, b_next) = results
    assert torch.equal(a_loss, b_loss) and torch.equal(a_next, b_next)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(a_grad, b_grad))


def test_rl_is_salun_with_a_mask_that_keeps_every_weight(tmp_path):
    """Whole runs: RL ("next") and SalUn given an all-ones mask end at the same weights, bit for bit (SalUn is RL on
    the masked weights, as in SalUn's code)."""
    from unlearnbench.checkpoints import save_tensors

    original = micro_unet(1)
    rng = torch.Generator().manual_seed(0)
    data = SimpleNamespace(
        train_x=to_uint8(torch.rand(12, 1, 4, 4, generator=rng) * 2 - 1), train_y=np.array([0, 1, 2] * 4), num_classes=K
    )
    save_tensors(
        tmp_path / "mask" / "mask.safetensors",
        {n: torch.ones_like(p, dtype=torch.uint8) for n, p in original.named_parameters()},
    )
    shared = {
        "steps": 3,
        "batch_size": 4,
        "retain_batch_size": 4,
        "lr": 1e-2,
        "grad_clip": 1.0,
        "alpha": 0.05,
        "cond_dropout": 0.1,
        "forget_cond_dropout": 0.1,
    }
    weights = []
    for method, params, priors in (
        (salun, {**salun.DEFAULTS, **shared}, {"mask": tmp_path / "mask"}),
        (rl, {**rl.DEFAULTS, **shared}, None),
    ):
        ctx = context(params, original=original, data=data, priors=priors)
        weights.append(torch.cat([p.detach().flatten() for p in method.unlearn(ctx).parameters()]))
    start = torch.cat([p.detach().flatten() for p in original.parameters()])
    assert not torch.equal(weights[1], start)
    assert torch.equal(weights[0], weights[1])


# --- declarations and scale rules ------------------------------------------------------------------------------------
def test_published_values_are_saluns_loop_and_alpha():
    for module in (ga, rl):
        for key in (
            "steps",
            "batch_size",
            "retain_batch_size",
            "lr",
            "grad_clip",
            "alpha",
            "cond_dropout",
            "forget_cond_dropout",
        ):
            assert module.DEFAULTS[key] == salun.DEFAULTS[key], (module.DISPLAY_NAME, key)
        assert set(module.PARAM_SCHEMA) == set(module.DEFAULTS)
        assert not module.PRIORS and module.COLOR not in {"tab:blue", "tab:orange", "tab:green", "tab:purple"}
    assert rl.DEFAULTS["other_label"] == "next" and ga.COLOR != rl.COLOR
    assert (ga.DISPLAY_NAME, rl.DISPLAY_NAME) == ("GA", "RL")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_alpha_is_scaled_as_saluns_for_rl_and_kept_for_ga(reduction):
    """RL's alpha weighs a pixel-summed retain loss against an element-mean forget term, as SalUn's: it follows the
    image dimension (1e-3 at 3072 values -> 0.048 at digits' 64). GA's two terms are the same loss: its alpha is a
    ratio of like quantities and stays 1e-3."""
    from unlearnbench.config import load_config, method_params

    config = load_config(overrides={"methods": ["ga", "rl"], "diffusion": {"loss_reduction": reduction}})
    got = {name: method_params(config, name, module) for name, module in (("ga", ga), ("rl", rl), ("salun", salun))}
    assert got["rl"]["alpha"] == pytest.approx(got["salun"]["alpha"], rel=1e-12)
    assert got["rl"]["alpha"] == pytest.approx(1e-3 * (3072 / 64 if reduction == "sum" else 3072), rel=1e-12)
    assert got["ga"]["alpha"] == 1e-3
    for key in ("steps", "batch_size", "retain_batch_size"):  # 1000 -> 60, 128 -> 64 on the default config
        assert got["ga"][key] == got["rl"][key] == got["salun"][key]


# --- short runs on the tiny test config ------------------------------------------------------------------------------
def test_short_runs_on_the_tiny_config_change_the_weights(tmp_path, tiny_config):
    """As the contract test: the stage that runs a method (its checks included) on an untrained tiny original, for
    GA and for RL with each other_label; the saved models differ from the original and from each other."""
    from tiny_original import adopted_original

    from unlearnbench import stages
    from unlearnbench.checkpoints import load_unet

    config = copy.deepcopy(tiny_config)
    config["method_params"] = {**config["method_params"], "ga": {"steps": 2}, "rl": {"steps": 2}}
    adopted_original(tmp_path, config)

    def flat(model):
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = flat(load_unet(tmp_path / "original" / "unet"))
    runs = {}
    for name, overrides in (("ga", None), ("rl", None), ("rl", {"other_label": "random"})):
        out = tmp_path / f"{name}-{bool(overrides)}"
        record = stages.run_unlearning(
            config, name, 2, 0, tmp_path / "data.npz", tmp_path / "original", out, {}, overrides=overrides
        )
        assert record["rte_min"] > 0
        runs[out.name] = flat(load_unet(out / "unet"))
    for key, weights in runs.items():
        assert torch.isfinite(weights).all() and not torch.equal(weights, start), key
    assert not torch.equal(runs["rl-False"], runs["rl-True"])  # other_label is read
    assert not torch.equal(runs["ga-False"], runs["rl-False"])
