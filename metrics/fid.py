"""FID and KID between feature sets, and the feature backends that produce them.

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).  Tr (S1 S2)^(1/2) is the sum of the
square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric PSD matrix with the
same spectrum as S1 S2; symmetric eigensolvers stay exact when the covariances are
rank-deficient (fewer samples than feature dimensions), where a general sqrtm of S1 S2
needs an eps fallback.

KID = unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al.
2018, as in clean-fid), averaged over random subsets.

Backends (config key `fid.backend`): `classifier` uses the evaluator's penultimate
activations, `inception` clean-fid's Inception pool features in "clean" mode.
"""

from __future__ import annotations

import json
import os
import platform
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metrics.forgetting import as_float_images, batched_outputs
from unlearnbench.errors import MissingResourceError
from unlearnbench.files import atomic_output

FID_BACKENDS = ("classifier", "inception")
# As in cleanfid.downloads_helper (checked by the tests, so a clean-fid update cannot drift).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_DIR_ENV = "UNLEARNBENCH_INCEPTION_DIR"
OFFLINE_ENV = "UNLEARNBENCH_OFFLINE"
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: an unreachable host fails fast instead of hanging
INCEPTION_SIZE = 299


# --------------------------------------------------------------------------- statistics
def _check_features(feats, name: str = "features", min_rows: int = 2) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < min_rows or f.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= {min_rows}; got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, like clean-fid) of (N, D) features, float64."""
    f = _check_features(features)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; round-off negative eigenvalues count as 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("statistics contain NaN or inf")
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # >= 0 in exact arithmetic; clip round-off of identical sets


def fid_from_features(feats_a, feats_b) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))


def kid_from_features(feats_a, feats_b, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """KID: unbiased MMD^2 (cubic polynomial kernel) averaged over random subsets.

    Each subset draws m = min(N_a, N_b, max_subset_size) rows of each set without
    replacement; `seed` makes the draw reproducible.
    """
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError("need num_subsets >= 1 and max_subset_size >= 2")
    d, m = a.shape[1], min(len(a), len(b), max_subset_size)
    rng = np.random.default_rng(seed)

    def kernel(x, y):
        return (x @ y.T / d + 1.0) ** 3

    total = 0.0
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy = kernel(x, x), kernel(y, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kernel(x, y).mean()
    return float(total / num_subsets)


# --------------------------------------------------------------------------- caching
def reference_statistics(features, keep_features: int = 5000, seed: int = 0) -> dict:
    """FID statistics of real images, plus up to `keep_features` rows kept for KID.

    Keeping a fixed random subset bounds the cache size (all CIFAR-10 train features
    would be ~370 MB) while KID subsets are at most 1000 rows anyway.
    """
    f = _check_features(features)
    mu, sigma = feature_statistics(f)
    keep = (
        f
        if len(f) <= keep_features
        else f[np.sort(np.random.default_rng(seed).choice(len(f), keep_features, replace=False))]
    )
    return {"mu": mu, "sigma": sigma, "n": int(len(f)), "features": keep.astype(np.float32)}


def save_statistics(path, mu, sigma, **meta) -> Path:
    """Write `mu`, `sigma` and `meta` to an .npz atomically.

    Array-valued meta entries (e.g. `features`) are stored as arrays, the rest as JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "meta" in meta:
        raise ValueError("meta key 'meta' is reserved")
    arrays = {k: np.asarray(v) for k, v in meta.items() if isinstance(v, (np.ndarray, torch.Tensor))}
    rest = {k: v for k, v in meta.items() if k not in arrays}
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would add .npz to a name
        np.savez(
            fh,
            mu=np.asarray(mu, np.float64),
            sigma=np.asarray(sigma, np.float64),
            meta=np.array(json.dumps(rest, sort_keys=True)),
            **arrays,
        )
    return path


def load_statistics(path) -> dict:
    """Read what `save_statistics` wrote: {"mu", "sigma", <arrays>..., "meta": dict}."""
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"FID statistics file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        if not {"mu", "sigma"} <= set(z.files):
            raise MissingResourceError(
                f"{path} holds no FID statistics (it has {sorted(z.files)}); pass a file "
                "written by `unlearnbench fid-reference`"
            )
        out = {k: z[k] for k in z.files if k != "meta"}
        out["meta"] = json.loads(str(z["meta"])) if "meta" in z.files else {}
    return out


# --------------------------------------------------------------------------- backends
def classifier_features(classifier: torch.nn.Module, images, batch_size: int = 512) -> np.ndarray:
    """Evaluator's penultimate activations `classifier.features(x)`, (N, D) float64."""
    if not callable(getattr(classifier, "features", None)):
        raise ValueError("the classifier backend needs a model with a .features(x) method")
    return batched_outputs(classifier, lambda m, x: m.features(x).flatten(1), images, batch_size)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def inception_weights_dir(weights_dir=None) -> Path:
    """Where the Inception weights are looked for: argument, env var, else clean-fid's default."""
    if weights_dir is None:
        weights_dir = os.environ.get(INCEPTION_DIR_ENV) or ("./" if platform.system() == "Windows" else "/tmp")
    return Path(weights_dir)


def _download(url: str, dest: Path) -> None:
    with (
        atomic_output(dest, suffix=".part") as tmp,
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
        open(tmp, "wb") as fh,
    ):
        while chunk := resp.read(1 << 20):
            fh.write(chunk)


def inception_weights_path(weights_dir=None, offline: bool | None = None) -> Path:
    """Path of clean-fid's Inception weights, downloading them once if allowed.

    Raises MissingResourceError (naming file, URL and directory) when the file is absent
    and cannot be fetched.
    """
    folder = inception_weights_dir(weights_dir)
    path = folder / INCEPTION_FILE
    if path.is_file():
        return path
    if _offline(offline):
        why = f"offline ({OFFLINE_ENV} is set or offline=True), so no download was tried"
    else:
        try:
            _download(INCEPTION_URL, path)
            return path
        except Exception as err:  # noqa: BLE001 - any failure means: the user must provide the file
            why = f"downloading it failed: {type(err).__name__}: {err}"
    raise MissingResourceError(
        f"Inception weights '{INCEPTION_FILE}' for the FID backend 'inception' are missing from "
        f"{folder.resolve()} ({why}). Download {INCEPTION_URL} and put '{INCEPTION_FILE}' in "
        f"{folder.resolve()}, or set fid.weights_dir in the config (or {INCEPTION_DIR_ENV}) to the directory that holds it, "
        f"or use fid.backend: classifier."
    )


def load_inception(device="cpu", weights_dir=None, offline: bool | None = None) -> torch.nn.Module:
    """clean-fid's TorchScript Inception (expects 299x299 inputs in [0, 255]), in eval mode."""
    path = inception_weights_path(weights_dir, offline)
    from cleanfid.inception_torchscript import InceptionV3W  # slow import (torchvision): only when used

    try:
        model = InceptionV3W(str(path.parent), download=False, resize_inside=False)
    except RuntimeError as err:
        raise MissingResourceError(
            f"cannot load Inception weights {path} ({err}); delete the file and download {INCEPTION_URL} again"
        ) from err
    return model.to(device).eval()


def _to_uint8_hwc(images) -> np.ndarray:
    """(N, H, W, 3) uint8 from NCHW images in [-1, 1] (or uint8); grey repeated to RGB."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be NCHW with 1 or 3 channels; got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not torch.isfinite(x).all():  # cast to uint8, NaN would become a plausible pixel
        raise ValueError("images hold NaN or inf values: the model or the sampler diverged")
    u = (
        x.cpu()
        if x.dtype == torch.uint8
        else ((as_float_images(x).cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    )
    return u.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def inception_features(
    images,
    device="cpu",
    batch_size: int = 64,
    weights_dir=None,
    offline: bool | None = None,
    model: torch.nn.Module | None = None,
) -> np.ndarray:
    """clean-fid "clean" mode Inception pool features, (N, 2048) float64.

    Images are quantised to uint8 as if saved to disk, resized to 299x299 by clean-fid's
    PIL bicubic resizer (float, no re-quantisation) and fed to its Inception network.
    Pass `model` (from `load_inception`) to avoid reloading it for every call.
    """
    from cleanfid.resize import build_resizer

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if model is None:
        model = load_inception(device, weights_dir, offline)
    dev = next(iter(model.parameters()), torch.empty(0, device=device)).device
    resize = build_resizer("clean")
    u = _to_uint8_hwc(images)
    out = []
    for i in range(0, len(u), batch_size):
        batch = np.stack([resize(img).transpose(2, 0, 1) for img in u[i : i + batch_size]])
        out.append(model(torch.from_numpy(batch).to(dev)).to("cpu", torch.float64).numpy())
    if not out:
        raise ValueError("images is empty")
    return np.concatenate(out)


def feature_extractor(
    backend: str, classifier: torch.nn.Module | None = None, device="cpu", **kw
) -> Callable[[np.ndarray | torch.Tensor], np.ndarray]:
    """Function images -> (N, D) features for config `fid.backend`.

    `kw` goes to the backend (`batch_size`; for inception also `weights_dir`, `offline`,
    which the classifier backend ignores, so the whole `fid` config section can be passed).
    The Inception network is loaded once, here, so a missing weights file fails early.
    """
    if backend == "classifier":
        if classifier is None:
            raise ValueError("fid.backend 'classifier' needs the evaluation classifier")
        kw = {k: v for k, v in kw.items() if k not in ("weights_dir", "offline")}
        return lambda images: classifier_features(classifier, images, **kw)
    if backend == "inception":
        batch_size = kw.pop("batch_size", 64)
        model = load_inception(device, **kw)
        return lambda images: inception_features(images, batch_size=batch_size, model=model)
    raise ValueError(f"unknown fid.backend {backend!r}; allowed: {', '.join(FID_BACKENDS)}")
