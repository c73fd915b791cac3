"""Datasets as uint8 arrays (N, C, H, W): scikit-learn's digits (embedded) and CIFAR-10 (official python format)."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DivergedError, MissingResourceError
from .files import atomic_output
from .settings import DataSettings

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]


@dataclass
class ImageData:
    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def save(self, path: str | Path) -> None:

        with atomic_output(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, train_x=self.train_x, train_y=self.train_y, test_x=self.test_x, test_y=self.test_y)

    @classmethod
    def load(cls, path: str | Path) -> "ImageData":
        path = Path(path)
        if not path.exists():
            raise MissingResourceError(
                f"prepared data {path} is missing: run the workflow's prepare_data step (snakemake {path}) first"
            )
        try:
            with np.load(path) as f:
                return cls(f["train_x"], f["train_y"].astype(np.int64), f["test_x"], f["test_y"].astype(np.int64))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise MissingResourceError(
                f"prepared data {path} cannot be read ({type(exc).__name__}: {exc}): it is "
                f"not, or no longer, a file prepare_data wrote. Delete it and rerun: the "
                f"workflow's prepare_data step remakes it"
            ) from None


def to_float(x_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    x = torch.as_tensor(x_uint8)
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], clipped (generated images may overshoot).

    NaN or inf is refused: cast to uint8 it would become a black pixel, and metrics of black images look real.
    """
    x = torch.as_tensor(x).detach().float().cpu()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DivergedError(
            f"generated images hold {bad:,} NaN or inf values of {x.numel():,}: the model's weights "
            "or the sampler diverged (with 'performance.bf16' on, try it off); nothing was saved"
        )
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 real 8x8 digits (values 0..16), stratified deterministic split."""
    from sklearn.datasets import load_digits as sk_load_digits  # here: only digits needs scikit-learn's import
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    return ImageData(tr_x, tr_y, te_x, te_y)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch["labels"], dtype=np.int64)


def _missing_cifar_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 not found under {root} ({reason}). Download {CIFAR10_URL} on a machine with internet "
        f"and extract it so that {root / CIFAR10_DIR}/data_batch_1 ... data_batch_5 and test_batch exist "
        f"(e.g. `mkdir -p {root} && tar -xzf cifar-10-python.tar.gz -C {root}`), or set data.root in the config "
        f"to the folder that holds {CIFAR10_DIR}/."
    )


def download_cifar10(root: Path) -> None:
    """Fetch and extract the official archive (torchvision's downloader checks its md5)."""
    from torchvision.datasets.utils import download_and_extract_archive  # here: only a download needs it

    download_and_extract_archive(
        CIFAR10_URL, str(root), filename="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a"
    )


def load_cifar10(root: str | Path, download: bool = False) -> ImageData:
    """Read the official python-pickle batches; download them first if allowed and absent."""
    root = Path(root)
    folder = root / CIFAR10_DIR
    missing = [n for n in CIFAR10_TRAIN + CIFAR10_TEST if not (folder / n).exists()]
    if missing and download:
        try:
            download_cifar10(root)
        except Exception as exc:  # offline, proxy, disk: all end in the same instruction
            raise MissingResourceError(_missing_cifar_message(root, f"download failed: {exc}")) from None
        missing = [n for n in CIFAR10_TRAIN + CIFAR10_TEST if not (folder / n).exists()]
    if missing:
        raise MissingResourceError(_missing_cifar_message(root, "missing " + ", ".join(missing)))
    batches = {}
    for name in CIFAR10_TRAIN + CIFAR10_TEST:
        try:
            batches[name] = _read_cifar_batch(folder / name)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
            raise MissingResourceError(
                f"CIFAR-10 file {folder / name} is unreadable ({type(exc).__name__}: {exc}): a truncated or "
                f"foreign file. Replace it with the one from {CIFAR10_URL} (extract the archive again), or delete "
                f"{folder} to have it downloaded anew (data.download: true)."
            ) from None
    train = [batches[n] for n in CIFAR10_TRAIN]
    test = batches[CIFAR10_TEST[0]]
    return ImageData(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test[0], test[1])


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the official format (used by tests to make miniature CIFAR-10 files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {
        "batch_label": path.name,
        "labels": [int(v) for v in labels],
        "data": images.reshape(len(images), -1).astype(np.uint8),
        "filenames": [f"{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def load_dataset(data: DataSettings) -> ImageData:
    if data.dataset == "digits":
        return load_digits(data.test_fraction, data.split_seed)
    return load_cifar10(data.root, data.download)


def class_subset(x: np.ndarray, y: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isin(y, list(classes))
    return x[keep], y[keep]


# Images that show no class, for the noise-aware evaluator's extra output (docs/robustness.md). None is made by a
# model: a method that turns its class into noise must not have trained the judge of its own noise.
NO_CLASS_KINDS = ("uniform", "gaussian", "corrupted", "shuffled", "mixture")
CORRUPTION_ALPHA_BAR = (
    0.1  # "corrupted": a real image noised as diffusion's forward process at alpha_bar 0.1 (SNR 0.11)
)


def no_class_images(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`n` uint8 images (N, C, H, W) of no class, as many of each of NO_CLASS_KINDS (the first kinds one more when
    n is not a multiple), and the kind of each: uniform noise; Gaussian noise (sd 0.5 in [-1, 1], clipped); a
    real image of `x` heavily noised; a real image with its pixels shuffled; the mean of two real images of two
    different classes (labels `y`)."""
    if n < len(NO_CLASS_KINDS):
        raise ValueError(f"n = {n}: at least {len(NO_CLASS_KINDS)} images, one of each kind")
    if len(np.unique(y)) < 2:
        raise ValueError("mixtures need real images of at least two classes")
    rng = np.random.default_rng(seed)
    shape = x.shape[1:]
    real = x.astype(np.float64) / 127.5 - 1.0
    counts = [n // len(NO_CLASS_KINDS) + (i < n % len(NO_CLASS_KINDS)) for i in range(len(NO_CLASS_KINDS))]
    made, kinds = [], []
    for kind, count in zip(NO_CLASS_KINDS, counts):
        if kind == "uniform":
            images = rng.uniform(-1.0, 1.0, (count, *shape))
        elif kind == "gaussian":
            images = 0.5 * rng.standard_normal((count, *shape))
        elif kind == "corrupted":
            a = CORRUPTION_ALPHA_BAR
            images = np.sqrt(a) * real[rng.integers(len(x), size=count)] + np.sqrt(1 - a) * rng.standard_normal(
                (count, *shape)
            )
        elif kind == "shuffled":
            flat = real[rng.integers(len(x), size=count)].reshape(count, -1)
            images = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(count, *shape)
        else:  # mixture: the first image's partner is drawn among the other classes' images
            first = rng.integers(len(x), size=count)
            second = np.array([rng.choice(np.flatnonzero(y != y[i])) for i in first], dtype=np.int64)
            images = 0.5 * (real[first] + real[second])
        made.append(images)
        kinds += [kind] * count
    out = np.concatenate(made)
    return ((np.clip(out, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8), kinds
