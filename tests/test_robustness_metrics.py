"""Robustness metrics against hand-counted examples, pure-Python brute force and scikit-learn."""

import math

import numpy as np
import pytest

import metrics
from metrics import robustness as R

# Evaluator with 3 classes + "no class" (index 3); argmax per row noted.
PROBS_NC = np.array(
    [
        [0.70, 0.10, 0.10, 0.10],  # 0 (the forgotten class)
        [0.10, 0.10, 0.10, 0.70],  # 3 no class
        [0.25, 0.25, 0.25, 0.25],  # 0 (ties go to the first index, as np.argmax)
        [0.00, 1.00, 0.00, 0.00],  # 1
        [0.20, 0.00, 0.00, 0.80],
    ]
)  # 3 no class


# --------------------------------------------------------------------------- verdicts
def test_no_class_verdicts_hand_counted():
    v = R.no_class_verdicts(PROBS_NC, forget_class=0, no_class=3)
    assert set(v) == {"ua_noise_aware", "no_class_share", "entropy"}
    assert v["ua_noise_aware"] == pytest.approx(60.0)  # rows 1, 3, 4 are not class 0
    assert v["no_class_share"] == pytest.approx(40.0)  # rows 1, 4
    row_h = [
        -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)),
        -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)),
        math.log(4),
        0.0,
        -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)),
    ]
    assert v["entropy"] == pytest.approx(sum(row_h) / 5)
    v1 = R.no_class_verdicts(PROBS_NC, forget_class=1, no_class=3)
    assert v1["ua_noise_aware"] == pytest.approx(80.0)  # only row 3 is class 1
    assert v1["no_class_share"] == pytest.approx(40.0)
    assert metrics.no_class_verdicts is R.no_class_verdicts


def test_no_class_verdicts_validation():
    with pytest.raises(ValueError, match="must differ"):
        R.no_class_verdicts(PROBS_NC, 3, 3)
    with pytest.raises(ValueError, match="class index"):
        R.no_class_verdicts(PROBS_NC, 0, 4)
    with pytest.raises(ValueError, match="class index"):
        R.no_class_verdicts(PROBS_NC, -1, 3)
    with pytest.raises(ValueError, match="class index"):
        R.no_class_verdicts(PROBS_NC, 1.0, 3)
    with pytest.raises(ValueError, match="do not sum to 1"):
        R.no_class_verdicts(np.ones((2, 4)), 0, 3)
    with pytest.raises(ValueError, match="shape"):
        R.no_class_verdicts(np.full(4, 0.25), 0, 3)


def test_ua_agreement_hand_counted():
    ten = np.full((5, 3), 0.1)  # a 3-class evaluator; argmax per row set below
    for i, top in enumerate([0, 0, 1, 2, 0]):
        ten[i, top] = 0.8
    # PROBS_NC (3 classes + no class) has argmax 0, 3, 0, 1, 3
    # class 0: ten says [T, T, F, F, T], nc says [T, F, T, F, F] -> agree on rows 0, 3 -> 40 %
    assert R.ua_agreement(ten, PROBS_NC, 0) == pytest.approx(40.0)
    assert R.ua_agreement(PROBS_NC, ten, 0) == pytest.approx(40.0)
    # class 1: ten [F, F, T, F, F], nc [F, F, F, T, F] -> agree on rows 0, 1, 4 -> 60 %
    assert R.ua_agreement(ten, PROBS_NC, 1) == pytest.approx(60.0)
    # class 2: ten [F, F, F, T, F], nc never -> agree on 4 of 5
    assert R.ua_agreement(ten, PROBS_NC, 2) == pytest.approx(80.0)
    assert R.ua_agreement(PROBS_NC, PROBS_NC, 0) == 100.0


def test_ua_agreement_validation():
    with pytest.raises(ValueError, match="same number of rows"):
        R.ua_agreement(PROBS_NC, PROBS_NC[:3], 0)
    with pytest.raises(ValueError, match="class index"):  # class 3 exists only in the 4-output evaluator
        R.ua_agreement(np.full((5, 3), 1 / 3), PROBS_NC, 3)
    with pytest.raises(ValueError, match="NaN"):
        R.ua_agreement(np.full((5, 4), np.nan), PROBS_NC, 0)


# --------------------------------------------------------------------------- precision and recall
def brute_precision_recall(real, gen, k):
    """Pure-Python double loops over math.dist."""
    real, gen = [list(map(float, r)) for r in real], [list(map(float, g)) for g in gen]

    def radii(points):
        out = []
        for i, p in enumerate(points):
            ds = sorted(math.dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(ds[k - 1])
        return out

    def covered(queries, points, rad):
        return sum(any(math.dist(q, p) <= r for p, r in zip(points, rad)) for q in queries) / len(queries)

    return covered(gen, real, radii(real)), covered(real, gen, radii(gen))


@pytest.mark.parametrize("k,n_real,n_gen,shift", [(1, 25, 30, 0.5), (3, 40, 33, 1.0), (5, 30, 45, 0.0)])
def test_precision_recall_matches_brute_force(k, n_real, n_gen, shift):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(n_real, 5))
    gen = rng.normal(size=(n_gen, 5)) * 1.3 + shift
    pr = R.precision_recall(real, gen, k=k)
    p, r = brute_precision_recall(real, gen, k)
    assert pr == {"precision": pytest.approx(p), "recall": pytest.approx(r)}
    assert 0.0 < pr["precision"] < 1.0 or 0.0 < pr["recall"] < 1.0  # a case that is not trivial


def test_precision_recall_blocks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(7)
    real, gen = rng.normal(size=(37, 4)), rng.normal(size=(29, 4)) + 0.7
    whole = R.precision_recall(real, gen, k=2)
    monkeypatch.setattr(R, "BLOCK_ELEMENTS", 50)  # blocks of 1 or 2 rows, last block partial
    assert R.precision_recall(real, gen, k=2) == whole
    assert whole == dict(zip(("precision", "recall"), map(pytest.approx, brute_precision_recall(real, gen, 2))))


def test_precision_recall_hand_made_1d_with_boundary():
    # real 0, 1, 2, 3, 9 (k=1 radii 1, 1, 1, 1, 6); generated -1, 1.5, 4, 5 (radii 2.5, 2.5, 1, 1)
    real = np.array([[0.0], [1.0], [2.0], [3.0], [9.0]])
    gen = np.array([[-1.0], [1.5], [4.0], [5.0]])
    # -1 lies exactly on the ball of 0 (distance 1 = radius 1: inside); 5 is inside only the ball of 9
    # real 9 is 4 from the generated 5 (radius 1): the only real point outside the generated manifold
    assert R.precision_recall(real, gen, k=1) == {"precision": 1.0, "recall": 0.8}
    gen[0, 0] = -1.001  # just off the ball of 0
    assert R.precision_recall(real, gen, k=1) == {"precision": 0.75, "recall": 0.8}


def test_precision_recall_closed_cases():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 8))
    assert R.precision_recall(real, real.copy(), k=3) == {"precision": 1.0, "recall": 1.0}
    far = rng.normal(size=(50, 8)) + 100.0
    assert R.precision_recall(real, far, k=3) == {"precision": 0.0, "recall": 0.0}
    # a large shift of both sets changes nothing (distances are translation invariant)
    gen = rng.normal(size=(45, 8)) + 0.5
    assert R.precision_recall(real + 1e4, gen + 1e4) == R.precision_recall(real, gen)


def test_precision_recall_against_sklearn():
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 16))
    gen = rng.normal(size=(300, 16)) * 1.2 + 0.3
    k = 3

    def radii(x):  # neighbour 0 is the point itself (no duplicates in continuous random data)
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]

    d = pairwise_distances(gen, real)  # (gen, real)
    precision = np.mean((d <= radii(real)[None, :]).any(axis=1))
    recall = np.mean((d <= radii(gen)[:, None]).any(axis=0))
    pr = metrics.precision_recall(real, gen, k=k)
    assert pr["precision"] == pytest.approx(precision)
    assert pr["recall"] == pytest.approx(recall)
    assert 0.1 < pr["precision"] < 0.99 and 0.1 < pr["recall"] < 0.99


def test_precision_recall_validation():
    a = np.zeros((4, 3))
    with pytest.raises(ValueError, match="generated_features has 3 rows; k=3 needs at least 4"):
        R.precision_recall(a, a[:3], k=3)
    with pytest.raises(ValueError, match="real_features has 4 rows; k=5 needs at least 6"):
        R.precision_recall(a, np.zeros((10, 3)), k=5)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        R.precision_recall(a, np.zeros((4, 2)), k=1)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        R.precision_recall(np.zeros(5), a, k=1)
    bad = a.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        R.precision_recall(a, bad, k=1)
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match="k must be an int"):
            R.precision_recall(a, a, k=k)


# --------------------------------------------------------------------------- recovery under attack
def test_steps_to_recover():
    steps = [0, 100, 200, 400, 800]
    assert R.steps_to_recover(steps, [99.0, 90.0, 49.0, 10.0, 60.0]) == 200.0
    assert R.steps_to_recover(steps, [99.0, 90.0, 50.0, 51.0, 60.0]) is None  # 50 is not below 50: censored
    assert R.steps_to_recover(steps, [99.0, 90.0, 50.0, 51.0, 60.0], threshold=50.5) == 200.0
    assert R.steps_to_recover(steps, [10.0, 90.0, 40.0, 10.0, 0.0]) == 0.0  # recognised from the start
    assert R.steps_to_recover([5], [100.0]) is None
    assert isinstance(R.steps_to_recover(np.array([1, 2]), np.array([70.0, 20.0])), float)


def test_steps_to_recover_validation():
    with pytest.raises(ValueError, match="same length"):
        R.steps_to_recover([1, 2, 3], [90.0, 80.0])
    with pytest.raises(ValueError, match="empty"):
        R.steps_to_recover([], [])
    with pytest.raises(ValueError, match="strictly increasing"):
        R.steps_to_recover([0, 100, 100], [90.0, 80.0, 10.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        R.steps_to_recover([200, 100], [90.0, 10.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        R.steps_to_recover([0, 1], [90.0, np.nan])


def test_median_steps_to_recover():
    med = R.median_steps_to_recover
    assert med([300.0, 100.0, 200.0], budget=1000) == 200.0
    assert med([400.0, 100.0, 200.0, 300.0], budget=1000) == 250.0
    assert med([100.0, None, 300.0], budget=1000) == 300.0  # 1 of 3 censored: still finite
    assert med([100.0, None, None], budget=1000) == math.inf  # 2 of 3 censored
    assert med([100.0, 200.0, None, 50.0], budget=1000) == 150.0  # 1 of 4 censored
    assert med([100.0, 200.0, None, None], budget=1000) == math.inf  # exactly half of 4 censored
    assert med([None], budget=1000) == math.inf
    assert med([1000], budget=1000) == 1000.0  # at the budget counts as recovered
    steps = [0, 10, 20]
    units = [R.steps_to_recover(steps, uas) for uas in ([90, 40, 10], [90, 90, 90], [30, 20, 10])]
    assert units == [10.0, None, 0.0] and med(units, budget=20) == 10.0


def test_median_steps_to_recover_validation():
    with pytest.raises(ValueError, match="empty"):
        R.median_steps_to_recover([], budget=10)
    with pytest.raises(ValueError, match="exceeds the budget"):
        R.median_steps_to_recover([5.0, 11.0], budget=10)
    with pytest.raises(ValueError, match="finite numbers or None"):
        R.median_steps_to_recover([5.0, float("nan")], budget=10)
    with pytest.raises(ValueError, match="finite numbers or None"):
        R.median_steps_to_recover([5.0, math.inf], budget=10)
    with pytest.raises(ValueError, match="budget must be"):
        R.median_steps_to_recover([5.0], budget=0)
