"""Forgetting metrics over the evaluator's softmax outputs (PROTOCOL section 6).

H  = mean over images of -sum_k p_k ln p_k (natural log, 0 ln 0 = 0): high when the
     evaluator cannot tell what the images of the forgotten class show.
UA = 100 x fraction of images whose argmax is not the forgotten class.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import xlogy

ROW_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; this only catches misuse


def _check_probs(probs) -> np.ndarray:
    """Return `probs` as float64 (N, K) after checking it is a batch of distributions."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with N >= 1, K >= 2; got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or inf")
    if (p < -ROW_SUM_TOL).any():
        raise ValueError(f"probs has negative entries (min {p.min():.3g}); pass softmax outputs, not logits")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > ROW_SUM_TOL
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} rows of probs do not sum to 1 (e.g. {sums[bad][0]:.4g}); "
            "pass softmax outputs, not logits"
        )
    return np.clip(p, 0.0, None)


def _check_class(cls, num_classes: int) -> int:
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or not 0 <= cls < num_classes:
        raise ValueError(f"class index must be an int in [0, {num_classes}); got {cls!r}")
    return int(cls)


def entropy(probs) -> float:
    """Mean predictive entropy in nats (ln K for uniform, 0 for one-hot)."""
    p = _check_probs(probs)
    return float(-xlogy(p, p).sum(axis=1).mean())


def unlearning_accuracy(probs, forget_class: int) -> float:
    """Percent of images NOT classified as the forgotten class."""
    p = _check_probs(probs)
    c = _check_class(forget_class, p.shape[1])
    return float(100.0 * np.mean(p.argmax(axis=1) != c))


def mean_class_probability(probs, cls: int) -> float:
    """Mean probability the evaluator gives to class `cls`."""
    p = _check_probs(probs)
    return float(p[:, _check_class(cls, p.shape[1])].mean())


def accuracy(probs, labels) -> float:
    """Percent of images whose argmax equals their label."""
    p = _check_probs(probs)
    y = np.asarray(labels)
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({p.shape[0]},); got {y.dtype} {y.shape}")
    if ((y < 0) | (y >= p.shape[1])).any():
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return float(100.0 * np.mean(p.argmax(axis=1) == y))


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (cpu for a module without any)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def as_float_images(images) -> torch.Tensor:
    """Float32 NCHW tensor in [-1, 1]; uint8 input is mapped as the suite stores samples (x / 127.5 - 1)."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.ndim != 4:
        raise ValueError(f"images must be NCHW; got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 127.5 - 1.0
    return x.to(torch.float32)


@torch.no_grad()
def batched_outputs(module: torch.nn.Module, fn, images, batch_size: int) -> np.ndarray:
    """Apply `fn(module, x)` batch by batch in eval mode on the module's device.

    The module's train/eval mode is restored afterwards, so evaluation never alters
    a model that is still being trained.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    x = as_float_images(images)
    device, was_training = module_device(module), module.training
    module.eval()
    try:
        out = [
            fn(module, x[i : i + batch_size].to(device)).detach().to("cpu", torch.float64).numpy()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        module.train(was_training)
    if not out:
        raise ValueError("images is empty")
    return np.concatenate(out)


def softmax_probabilities(classifier: torch.nn.Module, images, batch_size: int = 512) -> np.ndarray:
    """Softmax of the classifier's logits, (N, K) float64 (softmax taken in float64)."""
    return batched_outputs(classifier, lambda m, x: torch.softmax(m(x).double(), dim=1), images, batch_size)
