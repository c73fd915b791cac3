"""The diffusion core against closed forms and an exact oracle."""

import math

import torch

from unlearnbench.diffusion import (
    Schedule,
    drop_labels,
    reduce_squared_error,
    sample,
    sample_as_configured,
    sampling_timesteps,
)
from unlearnbench.settings import DiffusionSettings, Settings
from unlearnbench.training import ema_update, make_ema


def test_schedule_matches_closed_forms():
    s = Schedule(1000, 1e-4, 0.02)
    assert s.betas[0].item() == 1e-4 and abs(s.betas[-1].item() - 0.02) < 1e-15
    assert abs(s.betas[1].item() - (1e-4 + (0.02 - 1e-4) / 999)) < 1e-15
    # alpha_bar_t = prod_{s<=t} (1 - beta_s), computed independently in plain Python
    prod = 1.0
    for t in range(1000):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * t / 999)
        if t in (0, 10, 500, 999):
            assert math.isclose(s.alpha_bar[t].item(), prod, rel_tol=1e-9)
    assert 3e-5 < s.alpha_bar[-1].item() < 5e-5  # the well-known ~4.0e-5 of the DDPM schedule


def test_q_sample_is_the_forward_marginal():
    s = Schedule(1000, 1e-4, 0.02)
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 1, 500, 999])
    xt = s.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = s.alpha_bar[ti].item()
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)


def _oracle(schedule, image):
    """The exact noise predictor for a one-image data set: eps = (x_t - sqrt(ab) x*) / sqrt(1 - ab)."""

    def eps_fn(x, t, labels):
        ab = schedule.alpha_bar[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * image) / (1 - ab).sqrt()

    eps_fn.image_shape = tuple(image.shape)
    return eps_fn


def test_sampler_with_exact_oracle_returns_the_image():
    torch.manual_seed(0)
    schedule = Schedule(1000, 1e-4, 0.02)
    image = torch.rand(1, 8, 8) * 2 - 1
    labels = torch.zeros(6, dtype=torch.long)
    for steps, eta in ((1000, 1.0), (50, 1.0), (20, 0.0)):
        out = sample(
            None,
            schedule,
            labels,
            steps=steps,
            eta=eta,
            generator=torch.Generator().manual_seed(1),
            eps_fn=_oracle(schedule, image),
        )
        assert torch.allclose(out, image.expand_as(out), atol=1e-4), (steps, eta, (out - image).abs().max())


def test_sampler_is_seeded_and_deterministic():
    schedule = Schedule(100, 1e-4, 0.02)
    eps_fn = lambda x, t, y: 0.1 * x  # noqa: E731  any deterministic predictor
    eps_fn.image_shape = (1, 4, 4)
    labels = torch.arange(5)
    a = sample(None, schedule, labels, steps=10, generator=torch.Generator().manual_seed(3), eps_fn=eps_fn)
    b = sample(None, schedule, labels, steps=10, generator=torch.Generator().manual_seed(3), eps_fn=eps_fn)
    c = sample(None, schedule, labels, steps=10, generator=torch.Generator().manual_seed(4), eps_fn=eps_fn)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_configured_sampler_is_the_sampler_with_the_config_sections_values(tiny_config):
    """Evaluation, SA's replay set and the benchmark sample through one mapping of `sampler`: its steps, eta, w,
    clip_x0 and batch size, spelled out here by hand, give the same images."""
    from unlearnbench.networks import build_unet

    torch.manual_seed(0)
    model = build_unet("tiny", 10)
    config = {
        **tiny_config,
        "sampler": {
            **tiny_config["sampler"],
            "steps": 4,
            "eta": 0.5,
            "guidance_w": 1.5,
            "clip_x0": True,
            "batch_size": 3,
        },
    }
    labels = torch.tensor([0, 3, 3, 9, 1])
    by_hand = sample(
        model,
        Schedule(1000, 1e-4, 0.02),
        labels,
        steps=4,
        eta=0.5,
        guidance_w=1.5,
        clip_x0=True,
        batch_size=3,
        generator=torch.Generator().manual_seed(5),
    )
    settings = Settings.parse(config)
    schedule = Schedule.of(settings.diffusion)
    configured = sample_as_configured(
        model,
        settings.sampler,
        schedule,
        labels,
        torch.Generator().manual_seed(5),
        "cpu",
        performance=settings.runtime.performance,
    )
    assert torch.equal(configured, by_hand)
    assert not torch.equal(
        sample_as_configured(
            model,
            settings.sampler,
            schedule,
            labels,
            torch.Generator().manual_seed(5),
            "cpu",
            performance=settings.runtime.performance,
            steps=5,
        ),
        by_hand,
    )  # an override is used


def test_sampling_timesteps():
    assert sampling_timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = sampling_timesteps(1000, 25)
    assert len(ts) == 25 and ts[0] == 960 and ts[-1] == 0 and ts == sorted(ts, reverse=True)


def test_antithetic_timesteps_pair_t_with_its_mirror_and_stay_uniform():
    plain = Schedule(timesteps=10)
    # off (the default): the same draws as before the switch existed, so earlier runs keep their results
    assert torch.equal(
        plain.sample_timesteps(7, torch.Generator().manual_seed(3)),
        torch.randint(0, 10, (7,), generator=torch.Generator().manual_seed(3)),
    )
    paired = Schedule.of(
        DiffusionSettings.parse(
            {
                "timesteps": 10,
                "beta_start": 1e-4,
                "beta_end": 0.02,
                "loss_reduction": "sum",
                "antithetic_timesteps": True,
            }
        )
    )
    for n in (1, 2, 7, 8):
        t = paired.sample_timesteps(n, torch.Generator().manual_seed(n))
        first = torch.randint(0, 10, (n // 2 + 1,), generator=torch.Generator().manual_seed(n))
        assert len(t) == n and torch.equal(t[: n // 2 + 1], first[:n])
        assert torch.equal(t[n // 2 + 1 :], 9 - first[: n - (n // 2 + 1)])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([paired.sample_timesteps(8, generator) for _ in range(2000)]), minlength=10)
    # 1,600 expected per index; sd at most 38 (binomial; a pair never hits one index twice, as T is even)
    assert counts.min() > 1450 and counts.max() < 1750, counts


def test_guidance_batches_conditional_and_null_passes():
    """eps = (1 + w) eps_c - w eps_null, with both passes in one forward call."""
    from unlearnbench.diffusion import guided_eps

    calls = []

    class Fake(torch.nn.Module):
        config = type("C", (), {"num_class_embeds": 11})()

        def forward(self, x, t, class_labels):
            calls.append(len(x))
            return x * 0 + class_labels.view(-1, 1, 1, 1).float()

    x = torch.zeros(3, 1, 2, 2)
    eps = guided_eps(Fake(), x, torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3]), w=2.0)
    assert calls == [6]
    assert torch.allclose(eps[:, 0, 0, 0], 3 * torch.tensor([1.0, 2, 3]) - 2 * 10)


def test_guidance_combines_bf16_passes_in_fp32():
    """Under bf16 autocast the UNet's outputs are bf16; 3 eps_c - 2 eps_null is formed in fp32 (exact here), where
    bf16 arithmetic would round 3 * 1.0078125 to a 1/64 grid."""
    from unlearnbench.diffusion import guided_eps

    class HalfPrecision(torch.nn.Module):
        config = type("C", (), {"num_class_embeds": 11})()

        def forward(self, x, t, class_labels):
            conditional = (class_labels != 10).view(-1, 1, 1, 1)
            return torch.where(conditional, 1.0078125, 1.0).expand_as(x).to(torch.bfloat16)

    eps = guided_eps(
        HalfPrecision(), torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), w=2.0
    )
    assert eps.dtype == torch.float32
    assert torch.equal(eps, torch.full((2, 1, 2, 2), 1.0234375))
    bf16_arithmetic = 3 * torch.tensor(1.0078125, dtype=torch.bfloat16) - 2 * torch.tensor(1.0, dtype=torch.bfloat16)
    assert float(bf16_arithmetic) != 1.0234375  # the test can tell the two apart


def test_label_dropout_rate_and_null_index():
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)


def test_loss_reductions():
    pred, target = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert torch.equal(reduce_squared_error(pred, target, "sum"), torch.tensor([4.0, 4.0]))
    assert torch.equal(reduce_squared_error(pred, target, "mean"), torch.tensor([1.0, 1.0]))


def test_ema_update():
    model = torch.nn.Linear(3, 2)
    ema = make_ema(model)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema_update(ema, model, decay=0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p)
    assert all(not p.requires_grad for p in ema.parameters())
