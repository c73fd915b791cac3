"""Robustness metrics: noise-aware verdicts, evaluator agreement, precision/recall, recovery under attack.

Verdicts with a "no class" evaluator (one output more than the classes, usually the last):
  UA_noise = 100 x fraction of images whose argmax is not the forgotten class ("no class" counts as forgotten),
  share    = 100 x fraction of images whose argmax is "no class",
  H        = mean over images of -sum_k p_k ln p_k over ALL K outputs (nats, 0 ln 0 = 0).

Agreement of two evaluators A, B on the forgotten class c:
  100 x fraction of images i with [argmax A_i == c] == [argmax B_i == c].

Improved precision and recall (Kynkaenniemi et al. 2019): with NN_k(x, S) the distance from x to its k-th nearest
neighbour in S \\ {x} (Euclidean), the manifold of S is the union of the closed balls B(s, NN_k(s, S)), s in S;
  precision = fraction of generated features inside the real manifold,
  recall    = fraction of real features inside the generated manifold.

Recovery under a relearning attack: the first step at which UA falls below a threshold (the forgotten class is
recognised again), None when it never does within the attack's budget (right-censored); the median over units
treats None as +inf.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy

from metrics.forgetting import _check_class, _check_probs

BLOCK_ELEMENTS = 1 << 22  # distance-matrix entries per block (32 MB in float64): memory stays linear in N


# --------------------------------------------------------------------------- classifier verdicts
def no_class_verdicts(probs, forget_class: int, no_class: int) -> dict:
    """Verdicts of an evaluator with an extra "no class" output (index `no_class`, usually the last).

    ua_noise_aware = 100 x mean(argmax != forget_class)   (an image judged "no class" counts as forgotten)
    no_class_share = 100 x mean(argmax == no_class)
    entropy        = mean_i -sum_k p_ik ln p_ik over all K outputs, "no class" included (nats)
    """
    p = _check_probs(probs)
    c = _check_class(forget_class, p.shape[1])
    z = _check_class(no_class, p.shape[1])
    if c == z:
        raise ValueError(f"forget_class and no_class must differ; both are {c}")
    top = p.argmax(axis=1)
    return {
        "ua_noise_aware": float(100.0 * np.mean(top != c)),
        "no_class_share": float(100.0 * np.mean(top == z)),
        "entropy": float(-xlogy(p, p).sum(axis=1).mean()),
    }


def ua_agreement(probs_a, probs_b, forget_class: int) -> float:
    """Percent of images on which two evaluators agree whether the image shows the forgotten class.

    agreement = 100 x mean_i ([argmax a_i == c] == [argmax b_i == c]). The evaluators may have different numbers
    of outputs (e.g. 10 classes, and 10 classes + "no class"); `forget_class` must be an output of both.
    """
    a, b = _check_probs(probs_a), _check_probs(probs_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"probs_a and probs_b must have the same number of rows (images); got {a.shape[0]} and {b.shape[0]}"
        )
    c = _check_class(forget_class, min(a.shape[1], b.shape[1]))
    return float(100.0 * np.mean((a.argmax(axis=1) == c) == (b.argmax(axis=1) == c)))


# --------------------------------------------------------------------------- precision and recall
def _check_feature_set(feats, name: str, k: int) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with D >= 1; got {f.shape}")
    if f.shape[0] <= k:
        raise ValueError(
            f"{name} has {f.shape[0]} rows; k={k} needs at least {k + 1} "
            f"(each point's k-th nearest neighbour among the others)"
        )
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _block_distances(x: np.ndarray, x_sq: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of x (a block) and y: sqrt(|x|^2 + |y|^2 - 2 x.y), clipped at 0."""
    d2 = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.clip(d2, 0.0, None, out=d2), out=d2)


def _block_rows(n_cols: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(n_cols, 1))


def _kth_neighbour_radii(x: np.ndarray, x_sq: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest neighbour among the OTHER rows."""
    n, step = len(x), _block_rows(len(x))
    radii = np.empty(n)
    for start in range(0, n, step):
        stop = min(start + step, n)
        d = _block_distances(x[start:stop], x_sq[start:stop], x, x_sq)
        d[np.arange(stop - start), np.arange(start, stop)] = np.inf  # the point itself is no neighbour
        radii[start:stop] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def precision_recall(real_features, generated_features, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of generated vs real (N, D) features.

    r_j = distance from real_j to its k-th nearest neighbour among the other real features, g_i likewise among
    the generated features;
      precision = mean_i [exists j: |gen_i - real_j| <= r_j],
      recall    = mean_j [exists i: |real_j - gen_i| <= g_i].
    Distances are computed block by block (about BLOCK_ELEMENTS entries at a time) in float64 on features centred
    on their joint mean (which leaves distances unchanged and limits round-off), so memory grows linearly in N.
    Returns {"precision": float in [0, 1], "recall": float in [0, 1]}.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1; got {k!r}")
    k = int(k)
    real = _check_feature_set(real_features, "real_features", k)
    gen = _check_feature_set(generated_features, "generated_features", k)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs generated {gen.shape[1]}")
    centre = (real.sum(axis=0) + gen.sum(axis=0)) / (len(real) + len(gen))
    real, gen = real - centre, gen - centre
    real_sq, gen_sq = _sq_norms(real), _sq_norms(gen)
    real_radii = _kth_neighbour_radii(real, real_sq, k)
    gen_radii = _kth_neighbour_radii(gen, gen_sq, k)

    gen_in_real = np.zeros(len(gen), dtype=bool)
    real_in_gen = np.zeros(len(real), dtype=bool)
    step = _block_rows(len(real))
    for start in range(0, len(gen), step):  # one pass over the cross distances serves both directions
        stop = min(start + step, len(gen))
        d = _block_distances(gen[start:stop], gen_sq[start:stop], real, real_sq)  # (block of gen, all real)
        gen_in_real[start:stop] = (d <= real_radii[None, :]).any(axis=1)
        real_in_gen |= (d <= gen_radii[start:stop, None]).any(axis=0)
    return {"precision": float(gen_in_real.mean()), "recall": float(real_in_gen.mean())}


# --------------------------------------------------------------------------- recovery under attack
def steps_to_recover(steps, uas, threshold: float = 50.0) -> float | None:
    """First step (steps strictly increasing) whose UA is below `threshold`: the forgotten class is recognised again.

    Returns None when no UA is below the threshold: the class did not come back within the attack's budget
    (a right-censored observation, see `median_steps_to_recover`).
    """
    s = np.asarray(steps, dtype=np.float64)
    u = np.asarray(uas, dtype=np.float64)
    if s.ndim != 1 or u.ndim != 1 or s.shape != u.shape:
        raise ValueError(f"steps and uas must be 1-D of the same length; got shapes {s.shape} and {u.shape}")
    if s.size == 0:
        raise ValueError("steps and uas are empty")
    if not (np.isfinite(s).all() and np.isfinite(u).all()):
        raise ValueError("steps or uas contain NaN or inf")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold!r}")
    if (np.diff(s) <= 0).any():
        raise ValueError(f"steps must be strictly increasing; got {s.tolist()}")
    below = np.flatnonzero(u < threshold)
    return float(s[below[0]]) if below.size else None


def median_steps_to_recover(values, budget: float) -> float:
    """Median number of steps to recover over units (seeds, classes), None meaning "not within `budget`".

    Convention: a censored unit (None) counts as +inf, i.e. longer than any observed value; the median is the middle
    order statistic (odd count) or the mean of the two middle ones (even count). It is therefore +inf exactly when
    at least half of the units are censored (n/2 or more for even n, more than n/2 for odd n), and finite
    otherwise: the finite values then fix it, whatever the censored units would have needed beyond the budget.
    Observed values must lie within the budget (<= budget); one beyond it should have been reported as None.
    """
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a finite number > 0; got {budget!r}")
    vals = list(values)
    if not vals:
        raise ValueError("values is empty")
    out = []
    for v in vals:
        if v is None:
            out.append(math.inf)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise ValueError(f"values must be finite numbers or None (censored); got {v!r}")
        if v > budget:
            raise ValueError(
                f"value {v} exceeds the budget {budget}; a unit that did not recover within the budget is None"
            )
        out.append(float(v))
    out.sort()
    n = len(out)
    if n % 2:
        return out[n // 2]
    return (out[n // 2 - 1] + out[n // 2]) / 2.0  # inf when the upper middle unit is censored
