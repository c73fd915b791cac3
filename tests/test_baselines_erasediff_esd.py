"""EraseDiff and ESD (methods/erasediff.py, methods/esd.py) against independent computations with plain torch ops.

Each loss is replayed by hand: the same generator draws in the same order, x_t from alpha_bar written out, the
squared errors reduced as the formulas say. Whole runs are replayed too, so that what the loop does with the losses
(the inner optimiser kept apart, theta restored, the frozen copy left alone) is checked, not only the losses.
"""

import copy
import math
from contextlib import nullcontext
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

erasediff = load_method("erasediff")
esd = load_method("esd")

T = 20
K = 3  # the micro UNet's classes; label 3 is its null class
NULL = 3
MICRO = {
    "block_out_channels": (8, 8),
    "norm_num_groups": 4,
    "sample_size": 4,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}
ALPHA_BAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()


def micro_unet(seed=0):
    torch.manual_seed(seed)
    return build_unet("tiny", K, MICRO)


def noised(x0, t, noise):
    a = ALPHA_BAR[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def pixel_sum(err):
    """Squared error summed over pixels, mean over the batch (loss_reduction: sum)."""
    return err.pow(2).flatten(1).sum(1).mean()


def same_grads(grads, expected) -> bool:
    """Equal up to rounding: a few units in the last place of the largest entry of all (not of each tensor: the
    attention's key bias has an exactly zero gradient, adding one constant to every key leaves the softmax
    unchanged, and its entries are cancellation noise)."""
    scale = max(b.abs().max().item() for b in expected)
    return all(torch.allclose(a, b, rtol=1e-5, atol=1e-5 * scale) for a, b in zip(grads, expected))


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def same_weights(model, expected, lr: float, steps: int = 2) -> bool:
    """Weights after a replayed run of a few Adam steps of `lr`: every entry to 1% of one step, but for a handful
    (at most 1 in 2,000) that may be off by up to the steps' reach. Adam divides each entry's gradient by its own
    size: an entry whose first gradient is near zero (the attention's key bias: exactly zero, adding one constant
    to every key leaves the softmax unchanged) turns rounding into a fraction of a step."""
    a, b = flat(model), flat(expected)
    off = (a - b).abs()
    return bool((off > lr / 100).sum() <= len(a) // 2000 and (off <= 2 * steps * lr).all())


def micro_data(n_per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = to_uint8(torch.rand(K * n_per_class, 1, 4, 4, generator=g) * 2 - 1)
    return SimpleNamespace(
        train_x=x, train_y=np.array(list(range(K)) * n_per_class), num_classes=K, image_shape=(1, 4, 4)
    )


def micro_ctx(params, original=None, data=None, forget_class=1, handed_out=None, seed=3):
    """A method's context on the micro UNet; load_original hands out copies of `original` in train mode, as the
    stage does, and records them in `handed_out`."""
    original = original if original is not None else micro_unet()

    def load_original(ema=False):
        model = copy.deepcopy(original).train()
        if handed_out is not None:
            handed_out.append(model)
        return model

    return RunContext(
        config={"diffusion": {"loss_reduction": "sum"}, "base": {}},
        params=params,
        data=data if data is not None else micro_data(),
        schedule=Schedule(T, 1e-4, 0.02),
        device=torch.device("cpu"),
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        meter=CostMeter("cpu"),
        load_original=load_original,
        forget_class=forget_class,
    )


class Recorder(torch.nn.Module):
    """The wrapped UNet, recording the timesteps and labels of every forward pass."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config, self.calls = net, net.config, []

    def forward(self, x, t, labels):
        self.calls.append((t.clone(), labels.clone()))
        return self.net(x, t, labels)


# ---------------------------------------------------------------- EraseDiff
def test_relabelled_classes_are_never_the_forgotten_one_nor_null():
    g = torch.Generator().manual_seed(0)
    labels = torch.full((3000,), 2)
    other = erasediff.other_labels(labels, 5, g)
    assert not (other == 2).any() and other.min() >= 0 and other.max() <= 4
    counts = torch.bincount(other, minlength=5)
    assert counts[2] == 0 and (counts[[0, 1, 3, 4]] > 600).all()  # each of the 4 others about 750 times
    mixed = torch.randint(0, 5, (3000,), generator=g)
    assert not (erasediff.other_labels(mixed, 5, g) == mixed).any()
    two = erasediff.other_labels(torch.zeros(50, dtype=torch.long), 2, g)
    assert torch.equal(two, torch.ones(50, dtype=torch.long))  # 2 classes: the other one, always


def hand_forget_loss(model, x0, labels, g):
    """f by hand: timesteps, noise, c~ drawn in that order; target eps(x_t, c~, t) detached; pixel sums."""
    t = torch.randint(0, T, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    r = torch.randint(0, K - 1, (len(x0),), generator=g)
    relabelled = r + (r >= labels).long()
    assert not (relabelled == labels).any()
    x_t = noised(x0, t, noise)
    return pixel_sum(model(x_t, t, labels) - model(x_t, t, relabelled).detach()), t


def test_erasediff_forget_loss_by_hand_and_its_target_carries_no_gradient():
    model = micro_unet()
    x0, labels = torch.rand(6, 1, 4, 4) * 2 - 1, torch.full((6,), 1)
    ctx = micro_ctx({})
    loss = erasediff.forget_loss(model, ctx, x0, labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected, _ = hand_forget_loss(model, x0, labels, torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    hand_grads = torch.autograd.grad(expected, list(model.parameters()))
    assert same_grads(grads, hand_grads)
    # Through the target too, the gradient would differ: the check can fail.
    g2 = torch.Generator().manual_seed(3)
    t = torch.randint(0, T, (6,), generator=g2)
    x_t = noised(x0, t, torch.randn(x0.shape, generator=g2))
    r = torch.randint(0, K - 1, (6,), generator=g2)
    both = pixel_sum(model(x_t, t, labels) - model(x_t, t, r + (r >= labels).long()))
    assert both.item() == pytest.approx(expected.item(), rel=1e-6)
    both_grads = torch.autograd.grad(both, list(model.parameters()))
    assert not same_grads(grads, both_grads)


def test_erasediff_inner_passes_restore_theta_bitwise_and_return_the_mean_inner_loss():
    model = micro_unet()
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(5, 1, 4, 4, generator=g) * 2 - 1, torch.full((5,), 1)) for _ in range(2)]
    ctx = micro_ctx({})
    f_star = erasediff.inner_passes(model, ctx, iter(batches), 2, 1e-2)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # bit for bit
    assert all(p.grad is None for p in model.parameters())  # no inner gradient left for the outer step

    # By hand: K Adam steps of its own on a copy, each loss taken before its step; f* their mean.
    copy_ = copy.deepcopy(model)
    inner = torch.optim.Adam(copy_.parameters(), lr=1e-2)
    hand = torch.Generator().manual_seed(3)
    losses = []
    for x0, labels in batches:
        loss, _ = hand_forget_loss(copy_, x0, labels, hand)
        losses.append(loss.item())
        inner.zero_grad()
        loss.backward()
        inner.step()
    assert f_star.item() == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    assert not torch.equal(flat(copy_), flat(model))  # the inner steps moved the weights: restoring mattered
    assert not f_star.requires_grad


def test_erasediff_outer_loss_is_retain_plus_lambda_f_minus_f_star_with_the_forget_batchs_own_timesteps():
    net = micro_unet()
    model = Recorder(net)
    g = torch.Generator().manual_seed(2)
    x_r, y_r = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.tensor([0, 2, 0, 2])
    x_f, y_f = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.full((4,), 1)
    f_star = torch.tensor(3.5)
    loss = erasediff.outer_loss(model, micro_ctx({}), (x_r, y_r), (x_f, y_f), f_star, 0.1)

    hand = torch.Generator().manual_seed(3)
    t_r = torch.randint(0, T, (4,), generator=hand)
    noise_r = torch.randn(x_r.shape, generator=hand)
    retain = pixel_sum(net(noised(x_r, t_r, noise_r), t_r, y_r) - noise_r)
    f, t_f = hand_forget_loss(net, x_f, y_f, hand)
    assert loss.item() == pytest.approx((retain + 0.1 * (f - 3.5)).item(), rel=1e-6)
    # the passes: retain (t_r), then the forget target (c~) and prediction (c_f), both at the forget batch's own t
    (t0, l0), (t1, l1), (t2, l2) = model.calls
    assert torch.equal(t0, t_r) and torch.equal(l0, y_r)
    assert torch.equal(t1, t_f) and torch.equal(t2, t_f) and torch.equal(l2, y_f) and not (l1 == 1).any()
    assert not torch.equal(t_f, t_r)


def erasediff_params(**changes):
    return {
        **erasediff.DEFAULTS,
        "steps": 2,
        "batch_size": 4,
        "forget_batch_size": 3,
        "lr": 1e-2,
        "inner_lr": 1e-2,
        **changes,
    }


def test_erasediff_run_equals_a_hand_replay_with_the_inner_optimiser_kept_apart():
    """Two outer steps replayed: per step K inner losses by hand on a copy with an Adam of its own (f*), then
    L_r + lambda (f - f*) on theta, clipped, one step of the outer Adam, which saw nothing of the inner steps."""
    original = micro_unet()
    params = erasediff_params()
    model = erasediff.unlearn(micro_ctx(params, original))

    replay_ctx = micro_ctx(params, original)  # its streams give the same batches, in the same order
    forget = replay_ctx.batches([1], 3)
    retain = replay_ctx.batches([0, 2], 4)
    hand = replay_ctx.generator
    theta = copy.deepcopy(original).train()
    outer = torch.optim.Adam(theta.parameters(), lr=1e-2)
    for _ in range(2):
        trial = copy.deepcopy(theta)
        inner = torch.optim.Adam(trial.parameters(), lr=1e-2)
        losses = []
        for _ in range(2):
            loss, _ = hand_forget_loss(trial, *next(forget), hand)
            losses.append(loss.detach())
            inner.zero_grad()
            loss.backward()
            inner.step()
        f_star = sum(losses) / 2
        x_r, y_r = next(retain)
        t_r = torch.randint(0, T, (4,), generator=hand)
        noise_r = torch.randn(x_r.shape, generator=hand)
        retain_loss = pixel_sum(theta(noised(x_r, t_r, noise_r), t_r, y_r) - noise_r)
        f, _ = hand_forget_loss(theta, *next(forget), hand)
        outer.zero_grad()
        (retain_loss + 0.1 * (f - f_star)).backward()
        torch.nn.utils.clip_grad_norm_(theta.parameters(), 1.0)
        outer.step()
    assert same_weights(model, theta, 1e-2)
    assert (flat(model) - flat(original)).abs().max() > 1e-2  # moved by steps, not by rounding


def test_erasediff_inner_passes_run_inside_the_timed_loop():
    """Every forward pass, the inner ones included, happens inside ctx.run_steps (the RTE): per outer step K inner
    passes of 2 forwards (target, prediction), then L_r's 1 and f's 2."""
    ctx = micro_ctx(erasediff_params(steps=2, inner_steps=3))
    timed, run_steps, inside = [False], ctx.run_steps, []

    def timed_run_steps(*args, **kwargs):
        timed[0] = True
        run_steps(*args, **kwargs)
        timed[0] = False

    def load_original(ema=False):
        model = micro_unet().train()
        forward = model.forward
        model.forward = lambda *a: inside.append(timed[0]) or forward(*a)
        return model

    ctx.run_steps, ctx.load_original = timed_run_steps, load_original
    erasediff.unlearn(ctx)
    assert len(inside) == 2 * (3 * 2 + 3) and all(inside)


# ---------------------------------------------------------------- ESD
def test_esd_target_is_negative_guidance_from_the_frozen_model():
    frozen = micro_unet(1).eval()
    x_t, t, labels = torch.randn(5, 1, 4, 4), torch.randint(0, T, (5,)), torch.full((5,), 2)
    target = esd.esd_target(frozen, x_t, t, labels, 7.5)
    with torch.no_grad():
        cond = frozen(x_t, t, labels)
        uncond = frozen(x_t, t, torch.full((5,), NULL))
    assert torch.allclose(target, uncond - 7.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert not target.requires_grad
    assert torch.allclose(esd.esd_target(frozen, x_t, t, labels, 0.0), uncond, atol=1e-6)  # eta 0: the null eps
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the two labels differ, so eta is seen


def test_esd_loss_is_the_element_mean_and_its_target_carries_no_gradient():
    """The frozen copy and the model equal (the first step): were the target differentiated, the gradient would
    differ from that of the detached target."""
    model = micro_unet(1)
    x_t, t, labels = torch.randn(5, 1, 4, 4), torch.randint(0, T, (5,)), torch.full((5,), 2)
    loss = esd.esd_loss(model, model, x_t, t, labels, 7.5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    pred = model(x_t, t, labels)
    null = model(x_t, t, torch.full((5,), NULL))
    target = null - 7.5 * (pred - null)
    expected = (pred - target.detach()).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    hand = torch.autograd.grad(expected, list(model.parameters()), retain_graph=True)
    assert same_grads(grads, hand)
    through = torch.autograd.grad((pred - target).pow(2).mean(), list(model.parameters()))
    assert not same_grads(grads, through)
    frozen = micro_unet(1)
    esd.esd_loss(model, frozen, x_t, t, labels, 7.5).backward()
    assert all(p.grad is None for p in frozen.parameters())


def esd_params(**changes):
    return {**esd.DEFAULTS, "steps": 2, "batch_size": 4, "lr": 1e-2, **changes}


def test_esd_run_equals_a_hand_replay_against_the_unchanged_original():
    """Two steps replayed by hand with the original weights as eps*: the frozen copy the run handed out is still the
    original bit for bit, in eval mode, and the trained model moved."""
    original = micro_unet()
    handed_out = []
    model = esd.unlearn(micro_ctx(esd_params(), original, handed_out=handed_out))
    trained, frozen = handed_out
    assert model is trained and torch.equal(flat(frozen), flat(original)) and not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())

    replay_ctx = micro_ctx(esd_params(), original)
    forget, hand = replay_ctx.batches([1], 4), replay_ctx.generator
    theta, star = copy.deepcopy(original).train(), copy.deepcopy(original).eval()
    optimizer = torch.optim.Adam(theta.parameters(), lr=1e-2)
    for _ in range(2):
        x0, y = next(forget)
        t = torch.randint(0, T, (4,), generator=hand)
        x_t = noised(x0, t, torch.randn(x0.shape, generator=hand))
        with torch.no_grad():  # one pass of both labels, as the method's (the rounding of Adam's tiny entries)
            both = star(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full((4,), NULL)]))
            cond, uncond = both.chunk(2)
        optimizer.zero_grad()
        (theta(x_t, t, y) - (uncond - 7.5 * (cond - uncond))).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(theta.parameters(), 1.0)
        optimizer.step()
    assert same_weights(model, theta, 1e-2)
    assert (flat(model) - flat(original)).abs().max() > 1e-2  # moved by steps, not by rounding


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_esd_generated_x_t_is_the_models_guided_ddim_sample_stopped_at_its_t(eta):
    """Replayed by hand: the stop drawn among the sampler's timesteps, x_T, then per step eps = 3 eps_c - 2 eps_null
    and the DDIM update (Song et al., eq. 12) written out; the model is left in train mode."""
    model = micro_unet(2).train()
    labels = torch.full((3,), 1)
    steps, w = 5, 2.0
    ts = [16, 12, 8, 4, 0]  # sampling_timesteps(20, 5)
    stops = set()
    for seed in range(6):
        x_t, t = esd.generated_x_t(
            model,
            Schedule(T, 1e-4, 0.02),
            labels,
            (1, 4, 4),
            steps=steps,
            eta=eta,
            guidance_w=w,
            generator=torch.Generator().manual_seed(seed),
            amp=nullcontext,
        )
        assert model.training
        g = torch.Generator().manual_seed(seed)
        stop = int(torch.randint(0, len(ts), (1,), generator=g))
        x = torch.randn((3, 1, 4, 4), generator=g)
        with torch.no_grad():
            for i in range(stop):
                tt = torch.full((3,), ts[i])
                eps = (1 + w) * model(x, tt, labels) - w * model(x, tt, torch.full((3,), NULL))
                a_t, a_prev = ALPHA_BAR[ts[i]].double().item(), ALPHA_BAR[ts[i + 1]].double().item()
                x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
                sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
                x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
                if sigma > 0:
                    x = x + sigma * torch.randn(x.shape, generator=g)
        assert torch.equal(t, torch.full((3,), ts[stop]))
        assert torch.allclose(x_t, x, rtol=1e-4, atol=1e-5)
        stops.add(stop)
    assert len(stops) > 2  # several stops seen, 0 (pure noise) aside


# ---------------------------------------------------------------- short runs on the tiny test config
@pytest.mark.parametrize(
    "name, overrides", [("erasediff", {}), ("esd", {}), ("esd", {"x_t_source": "generated", "gen_steps": 4})]
)
def test_a_short_run_on_the_tiny_config_changes_the_weights(name, overrides, tmp_path, tiny_config):
    from tiny_original import adopted_original

    from unlearnbench import stages
    from unlearnbench.checkpoints import load_unet

    config = copy.deepcopy(tiny_config)
    config["method_params"] = {**config["method_params"], name: {"steps": 3}}
    adopted_original(tmp_path, config)
    record = stages.run_unlearning(
        config, name, 1, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out", overrides=overrides or None
    )
    assert record["rte_min"] > 0 and record["params"]["steps"] == 3
    before, after = (flat(load_unet(path)) for path in (tmp_path / "original" / "unet", tmp_path / "out" / "unet"))
    assert torch.isfinite(after).all() and not torch.equal(before, after)
