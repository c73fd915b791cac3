"""Metrics against closed forms, hand-made examples and clean-fid's own implementation."""

import math
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import metrics
from metrics import fid as F
from metrics import forgetting as G
from unlearnbench.errors import MissingResourceError


# --------------------------------------------------------------------------- forgetting
def test_entropy_uniform_onehot_and_mixture():
    k = 10
    assert G.entropy(np.full((4, k), 1 / k)) == pytest.approx(math.log(k))
    assert G.entropy(np.eye(k)) == 0.0
    probs = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
    by_hand = (math.log(2) + 0.0 - (0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))) / 3
    assert G.entropy(probs) == pytest.approx(by_hand)


def test_unlearning_accuracy_and_class_probability_hand_counted():
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # argmax 0
            [0.1, 0.2, 0.7],  # 2
            [0.2, 0.6, 0.2],  # 1
            [0.3, 0.3, 0.4],  # 2
            [0.0, 0.0, 1.0],
        ]
    )  # 2
    assert G.unlearning_accuracy(probs, 2) == pytest.approx(40.0)  # 2 of 5 are not class 2
    assert G.unlearning_accuracy(probs, 0) == pytest.approx(80.0)
    assert G.mean_class_probability(probs, 2) == pytest.approx((0.1 + 0.7 + 0.2 + 0.4 + 1.0) / 5)
    assert G.accuracy(probs, np.array([0, 2, 0, 2, 1])) == pytest.approx(60.0)


@pytest.mark.parametrize(
    "bad",
    [
        np.ones(3) / 3,
        np.ones((2, 3)),
        np.full((2, 3), np.nan),
        np.array([[1.5, -0.5, 0.0]]),
        np.zeros((0, 3)),
        [[2.0, -1.0]],
    ],
)
def test_probability_validation(bad):
    with pytest.raises(ValueError):
        G.entropy(bad)


def test_class_and_label_validation():
    p = np.full((2, 3), 1 / 3)
    for cls in (3, -1, 1.0, True):
        with pytest.raises(ValueError):
            G.unlearning_accuracy(p, cls)
    with pytest.raises(ValueError):
        G.mean_class_probability(p, 5)
    for labels in (np.array([0, 1, 2]), np.array([0.0, 1.0]), np.array([0, 3])):
        with pytest.raises(ValueError):
            G.accuracy(p, labels)


class TinyNet(nn.Module):
    """Evaluator stand-in: `.features` = penultimate activations, forward = logits."""

    def __init__(self, channels=1, size=4, dim=6, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, dim), nn.Tanh(), nn.Dropout(0.5))
        self.head = nn.Linear(dim, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_softmax_probabilities_and_classifier_features():
    torch.manual_seed(0)
    net = TinyNet().train()
    x = torch.rand(7, 1, 4, 4) * 2 - 1
    probs = G.softmax_probabilities(net, x, batch_size=3)
    feats = metrics.classifier_features(net, x.numpy(), batch_size=2)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        ref_feats = net.body(x).double().numpy()
        ref_probs = torch.softmax(net.head(net.body(x)).double(), 1).numpy()
    assert probs.dtype == np.float64 and probs.shape == (7, 3)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-6, atol=1e-7)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)  # uint8 input is read as on-disk images
    np.testing.assert_allclose(G.softmax_probabilities(net, u8), G.softmax_probabilities(net, u8.float() / 127.5 - 1))
    extract = F.feature_extractor("classifier", classifier=net, batch_size=4, weights_dir=None)
    np.testing.assert_allclose(extract(x), ref_feats, rtol=1e-6, atol=1e-7)


def test_feature_extractor_rejects_unknown_backend_and_missing_classifier():
    with pytest.raises(ValueError, match="classifier, inception"):
        F.feature_extractor("resnet")
    with pytest.raises(ValueError, match="classifier"):
        F.feature_extractor("classifier")
    with pytest.raises(ValueError, match="features"):
        F.classifier_features(nn.Linear(2, 2), torch.zeros(1, 1, 1, 2))


# --------------------------------------------------------------------------- FID / KID
def _closed_form(m1, s1, m2, s2):
    """Independent FID: scipy's general sqrtm of S1 S2."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_diagonal_by_hand():
    m1, m2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.5, 0.0])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    by_hand = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert F.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(by_hand, rel=1e-12)


def test_frechet_distance_non_commuting_exact_params():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    assert F.frechet_distance(m1, s1, m2, s2) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-9)
    assert F.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_gaussian_samples_matches_closed_form():
    rng = np.random.default_rng(2)
    m1, m2 = np.array([0.0, 1.0, 0.0]), np.array([0.5, 0.0, -1.0])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    n = 200_000
    x, y = rng.multivariate_normal(m1, s1, n), rng.multivariate_normal(m2, s2, n)
    assert F.fid_from_features(x, y) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=0.02)  # ~5 sd
    mu, sigma = F.feature_statistics(x)
    np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1))
    assert mu.dtype == sigma.dtype == np.float64


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # inside clean-fid
def test_fid_and_kid_match_cleanfid():
    from cleanfid import fid as cfid

    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 32))
    b = 0.8 * rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32)) / 5 + 0.3
    ours = F.fid_from_features(a, b)
    assert ours == pytest.approx(cfid.fid_from_feats(a, b), rel=1e-7)
    mu1, s1 = F.feature_statistics(a)
    mu2, s2 = F.feature_statistics(b)
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(cfid.frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    # one subset holding every row: both estimators are then deterministic
    np.random.seed(0)
    ref = cfid.kernel_distance(a, b, num_subsets=1, max_subset_size=1000)
    assert F.kid_from_features(a, b, num_subsets=1) == pytest.approx(ref, rel=1e-9)
    # subsets: reproducible per seed, and close to the full-set estimate
    sub = F.kid_from_features(a, b, num_subsets=50, max_subset_size=100, seed=5)
    assert sub == F.kid_from_features(a, b, num_subsets=50, max_subset_size=100, seed=5)
    assert sub == pytest.approx(ref, rel=0.2)


def test_self_distance_is_zero_and_low_rank_is_finite():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 16))
    assert F.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    # unbiased KID of two samples of one distribution ~ 0 (of x with itself it is not:
    # the cross term then includes the diagonal k(x_i, x_i))
    same = F.kid_from_features(x, rng.normal(size=(500, 16)), num_subsets=3)
    assert abs(same) < 5e-3 < F.kid_from_features(x, rng.normal(size=(500, 16)) + 0.3, num_subsets=3)
    few_a, few_b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.1  # rank 9 and 11 in 64-d
    fid = F.fid_from_features(few_a, few_b)
    mu1, s1 = F.feature_statistics(few_a)
    mu2, s2 = F.feature_statistics(few_b)
    eig = np.linalg.eigvals(s1 @ s2)  # independent: spectrum of the non-symmetric product
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum()
    assert np.isfinite(fid) and fid == pytest.approx(ref, rel=1e-6)
    assert F.fid_from_features(few_a, few_a) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(F.kid_from_features(few_a, few_b))


def test_fid_input_validation():
    with pytest.raises(ValueError):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        F.fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        F.kid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        F.feature_statistics(np.full((4, 2), np.nan))


def test_statistics_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(50, 8))
    ref = F.reference_statistics(feats, keep_features=20)
    assert ref["n"] == 50 and ref["features"].shape == (20, 8)
    path = F.save_statistics(tmp_path / "stats" / "digits_class3.npz", **ref, dataset="digits", forget_class=3)
    back = F.load_statistics(path)
    np.testing.assert_array_equal(back["mu"], ref["mu"])
    np.testing.assert_array_equal(back["sigma"], ref["sigma"])
    np.testing.assert_array_equal(back["features"], ref["features"])
    assert back["meta"] == {"n": 50, "dataset": "digits", "forget_class": 3}
    assert list(path.parent.iterdir()) == [path]  # no temporary files left
    with pytest.raises(MissingResourceError):
        F.load_statistics(tmp_path / "absent.npz")


# --------------------------------------------------------------------------- inception
def test_inception_constants_match_cleanfid():
    from cleanfid import downloads_helper

    assert F.INCEPTION_URL == downloads_helper.inception_url
    assert F.INCEPTION_URL.endswith("/" + F.INCEPTION_FILE)


def _no_network(*args, **kwargs):
    raise AssertionError("no download may be attempted")


def test_inception_offline_missing_weights_names_file_url_and_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNBENCH_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(MissingResourceError) as err:
        F.inception_features(np.zeros((1, 3, 8, 8), np.float32), weights_dir=tmp_path)
    msg = str(err.value)
    assert "inception-2015-12-05.pt" in msg and str(tmp_path.resolve()) in msg and F.INCEPTION_URL in msg
    env_dir = tmp_path / "from_env"
    monkeypatch.setenv("UNLEARNBENCH_INCEPTION_DIR", str(env_dir))
    with pytest.raises(MissingResourceError, match=str(env_dir)):
        F.feature_extractor("inception")


def test_inception_failed_download_raises(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(MissingResourceError, match="no route to host"):
        F.inception_weights_path(tmp_path, offline=False)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_inception_download_lands_whole_with_ordinary_permissions(tmp_path, monkeypatch):
    """The weights are written to a temporary sibling and renamed: a reader sees all of them or none."""
    import io
    import os

    payload = os.urandom(3 << 20)  # several read chunks
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload))
    path = F.inception_weights_path(tmp_path, offline=False)
    assert path.read_bytes() == payload and [p.name for p in tmp_path.iterdir()] == [path.name]
    from unlearnbench.files import _umask

    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # an ordinary new file's, not mkstemp's private 0600


class _FakeLayers(nn.Module):
    """Stands in for Inception's layers: per-channel means of its input, tiled to 2048."""

    def forward(self, x):
        assert x.shape[2] == 299 and x.shape[3] == 299
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


class _FakeInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x, return_features: bool = False):
        return self.layers(x) * self.scale


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # clean-fid's Inception is TorchScript
def test_inception_pipeline_with_stand_in_network(tmp_path):
    """Plumbing only: quantisation, grey->RGB, 299 px resize and clean-fid's (x-128)/128."""
    torch.jit.save(torch.jit.script(_FakeInception()), str(tmp_path / F.INCEPTION_FILE))
    grey = torch.tensor([-1.0, 0.0, 0.5]).view(3, 1, 1, 1).expand(3, 1, 8, 8)
    feats = F.inception_features(grey, weights_dir=tmp_path, offline=True, batch_size=2)
    u8 = np.round((np.array([-1.0, 0.0, 0.5]) + 1) * 127.5)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, np.repeat(((u8 - 128) / 128)[:, None], 2048, 1), atol=1e-5)
    with pytest.raises(ValueError, match="NaN or inf"):  # not black pixels with plausible features
        F.inception_features(torch.full((1, 1, 8, 8), float("nan")), weights_dir=tmp_path, offline=True)
    # Colour images, against the clean-fid pipeline written out with PIL: per-channel bicubic resize of the
    # uint8 HWC image in float mode ("F", no re-quantisation) clipped to [0, 255] (bicubic overshoots), CHW,
    # then the network's (x-128)/128 and the stand-in's channel means.
    from PIL import Image

    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    extract = F.feature_extractor("inception", weights_dir=tmp_path, offline=True)
    u8 = ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    resized = np.stack(
        [
            np.stack(
                [
                    np.asarray(
                        Image.fromarray(img[:, :, ch].astype(np.float32), mode="F").resize(
                            (299, 299), resample=Image.BICUBIC
                        )
                    )
                    for ch in range(3)
                ]
            )
            for img in u8
        ]
    ).clip(0, 255)
    channel_means = ((resized.astype(np.float64) - 128) / 128).mean(axis=(2, 3))
    expected = np.tile(channel_means, 683)[:, :2048]
    np.testing.assert_allclose(extract(rgb), expected, rtol=1e-5, atol=1e-5)


def test_eps_mean_squares_replayed_one_image_at_a_time():
    """The denoiser check against a loop written out: the same draws (forget images' timesteps and noise, then the
    remaining images'), x_t = sqrt(a) x0 + sqrt(1 - a) noise, one image per forward pass, the mean square of the
    predictions under c_f, the own labels and the null label (the latter two on the same x_t)."""
    from metrics.denoiser import eps_mean_squares
    from unlearnbench.diffusion import Schedule
    from unlearnbench.networks import build_unet

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
        },
    ).eval()
    T = 50
    schedule = Schedule(T, 1e-4, 0.02)
    forget, remaining = torch.rand(5, 1, 4, 4) * 2 - 1, torch.rand(7, 1, 4, 4) * 2 - 1
    labels = torch.tensor([1, 2, 1, 2, 2, 1, 1])
    got = eps_mean_squares(
        model, schedule, forget, remaining, labels, 0, 3, torch.Generator().manual_seed(5), batch_size=3
    )

    g = torch.Generator().manual_seed(5)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()

    def noised(x0):
        t = torch.randint(0, T, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t

    def mean_square(x_t, t, y):
        with torch.no_grad():
            return (
                sum(model(x_t[i : i + 1], t[i : i + 1], y[i : i + 1]).pow(2).sum().item() for i in range(len(x_t)))
                / x_t.numel()
            )

    x_f, t_f = noised(forget)
    x_r, t_r = noised(remaining)
    want = {
        "forget": mean_square(x_f, t_f, torch.zeros(5, dtype=torch.long)),
        "remaining": mean_square(x_r, t_r, labels),
        "null": mean_square(x_r, t_r, torch.full((7,), 3)),
    }
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
