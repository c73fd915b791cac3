"""BatchStream: epochs, horizontal flips and resumption (the batches every training loop draws)."""
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
    return BatchStream(ramp_images(), torch.arange(N) * 10, batch_size, torch.Generator().manual_seed(seed),
                       torch.device("cpu"), hflip=hflip)


def test_every_epoch_visits_each_image_once_across_batch_boundaries():
    items, _, labels = draw(stream(hflip=False), 10)  # 30 items, batch 3 never aligned with the epoch of 10
    assert labels == [i * 10 for i in items]
    for epoch in range(3):
        assert sorted(items[epoch * N:(epoch + 1) * N]) == list(range(N))
    assert items[:N] != items[N:2 * N]  # reshuffled


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
