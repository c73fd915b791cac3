"""The methods' building blocks (and the FT control's) against independent computations on tiny models."""

import math

import pytest
import torch

from unlearnbench.diffusion import Schedule, epsilon_loss
from unlearnbench.errors import UserError
from unlearnbench.method_api import load_method
from unlearnbench.networks import build_unet

safemax = load_method("safemax")
sa = load_method("sa")
salun = load_method("salun")

MICRO = {
    "block_out_channels": (8, 8),
    "norm_num_groups": 4,
    "sample_size": 4,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}


def micro_unet(seed=0):
    torch.manual_seed(seed)
    return build_unet("tiny", 3, MICRO)


def test_psi_is_the_papers_scheduler():
    t = torch.tensor([0, 499, 999])
    assert torch.allclose(
        safemax.psi(t, 1000, 1.0), torch.tensor([math.exp(-1 / 1000), math.exp(-0.5), math.exp(-1.0)])
    )
    assert torch.equal(safemax.psi(t, 1000, 0.0), torch.ones(3))  # lambda = 0 disables it
    assert safemax.psi(torch.tensor([999]), 1000, 100.0).item() == pytest.approx(math.exp(-100))


def test_safemax_target_is_fresh_noise_or_x_t():
    x_t = torch.randn(4096, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    target = safemax.forget_target(x_t, "fresh_noise", g)
    assert target.shape == x_t.shape and not torch.equal(target, x_t)
    assert abs(target.mean().item()) < 0.05 and abs(target.std().item() - 1) < 0.05
    assert abs(torch.corrcoef(torch.stack([target.flatten(), x_t.flatten()]))[0, 1].item()) < 0.05  # independent
    assert torch.equal(safemax.forget_target(x_t, "x_t", g), x_t)
    with pytest.raises(ValueError, match="fresh_noise"):
        safemax.forget_target(x_t, "bogus", g)


@pytest.mark.parametrize(
    "target, lam, reduction", [("fresh_noise", 1.0, "sum"), ("x_t", 3.0, "mean"), ("fresh_noise", 0.0, "sum")]
)
def test_safemax_loss_is_psi_weighted_error_to_its_target(target, lam, reduction):
    """The loss replayed by hand: the same draws in the same order (timesteps, the noise that builds x_t, then the
    fresh target), x_t from alpha_bar written out, psi(t) = exp(-lambda (t + 1) / T), mean over the batch."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    T = 20
    model = micro_unet().eval()
    schedule = Schedule(T, 1e-4, 0.02)
    x0, labels = torch.rand(6, 1, 4, 4) * 2 - 1, torch.full((6,), 1)
    ctx = SimpleNamespace(
        params={"target": target, "lambda": lam},
        schedule=schedule,
        reduction=reduction,
        generator=torch.Generator().manual_seed(5),
        autocast=nullcontext,
    )
    with torch.no_grad():
        loss = safemax.safemax_loss(model, ctx, x0, labels).item()

        g = torch.Generator().manual_seed(5)
        t = torch.randint(0, T, (6,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        alpha_bar = (
            torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()[t].view(-1, 1, 1, 1)
        )
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        aim = torch.randn(x0.shape, generator=g) if target == "fresh_noise" else x_t
        error = (aim - model(x_t, t, labels)).pow(2).flatten(1)
        error = error.sum(1) if reduction == "sum" else error.mean(1)
        expected = (torch.exp(-lam * (t.float() + 1) / T) * error).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_batched_fisher_equals_slow_per_timestep_gradients():
    model = micro_unet()
    model.eval()
    schedule = Schedule(20, 1e-4, 0.02)
    images = torch.randn(3, 1, 4, 4)
    labels = torch.tensor([0, 1, 2])
    timesteps = torch.arange(20)
    fisher = sa.diagonal_fisher(
        model,
        schedule,
        images,
        labels,
        timesteps=timesteps,
        reduction="sum",
        generator=torch.Generator().manual_seed(5),
        chunk=7,
    )
    # The slow way: the same noise draws, one timestep per backward pass, gradients summed per image, squared.
    g = torch.Generator().manual_seed(5)
    params = dict(model.named_parameters())
    slow = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(3):
        noise = torch.randn((20, 1, 4, 4), generator=g)
        grad_sum = {n: torch.zeros_like(p) for n, p in params.items()}
        for j, t in enumerate(timesteps.tolist()):
            model.zero_grad()
            epsilon_loss(
                model,
                schedule,
                images[i : i + 1],
                labels[i : i + 1],
                reduction="sum",
                timesteps=torch.tensor([t]),
                noise=noise[j : j + 1],
            ).backward()
            for n, p in params.items():
                grad_sum[n] += p.grad
        for n in params:
            slow[n] += grad_sum[n] ** 2 / 3
    for n in params:
        assert torch.allclose(fisher[n], slow[n], rtol=1e-4, atol=1e-9), n
    assert sum(f.sum() for f in fisher.values()) > 0


def test_fisher_cond_dropout_gives_terms_the_null_label():
    """With probability 1 every (image, t) term is the unconditional loss: the Fisher of the null label."""
    from unlearnbench.networks import null_class

    model = micro_unet().eval()
    schedule = Schedule(20, 1e-4, 0.02)
    image, label = torch.randn(1, 1, 4, 4), torch.tensor([1])

    def fisher(labels, cond_dropout):
        return sa.diagonal_fisher(
            model,
            schedule,
            image,
            labels,
            timesteps=torch.arange(20),
            reduction="sum",
            generator=torch.Generator().manual_seed(5),
            chunk=7,
            cond_dropout=cond_dropout,
        )

    dropped, unconditional = fisher(label, 1.0), fisher(torch.tensor([null_class(model)]), 0.0)
    assert all(torch.allclose(dropped[n], unconditional[n], rtol=1e-5, atol=0) for n in dropped)
    conditional = fisher(label, 0.0)
    assert not all(torch.allclose(conditional[n], unconditional[n], rtol=1e-3) for n in conditional)


def test_fisher_timestep_subset_covers_the_range():
    assert torch.equal(sa.fisher_timesteps(1000, None), torch.arange(1000))
    sub = sa.fisher_timesteps(1000, 100)
    assert len(sub) == 100 and sub[0] == 0 and sub[-1] == 999


def test_ewc_penalty_is_zero_at_star_and_quadratic():
    model = micro_unet()
    star = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    assert sa.ewc_penalty(model, fisher, star).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    expected = sum((f * 0.01).sum() for f in fisher.values())
    assert sa.ewc_penalty(model, fisher, star).item() == pytest.approx(expected.item(), rel=1e-4)


def test_salun_mask_keeps_exactly_half_globally():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[2.0, 6.0], [0.5, 4.0]])}
    mask = salun.top_fraction_mask(scores, 0.5)
    assert mask["a"].tolist() == [True, False, False]
    assert mask["b"].tolist() == [[False, True], [False, True]]
    model = micro_unet()
    scores = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    mask = salun.top_fraction_mask(scores, 0.5)
    total = sum(p.numel() for p in model.parameters())
    assert sum(m.sum().item() for m in mask.values()) == total // 2
    # global, not per tensor: the kept entries are exactly those above the global median
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = torch.cat([s[m] for s, m in zip(scores.values(), mask.values())])
    assert kept.min() >= flat.median()


def test_salun_masked_weights_stay_unchanged_after_steps():
    from unlearnbench.training import optimizer_step

    model = micro_unet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    mask = salun.top_fraction_mask(scores, 0.5)
    named = dict(model.named_parameters())
    grad_mask = {named[n]: m.float() for n, m in mask.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = Schedule(20, 1e-4, 0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = epsilon_loss(model, schedule, torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]), generator=g)
        optimizer_step(optimizer, loss, model.parameters(), 1.0, grad_mask)
    changed_masked = sum(((p != before[n]) & ~mask[n]).sum().item() for n, p in model.named_parameters())
    changed_kept = sum(((p != before[n]) & mask[n]).sum().item() for n, p in model.named_parameters())
    assert changed_masked == 0
    assert changed_kept > 0


@pytest.mark.parametrize("clip", [1.0, 1e-3, math.inf])
def test_saliency_scores_are_abs_sums_of_clipped_guided_gradients(clip):
    """Replayed by hand: per batch the same draws (timesteps, then noise), the guided eps (1 + w) eps_c - w eps_null
    from two plain passes, the gradient of the batch mean of per-image summed squared errors by autograd, scaled
    to norm <= clip; |sum over batches|."""
    w, T = 2.0, 20
    model = micro_unet()
    schedule = Schedule(T, 1e-4, 0.02)
    batches = [(torch.rand(4, 1, 4, 4) * 2 - 1, torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    scores = salun.saliency_scores(
        model,
        schedule,
        batches,
        guidance_w=w,
        reduction="sum",
        generator=torch.Generator().manual_seed(0),
        grad_clip=clip,
    )

    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()
    total = [torch.zeros_like(p) for p in params]
    for x0, y in batches:
        t = torch.randint(0, T, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        null = torch.full_like(y, 3)  # the micro UNet's 3 classes; index 3 is the null embedding
        eps = (1 + w) * model(x_t, t, y) - w * model(x_t, t, null)
        grads = torch.autograd.grad((eps - noise).pow(2).flatten(1).sum(1).mean(), params)  # batch mean of sums
        norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
        scale = min(1.0, clip / (norm.item() + 1e-6))
        total = [acc + scale * gr for acc, gr in zip(total, grads)]
    for name, expected in zip(names, total):
        assert torch.allclose(scores[name], expected.abs(), rtol=1e-4, atol=1e-5), name
    if clip < 1:  # the bound is the clip's doing: unclipped, these gradients are far larger
        assert math.sqrt(sum((s**2).sum().item() for s in scores.values())) <= 3 * clip * (1 + 1e-4)


def test_salun_forget_term_relabels_and_drops_each_passs_label_apart():
    from unlearnbench.diffusion import drop_labels
    from unlearnbench.networks import null_class, predict_eps

    model = micro_unet().eval()  # no dropout: the passes differ by their labels only
    x_t, t = torch.randn(64, 1, 4, 4), torch.randint(0, 20, (64,))
    y = torch.full((64,), 1)

    def loss(cond_dropout, seed=0):
        return salun.relabel_loss(model, x_t, t, y, 2, cond_dropout, torch.Generator().manual_seed(seed)).item()

    with torch.no_grad():

        def mse(target_labels, forget_labels):
            return (
                (predict_eps(model, x_t, t, forget_labels) - predict_eps(model, x_t, t, target_labels))
                .pow(2)
                .mean()
                .item()
            )

        assert loss(0.0) == pytest.approx(mse(torch.full_like(y, 2), y), rel=1e-6)
        assert loss(1.0) == 0.0  # both labels null: the target is the prediction
        g = torch.Generator().manual_seed(0)
        target_labels = drop_labels(torch.full_like(y, 2), 0.5, null_class(model), g)
        forget_labels = drop_labels(y, 0.5, null_class(model), g)
        assert not torch.equal(target_labels == null_class(model), forget_labels == null_class(model))  # drawn apart
        assert loss(0.5) == pytest.approx(mse(target_labels, forget_labels), rel=1e-6)


def _prior_ctx(tmp_path, originals, params, forget_class=None, priors=None, data=None):
    """A prior's context whose load_original hands out copies of `originals[ema]` in train mode, as the stage does."""
    import copy

    from unlearnbench.context import RunContext
    from unlearnbench.cost import CostMeter

    return RunContext(
        config={"diffusion": {"loss_reduction": "sum"}, "base": {}},
        params=params,
        data=data,
        schedule=Schedule(20, 1e-4, 0.02),
        device=torch.device("cpu"),
        seed=3,
        generator=torch.Generator().manual_seed(3),
        meter=CostMeter("cpu"),
        load_original=lambda ema=False: copy.deepcopy(originals[ema]).train(),
        forget_class=forget_class,
        priors=priors or {},
        out_dir=tmp_path,
    )


def _with_dropout(seed):
    torch.manual_seed(seed)
    return build_unet("tiny", 3, {**MICRO, "dropout": 0.5})


def test_sa_fisher_is_taken_at_theta_star_without_dropout(tmp_path):
    """The EWC penalty anchors at theta* = the non-EMA starting weights; like the reference's save_fim (states[0],
    model.eval()), the Fisher is taken there, without dropout, and not at the EMA weights that drew the images."""
    import numpy as np

    from unlearnbench.checkpoints import load_tensors
    from unlearnbench.data import to_float, to_uint8

    originals = {False: _with_dropout(0), True: _with_dropout(1)}
    (tmp_path / "generated").mkdir()
    images = to_uint8(torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    np.savez_compressed(tmp_path / "generated" / "generated.npz", images=images, labels=np.array([0, 1, 2]))
    params = {"fisher_images": None, "fisher_timesteps": 5, "fisher_batch": 2, "fisher_cond_dropout": 0.1}
    ctx = _prior_ctx(tmp_path, originals, params, priors={"generated": tmp_path / "generated"})
    sa.compute_fisher(ctx)
    saved = load_tensors(tmp_path / "fisher.safetensors", torch.device("cpu"))

    def fisher_of(model, cond_dropout=0.1):
        return sa.diagonal_fisher(
            model,
            ctx.schedule,
            to_float(images),
            torch.tensor([0, 1, 2]),
            timesteps=sa.fisher_timesteps(20, 5),
            reduction="sum",
            generator=torch.Generator().manual_seed(3),
            chunk=2,
            cond_dropout=cond_dropout,
        )

    at_star = fisher_of(originals[False].eval())
    assert all(torch.allclose(saved[n], at_star[n], rtol=1e-5, atol=0) for n in at_star)
    at_ema = fisher_of(originals[True].eval())
    assert not all(torch.allclose(saved[n], at_ema[n], rtol=1e-3) for n in at_ema)
    # The prior passes its fisher_cond_dropout on: some of these 15 terms had the null label.
    no_dropout = fisher_of(originals[False].eval(), cond_dropout=0.0)
    assert not all(torch.allclose(saved[n], no_dropout[n], rtol=1e-3) for n in no_dropout)


def test_salun_mask_is_computed_without_dropout(tmp_path):
    """The reference's generate_mask runs model.eval(): the saliency of the deterministic network."""
    from types import SimpleNamespace

    import numpy as np

    from unlearnbench.checkpoints import load_tensors
    from unlearnbench.data import to_uint8

    x = to_uint8(torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    data = SimpleNamespace(train_x=x, train_y=np.array([1, 1, 1, 1, 0, 1]), num_classes=2)
    model = _with_dropout(0)
    params = {"mask_batch_size": 2, "mask_guidance_w": 2.0, "mask_ratio": 0.5, "mask_grad_clip": 1.0}
    ctx = _prior_ctx(tmp_path, {False: model}, params, forget_class=1, data=data)
    salun.compute_mask(ctx)
    saved = load_tensors(tmp_path / "mask.safetensors", torch.device("cpu"))

    x1, _ = ctx.images([1])
    batches = [(x1[i : i + 2], torch.ones(len(x1[i : i + 2]), dtype=torch.long)) for i in range(0, len(x1), 2)]
    scores = salun.saliency_scores(
        model.eval(), ctx.schedule, batches, guidance_w=2.0, reduction="sum", generator=torch.Generator().manual_seed(3)
    )
    expected = salun.top_fraction_mask(scores, 0.5)
    assert all(torch.equal(saved[n].bool(), expected[n]) for n in expected)


@pytest.mark.parametrize("hflip", [True, False])
def test_sa_replay_is_flipped_as_the_training_data(tmp_path, hflip):
    """The reference's replay loader flips the generated images when the data flip (random_flip: CIFAR-10)."""
    from types import SimpleNamespace

    import numpy as np

    from unlearnbench.checkpoints import save_tensors
    from unlearnbench.data import to_uint8

    model = micro_unet()
    for name in ("generated", "fisher"):
        (tmp_path / name).mkdir()
    images = to_uint8(torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    np.savez_compressed(tmp_path / "generated" / "generated.npz", images=images, labels=np.array([0, 1, 2, 2]))
    save_tensors(
        tmp_path / "fisher" / "fisher.safetensors", {n: torch.zeros_like(q) for n, q in model.named_parameters()}
    )
    params = {**sa.DEFAULTS, "steps": 1, "batch_size": 2, "replay_batch_size": 2}
    ctx = _prior_ctx(
        tmp_path,
        {False: model, True: model},
        params,
        forget_class=0,
        priors={"generated": tmp_path / "generated", "fisher": tmp_path / "fisher"},
        data=SimpleNamespace(image_shape=(1, 4, 4)),
    )
    ctx.config["base"]["hflip"] = hflip
    streams = []
    real_stream = ctx.stream
    ctx.stream = lambda x, y, batch_size, hflip=False: (
        streams.append((len(x), hflip)) or real_stream(x, y, batch_size, hflip)
    )
    sa.unlearn(ctx)
    assert streams == [(3, hflip)]  # the three replay images of the remaining classes


class _Crash(Exception):
    pass


def _toy_run(state_path, crash_at=None, state_key=None, nan_at=None, lr=0.1):
    from unlearnbench.context import RunContext
    from unlearnbench.cost import CostMeter

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ctx = RunContext(
        config={"base": {}},
        params={},
        data=None,
        schedule=None,
        device=torch.device("cpu"),
        seed=1,
        generator=torch.Generator().manual_seed(1),
        meter=CostMeter("cpu"),
        load_original=None,
        state_path=state_path,
        state_key=state_key,
        diverged_hint="Lower lr.",
    )
    stream = ctx.stream(torch.randn(10, 4), torch.zeros(10), 3)

    def step(i):
        if i == crash_at:
            raise _Crash
        if i == nan_at:
            with torch.no_grad():
                model.bias.fill_(float("inf"))  # as an overflow would; the next steps spread NaN
        x, _ = next(stream)
        x = torch.nn.functional.dropout(x, 0.5)  # torch's global RNG, as nn.Dropout: part of the resumable state
        loss = (model(x) + torch.randn(3, 1, generator=ctx.generator)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return ctx, model, optimizer, step


def test_resumed_run_ends_as_an_uninterrupted_one(tmp_path, capsys):
    state = tmp_path / "state.pt"
    ctx, model, _, step = _toy_run(state)
    ctx.run_steps(10, step, desc="run")
    reference = model.weight.detach().clone()

    ctx, model, optimizer, step = _toy_run(state, crash_at=7)
    with pytest.raises(_Crash):
        ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    assert state.exists()
    ctx, model, optimizer, step = _toy_run(state)  # a new job: torch's global RNG starts from its seed again
    capsys.readouterr()
    ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    assert "resuming run from step 6" in capsys.readouterr().out
    assert torch.equal(model.weight, reference)
    assert not state.exists() and ctx.meter.rte_s > 0


def test_a_state_saved_by_another_config_is_not_resumed(tmp_path, capsys):
    """A job rerun after a change of params must start over, not finish the old run's weights and optimizer."""
    state = tmp_path / "state.pt"
    ctx, model, _, step = _toy_run(state)
    ctx.run_steps(10, step, desc="reference")
    reference = model.weight.detach().clone()

    ctx, model, optimizer, step = _toy_run(state, crash_at=7, state_key="lr=0.5", lr=0.5)
    with pytest.raises(_Crash):
        ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    ctx, model, optimizer, step = _toy_run(state, state_key="lr=0.1")
    ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    out = capsys.readouterr().out
    assert "ignoring" in out and "another config, parameters or code; starting over" in out
    assert "resuming" not in out
    assert torch.equal(model.weight, reference)  # what an uninterrupted run gives: nothing of the old run kept
    # More steps asked of the same run is another run too (a schedule may depend on the total).
    ctx, model, optimizer, step = _toy_run(state, crash_at=7, state_key="k")
    with pytest.raises(_Crash):
        ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    ctx, model, optimizer, step = _toy_run(state, state_key="k")
    ctx.run_steps(12, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    assert "resuming" not in capsys.readouterr().out


def test_divergence_stops_the_run_before_its_state_is_saved(tmp_path):
    from unlearnbench.checkpoints import load_state
    from unlearnbench.errors import DivergedError

    state = tmp_path / "state.pt"
    ctx, model, optimizer, step = _toy_run(state, nan_at=4, state_key="k")
    with pytest.raises(
        DivergedError,
        match=r"run diverged by step 6 \(model\): [1-5] of 5 values are NaN or inf\. "
        r"Lower lr\.",
    ):
        ctx.run_steps(10, step, desc="run", checkpoint_every=3, modules={"model": model, "optimizer": optimizer})
    saved = load_state(state, "k|run|steps=10")
    assert saved["step"] == 3 and all(torch.isfinite(t).all() for t in saved["modules"]["model"].values())


def test_require_finite_counts_against_numpy(tmp_path):
    import numpy as np

    from unlearnbench.checkpoints import require_finite
    from unlearnbench.errors import DivergedError

    a = np.zeros((3, 4), np.float32)
    a[0, 1], a[2, 3] = np.nan, -np.inf
    b = np.ones(5, np.float32)
    b[4] = np.inf
    expected = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
    with pytest.raises(DivergedError, match=f"x: {expected} of 17 values are NaN or inf. do y"):
        require_finite([torch.from_numpy(a), torch.from_numpy(b), torch.arange(3)], "x", "do y")  # ints skipped
    require_finite(torch.nn.Linear(3, 2), "finite", "never raised")


def test_a_prior_sees_only_its_declared_params():
    from unlearnbench.context import DeclaredParams
    from unlearnbench.method_api import load_method

    fisher = next(p for p in load_method("sa").PRIORS if p.name == "fisher")
    view = DeclaredParams({"fisher_images": 8, "fisher_timesteps": 10, "fisher_batch": 4, "lambda": 10.0}, fisher, "sa")
    assert view["fisher_images"] == 8 and "lambda" not in view
    with pytest.raises(KeyError, match="reads param 'lambda'.*Prior\\(\\.\\.\\., params="):
        view["lambda"]
    with pytest.raises(KeyError, match="reads param 'lambda'"):  # .get with a default must not hide it either
        view.get("lambda", 1.0)


def test_prior_fingerprints_follow_their_declared_params(tiny_config):
    from copy import deepcopy

    from unlearnbench.workflow import fingerprint

    changed = deepcopy(tiny_config)
    changed["method_params"]["sa"]["lambda"] = 0.5
    assert fingerprint(changed, "method", "sa", "fisher") == fingerprint(tiny_config, "method", "sa", "fisher")
    assert fingerprint(changed, "method", "sa", "generated") == fingerprint(tiny_config, "method", "sa", "generated")
    assert fingerprint(changed, "method", "sa") != fingerprint(tiny_config, "method", "sa")  # unlearning reruns
    changed["method_params"]["sa"]["fisher_images"] = 6
    assert fingerprint(changed, "method", "sa", "fisher") != fingerprint(tiny_config, "method", "sa", "fisher")
    assert fingerprint(changed, "method", "sa", "generated") == fingerprint(tiny_config, "method", "sa", "generated")
    changed["sampler"] = {**changed["sampler"], "steps": 7}  # the replay set is drawn with the sampler
    assert fingerprint(changed, "method", "sa", "generated") != fingerprint(tiny_config, "method", "sa", "generated")


def test_only_stages_that_declare_the_sampler_rerun_when_it_changes(tiny_config):
    from copy import deepcopy

    from unlearnbench.workflow import fingerprint

    changed = deepcopy(tiny_config)
    changed["sampler"] = {**changed["sampler"], "steps": 7}
    changed["evaluation"] = {**changed["evaluation"], "n_forget": 3}

    def fp(config, *stage):
        return fingerprint(config, "method", *stage)

    # SA's replay set is drawn with the sampler (declared); nothing else of the methods reads it
    assert fp(changed, "sa", "generated") != fp(tiny_config, "sa", "generated")
    for stage in (("sa",), ("sa", "fisher"), ("salun",), ("salun", "mask"), ("safemax",)):
        assert fp(changed, *stage) == fp(tiny_config, *stage), stage
    assert fingerprint(changed, "evaluate") != fingerprint(tiny_config, "evaluate")


def test_undeclared_evaluation_sections_are_not_readable(tiny_config):
    from unlearnbench.context import DeclaredSections
    from unlearnbench.method_api import GUARDED_SECTIONS, Prior

    view = DeclaredSections(tiny_config, ("sampler",), "prior 'generated' of method 'sa'", "Prior(..., sections=...)")
    assert view["sampler"] == tiny_config["sampler"] and view["diffusion"] == tiny_config["diffusion"]
    assert view.get("performance") == tiny_config.get("performance")
    for hidden in set(GUARDED_SECTIONS) - {"sampler"}:
        with pytest.raises(KeyError, match=f"reads config section '{hidden}'.*Prior\\(\\.\\.\\., sections="):
            view[hidden]
        with pytest.raises(KeyError, match="does not declare"):
            view.get(hidden)
    unlearn_view = DeclaredSections(tiny_config, (), "unlearn() of method 'x'", "SECTIONS = (...) in its method file")
    with pytest.raises(KeyError, match="SECTIONS = "):
        unlearn_view["sampler"]
    with pytest.raises(KeyError):
        unlearn_view["no_such_key"]
    with pytest.raises(UserError, match="declarable: sampler"):
        Prior("p", lambda ctx: None, sections=("optimizer",))


def test_ctx_sample_is_the_configured_sampler_and_needs_the_sampler_declared(tiny_config):
    """ctx.sample (SA's replay set) draws what the evaluation sampler draws with the run's schedule; a stage that
    did not declare `sampler` cannot call it, since its cached result would not rerun when the sampler changes."""
    from unlearnbench.context import DeclaredSections, RunContext
    from unlearnbench.diffusion import Schedule, sample
    from unlearnbench.networks import build_unet

    torch.manual_seed(0)
    model = build_unet("tiny", 10)
    config = {**tiny_config, "sampler": {**tiny_config["sampler"], "steps": 3, "guidance_w": 1.5, "batch_size": 4}}
    schedule = Schedule(10, 1e-4, 0.02)
    labels = torch.tensor([1, 2, 2, 7, 0])

    def ctx(sections):
        view = DeclaredSections(config, sections, "prior 'p' of method 'm'", "Prior(..., sections=...)")
        return RunContext(
            config=view,
            params={},
            data=None,
            schedule=schedule,
            device=torch.device("cpu"),
            seed=0,
            generator=torch.Generator(),
            meter=None,
            load_original=None,
        )

    s = config["sampler"]
    by_hand = sample(
        model,
        schedule,
        labels,
        steps=3,
        eta=s["eta"],
        guidance_w=1.5,
        clip_x0=s["clip_x0"],
        batch_size=4,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(ctx(("sampler",)).sample(model, labels, torch.Generator().manual_seed(2)), by_hand)
    with pytest.raises(KeyError, match="reads config section 'sampler'"):
        ctx(()).sample(model, labels, torch.Generator().manual_seed(2))


def test_run_scope_keys_are_hidden_from_every_stage(tiny_config):
    """Another method's params, the run's classes and seeds are not in any stage's fingerprint: a prior reading
    `method_params.sa.lambda` behind its Prior(params=...) would stay cached when lambda changes."""
    from unlearnbench.context import DeclaredSections
    from unlearnbench.method_api import RUN_SCOPE_KEYS

    view = DeclaredSections(tiny_config, ("sampler",), "prior 'fisher' of method 'sa'", "Prior(..., sections=...)")
    assert set(RUN_SCOPE_KEYS) == {"method_params", "methods", "forget_classes", "seeds", "ablation", "guidance_sweep"}
    for key in RUN_SCOPE_KEYS:
        assert key in tiny_config and key not in view
        with pytest.raises(KeyError, match=f"reads config key '{key}', which describes the whole run"):
            view.get(key)
    with pytest.raises(KeyError, match="use ctx.params"):
        view["method_params"]
    with pytest.raises(KeyError, match="use ctx.forget_class"):
        view["forget_classes"]


def test_a_resumable_loop_must_name_what_it_restores(tmp_path):
    """checkpoint_every without modules= would resume the step count onto freshly loaded weights."""
    ctx, _, _, step = _toy_run(tmp_path / "state.pt")
    with pytest.raises(UserError, match="checkpoint_every needs modules="):
        ctx.run_steps(10, step, desc="toy", checkpoint_every=3)
    assert not (tmp_path / "state.pt").exists()


@pytest.mark.parametrize("steps", [0, -3, 2.0, True])
def test_run_steps_refuses_a_loop_that_would_not_run(tmp_path, steps):
    """Zero steps would hand back the original model as the unlearned one."""
    ctx, _, _, step = _toy_run(tmp_path / "state.pt")
    with pytest.raises(UserError, match="whole number >= 1"):
        ctx.run_steps(steps, step, desc="toy")


def test_finetune_never_reads_the_forgotten_class_unlike_safemax(tmp_path):
    """FT, the control, trains on the remaining classes only: whatever the forgotten class's images are, it ends
    at the same weights. SAFEMax, run the same way, does not (so the comparison can fail)."""
    from types import SimpleNamespace

    import numpy as np

    from unlearnbench.data import to_uint8

    finetune = load_method("finetune")
    rng = torch.Generator().manual_seed(0)
    x = to_uint8(torch.rand(12, 1, 4, 4, generator=rng) * 2 - 1)
    y = np.array([0, 1, 2] * 4)
    other_x = x.copy()
    other_x[y == 1] = to_uint8(torch.rand(4, 1, 4, 4, generator=rng) * 2 - 1)
    original = micro_unet(0)

    def weights_after(method, images, params):
        ctx = _prior_ctx(
            tmp_path,
            {False: original},
            {"steps": 3, "lr": 1e-2, "grad_clip": 1.0, **params},
            forget_class=1,
            data=SimpleNamespace(train_x=images, train_y=y, num_classes=3),
        )
        return torch.cat([p.detach().flatten() for p in method.unlearn(ctx).parameters()])

    ft = {"batch_size": 4, "cond_dropout": 0.0}
    start = torch.cat([p.detach().flatten() for p in original.parameters()])
    assert not torch.equal(weights_after(finetune, x, ft), start)
    assert torch.equal(weights_after(finetune, x, ft), weights_after(finetune, other_x, ft))
    sm = {**safemax.DEFAULTS, "batch_size": 4, "retain_weight": 1.0, "retain_batch_size": 4}
    assert not torch.equal(weights_after(safemax, x, sm), weights_after(safemax, other_x, sm))


@pytest.mark.parametrize("start_weights", ["raw", "ema"])
def test_safemax_starts_from_and_evaluates_the_weights_its_params_name(tmp_path, start_weights):
    """PROTOCOL.md infers "start from the non-EMA weights, evaluate the raw weights": both are params. With lr 0
    the weights stay put, so the evaluated model is the start weights, or the EMA's closed form after n steps."""
    from types import SimpleNamespace

    import numpy as np

    from unlearnbench.data import to_uint8

    raw, ema = micro_unet(0), micro_unet(1)
    data = SimpleNamespace(
        train_x=to_uint8(torch.rand(8, 1, 4, 4) * 2 - 1), train_y=np.array([0, 1] * 4), num_classes=2
    )
    flat = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])  # noqa: E731

    def evaluated(**params):
        ctx = _prior_ctx(
            tmp_path,
            {False: raw, True: ema},
            {**safemax.DEFAULTS, "steps": 3, "batch_size": 4, "lr": 0.0, "start_weights": start_weights, **params},
            forget_class=1,
            data=data,
        )
        return flat(safemax.unlearn(ctx))

    start = flat(ema if start_weights == "ema" else raw)
    assert torch.equal(evaluated(), start)
    kept = 0.5**3  # the base EMA's share after 3 updates at decay 0.5
    assert torch.allclose(evaluated(ema_decay=0.5), kept * flat(ema) + (1 - kept) * start, atol=1e-6)


def _methods_found():
    from unlearnbench.method_api import available_methods

    return [name for name in available_methods() if name != "original"]


@pytest.mark.parametrize("name", _methods_found())  # every file in methods/, a new one included
def test_every_method_file_runs_its_priors_and_unlearns_a_tiny_model(name, tmp_path, tiny_config):
    """What any method file must do, run on each one found in methods/ (yours: `python -m pytest -n 0
    tests/test_methods.py -k 'every_method_file and <name>'`): its priors, then unlearn() for 2 steps on a tiny untrained model, which
    must return changed, finite weights and time its loop (run_unlearning refuses anything else)."""
    import copy
    import json

    from tiny_original import adopted_original

    from unlearnbench import stages
    from unlearnbench.method_api import load_method

    module = load_method(name)
    config = copy.deepcopy(tiny_config)
    if "steps" in module.DEFAULTS:
        own = {**config["method_params"].get(name, {}), "steps": 2}
        config["method_params"] = {**config["method_params"], name: own}
    adopted_original(tmp_path, config)
    priors, todo = {}, list(module.PRIORS)
    while todo:  # in the order their `requires` allow
        prior = next(p for p in todo if set(p.requires) <= set(priors))
        todo.remove(prior)
        priors[prior.name] = tmp_path / "priors" / prior.name
        stages.run_prior(
            config,
            name,
            prior.name,
            tmp_path / "data.npz",
            tmp_path / "original",
            priors[prior.name],
            forget_class=2 if prior.scope == "per_class" else None,
            required={r: priors[r] for r in prior.requires},
        )
    record = stages.run_unlearning(
        config, name, 2, 0, tmp_path / "data.npz", tmp_path / "original", tmp_path / "out", priors
    )
    assert record["rte_min"] > 0 and (tmp_path / "out" / "unet").is_dir()
    assert json.loads((tmp_path / "out" / "cost.json").read_text())["method"] == name


def test_each_job_is_given_the_folders_of_the_priors_it_reads():
    """The workflow's --priors/--requires arguments and the prior inputs come from the method's PRIORS."""
    from unlearnbench.workflow import prior_arguments, prior_folders

    sa = prior_folders("results/r", "sa", forget_class=3)
    assert sa == {"generated": "results/r/priors/sa/generated/shared", "fisher": "results/r/priors/sa/fisher/shared"}
    assert prior_folders("results/r", "sa", prior="fisher") == {"generated": "results/r/priors/sa/generated/shared"}
    assert prior_folders("results/r", "sa", prior="generated") == {}
    assert prior_folders("results/r", "salun", forget_class=3) == {"mask": "results/r/priors/salun/mask/class3"}
    assert prior_folders("results/r", "safemax", forget_class=3) == {}
    assert (
        prior_arguments(sa) == "generated=results/r/priors/sa/generated/shared fisher=results/r/priors/sa/fisher/shared"
    )


def _ewc_penalty_loop(model, fisher, star):
    """The per-tensor reference: sum_i F_i (theta_i - theta*_i)^2, one autograd expression per parameter tensor."""
    total = 0.0
    for n, p in model.named_parameters():
        if n in fisher:
            total = total + (fisher[n] * (p - star[n]) ** 2).sum()
    return total


@pytest.mark.parametrize("subset", [False, True])
def test_ewc_penalty_multi_tensor_equals_the_per_tensor_loop(subset):
    """sa.ewc_penalty (multi-tensor kernels, its own backward) against the loop: the same penalty, the same gradients
    (alone and added to a UNet loss, as in SA's step, clipped), and the same weights after Adam steps; `subset`: a
    Fisher that covers only some parameters (the others get no penalty and no gradient from it)."""
    model = micro_unet(1)
    star = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    fisher = {
        n: torch.rand(p.shape, generator=g) * 10 ** -torch.randint(0, 6, (1,), generator=g).item()
        for i, (n, p) in enumerate(model.named_parameters())
        if not subset or i % 3
    }
    with torch.no_grad():  # away from theta*, where the penalty and its gradient are not zero
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    reference = micro_unet(1)
    reference.load_state_dict(model.state_dict())
    schedule = Schedule(20, 1e-4, 0.02)
    x0, labels = torch.rand(4, 1, 4, 4) * 2 - 1, torch.tensor([0, 1, 2, 1])

    def grads(m):
        return [p.grad.clone() if p.grad is not None else None for p in m.parameters()]

    # the penalty alone
    for m, fn in ((model, sa.ewc_penalty), (reference, _ewc_penalty_loop)):
        m.zero_grad(set_to_none=True)
        (3.0 * fn(m, fisher, star)).backward()
    new, old = sa.ewc_penalty(model, fisher, star), _ewc_penalty_loop(reference, fisher, star)
    assert new.item() > 0 and torch.allclose(new, old, rtol=1e-6, atol=0)
    for n, a, b in zip(dict(model.named_parameters()), grads(model), grads(reference)):
        if n in fisher:
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-12), n
        else:
            assert a is None and b is None, n
    # SA's step: UNet loss + lambda * penalty, clipped, one Adam step. One: after it the two models differ by
    # rounding, and the next step's gradients of the parameters the loss cannot move (the attention's key bias: its
    # gradient is cancellation noise) would differ by more than rounding, which Adam's normalisation amplifies.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for m, fn in ((model, sa.ewc_penalty), (reference, _ewc_penalty_loop)):
        optimizer = torch.optim.Adam(m.parameters(), lr=1e-3)
        loss = epsilon_loss(m, schedule, x0, labels, reduction="mean", generator=torch.Generator().manual_seed(3))
        optimizer.zero_grad(set_to_none=True)
        (loss + 10.0 * fn(m, fisher, star)).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        optimizer.step()
    for (n, a), b, ga, gb in zip(model.named_parameters(), reference.parameters(), grads(model), grads(reference)):
        # rounding of the sum of the two gradients: a few units in the last place of the tensor's largest entry
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-6 * gb.abs().max().item()), n
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), n
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in fisher)  # all moved
    assert sa.ewc_penalty(model, {}, star) == 0.0
