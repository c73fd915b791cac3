"""BatchStream: epochs, horizontal flips and resumption (the batches every training loop draws)."""

import pytest
import torch

from unlearnbench.training import BatchStream

N, W = 10, 4


def ramp_images() -> torch.Tensor:
    """Image i is i + a left-to-right ramp: its index and whether it was mirrored can be read back."""
    ramp = torch.arange(W, dtype=torch.float32) / 100
    return (torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1) + ramp).expand(N, 1, 2, W).clone()


def read_back(x: torch.Tensor) -> tuple[list[int], list[bool]]:
    """(image index, mirrored) of each image of a batch."""
    first, last = x[:, 0, 0, 0], x[:, 0, 0, -1]
    return first.floor().long().tolist(), (first > last).tolist()


def draw(stream, batches: int):
    items, flips, labels = [], [], []
    for _ in range(batches):
        x, y = next(stream)
        i, f = read_back(x)
        items += i
        flips += f
        labels += y.tolist()
    return items, flips, labels


def stream(hflip: bool, seed: int = 0, batch_size: int = 3) -> BatchStream:
    return BatchStream(
        ramp_images(),
        torch.arange(N) * 10,
        batch_size,
        torch.Generator().manual_seed(seed),
        torch.device("cpu"),
        hflip=hflip,
    )


def test_every_epoch_visits_each_image_once_across_batch_boundaries():
    items, _, labels = draw(stream(hflip=False), 10)  # 30 items, batch 3 never aligned with the epoch of 10
    assert labels == [i * 10 for i in items]
    for epoch in range(3):
        assert sorted(items[epoch * N : (epoch + 1) * N]) == list(range(N))
    assert items[:N] != items[N : 2 * N]  # reshuffled


def test_without_hflip_nothing_is_mirrored():
    _, flips, _ = draw(stream(hflip=False), 20)
    assert not any(flips)


def test_hflip_mirrors_about_half_and_keeps_the_image():
    items, flips, labels = draw(stream(hflip=True, batch_size=7), 200)  # 1,400 draws, 140 epochs
    assert labels == [i * 10 for i in items]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    # the same image is mirrored in some epochs and not in others
    for image in range(N):
        seen = {f for i, f in zip(items, flips) if i == image}
        assert seen == {True, False}


def test_resumed_stream_continues_identically():
    reference = stream(hflip=True, seed=3)
    draw(reference, 4)  # stop inside the second epoch
    state = reference.state_dict()
    expected = draw(reference, 9)

    resumed = stream(hflip=True, seed=99)  # another seed: everything must come from the state
    resumed.load_state_dict(state)
    assert draw(resumed, 9) == expected


def test_seed_determines_the_batches():
    assert draw(stream(hflip=True, seed=1), 8) == draw(stream(hflip=True, seed=1), 8)
    assert draw(stream(hflip=True, seed=1), 8) != draw(stream(hflip=True, seed=2), 8)


def test_state_saved_without_epoch_flips_resumes_with_a_new_epoch():
    old = stream(hflip=True, seed=3)
    draw(old, 2)
    state = {k: v for k, v in old.state_dict().items() if k != "flip"}  # an older checkout's state
    resumed = stream(hflip=True, seed=99)
    resumed.load_state_dict(state)
    items, _, _ = draw(resumed, 10)
    assert sorted(items[:N]) == list(range(N))  # a whole fresh epoch, nothing lost or repeated within it


class _Killed(Exception):
    pass


class _DyingStream(BatchStream):
    """Raises on its `die_at`-th draw, as a job killed mid-run."""

    def __init__(self, *args, die_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws, self.die_at = 0, die_at

    def __next__(self):
        if self.draws == self.die_at:
            raise _Killed
        self.draws += 1
        return super().__next__()


def _train(state_path, die_at=None, meter=None):
    from unlearnbench.diffusion import Schedule
    from unlearnbench.networks import build_unet
    from unlearnbench.training import train_diffusion

    torch.manual_seed(0)
    model = build_unet(
        "tiny",
        3,
        {
            "block_out_channels": (8, 8),
            "norm_num_groups": 4,
            "sample_size": 4,
            "down_block_types": ("DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D"),
            "dropout": 0.3,
        },
    )
    images = torch.randn(10, 1, 4, 4)
    data = _DyingStream(
        images,
        torch.arange(10) % 3,
        4,
        torch.Generator().manual_seed(1),
        torch.device("cpu"),
        hflip=True,
        die_at=die_at,
    )  # batch 4 of 10 images: a kill falls inside an epoch
    return train_diffusion(
        model,
        Schedule(20, 1e-4, 0.02),
        data,
        steps=9,
        lr=1e-3,
        grad_clip=1.0,
        ema_decay=0.9,
        cond_dropout=0.1,
        reduction="mean",
        generator=torch.Generator().manual_seed(2),
        state_path=state_path,
        checkpoint_every=3,
        state_key="k",
        meter=meter,
    )


def test_resumed_base_training_ends_as_an_uninterrupted_one(tmp_path, capsys):
    """Weights, EMA, RTE and loss trace: before, the epoch's order and position, dropout's RNG, the RTE and the
    losses before the kill were lost, and the resumed model differed."""
    from unlearnbench.cost import CostMeter

    reference, reference_ema, reference_losses = _train(None)
    with pytest.raises(_Killed):
        _train(tmp_path / "state.pt", die_at=7)
    meter = CostMeter("cpu")
    model, ema, losses = _train(tmp_path / "state.pt", meter=meter)
    assert "resuming base training from step 6" in capsys.readouterr().out
    for a, b in ((model, reference), (ema, reference_ema)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert losses == reference_losses and losses[0][0] == 0
    assert meter.rte_s > 0 and meter.timed_blocks == 1  # the resumed job timed steps 6-8, plus the saved RTE


def _masked_step_loop(optimizer, loss, params, grad_clip, grad_mask):
    """The per-tensor reference of optimizer_step with a mask: backward, clip the full gradient, multiply each
    gradient by its mask, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in params if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=False)
    for p in params:
        if p in grad_mask:
            p.grad.mul_(grad_mask[p])
    optimizer.step()


def test_optimizer_step_masks_gradients_as_the_per_tensor_loop():
    """SalUn's step (clip, then mask, then Adam) with the multi-tensor mask: the same gradients and weights as the
    per-tensor loop, bit for bit; a mask on some parameters only leaves the others' gradients as clipped."""
    from unlearnbench.diffusion import Schedule, epsilon_loss
    from unlearnbench.networks import build_unet
    from unlearnbench.training import optimizer_step

    micro = {
        "block_out_channels": (8, 8),
        "norm_num_groups": 4,
        "sample_size": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
    }
    models = []
    for _ in range(3):
        torch.manual_seed(0)
        models.append(build_unet("tiny", 3, micro))
    masked_model, reference, unmasked = models
    g = torch.Generator().manual_seed(1)

    def masks(model):  # every third parameter unmasked; mask entries 0/1 in the parameter's dtype, as SalUn's,
        out = {}  # each mask with a 0 (a tensor left out of the masking would show)
        for i, p in enumerate(model.parameters()):
            if i % 3:
                out[p] = (torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) < 0.5).to(p.dtype)
                out[p].view(-1)[0] = 0
        return out

    schedule = Schedule(20, 1e-4, 0.02)
    x0, labels = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.tensor([0, 1, 2, 1])
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    for step in range(2):  # the second step also compares Adam's state after a masked step
        grads = []
        for model, optimizer in zip(models, optimizers):
            loss = epsilon_loss(
                model, schedule, x0, labels, reduction="mean", generator=torch.Generator().manual_seed(step)
            )
            if model is reference:
                _masked_step_loop(optimizer, loss, model.parameters(), 0.01, masks(model))
            else:
                optimizer_step(
                    optimizer, loss, model.parameters(), 0.01, masks(model) if model is masked_model else None
                )
            grads.append([p.grad.clone() for p in model.parameters()])
        for i, (a, b, c) in enumerate(zip(*grads)):
            assert torch.equal(a, b), (step, i)
            if i % 3 == 0 and step == 0:  # not masked: the clipped gradient (same weights before the first step)
                assert torch.equal(a, c), i
        for p, q in zip(masked_model.parameters(), reference.parameters()):
            assert torch.equal(p, q)
    mask = masks(masked_model)
    zeroed = [p.grad[mask[p] == 0] for p in masked_model.parameters() if p in mask]
    assert all(bool((z == 0).all()) for z in zeroed) and sum(z.numel() for z in zeroed) > 0
    assert not all(torch.equal(p, q) for p, q in zip(masked_model.parameters(), unmasked.parameters()))
