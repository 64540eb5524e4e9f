"""FD, KID, improved precision/recall and helpers, against closed forms and simple cases."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.synth.fidelity import (
    Reference,
    class_weights,
    fd,
    fd_to,
    frechet_distance,
    kid,
    kid_to,
    pairwise_min,
    pixelate,
    precision_recall,
    precision_recall_to,
    upsample_nearest,
    weighted_stats,
)


def test_frechet_distance_closed_form() -> None:
    """Diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations."""
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = (1 + 4) + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected)


def test_fd_is_zero_for_the_same_set_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    assert fd(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fd(x, x + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)


def test_weights_equal_duplication() -> None:
    """Weight 2 on a row is the same as that row twice (for the mean and, asymptotically, the covariance)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    w = np.ones(50)
    w[:10] = 2.0
    mu_w, _ = weighted_stats(x, w)
    mu_d, _ = weighted_stats(np.concatenate([x, x[:10]]))
    assert np.allclose(mu_w, mu_d)


def test_class_weights_give_each_class_the_same_total() -> None:
    labels = np.array([0, 0, 0, 5, 6, 6])
    w = class_weights(labels)
    assert w.sum() == pytest.approx(1.0)
    assert w[labels == 0].sum() == pytest.approx(1 / 3) and w[labels == 5].sum() == pytest.approx(1 / 3)


def test_kid_near_zero_for_one_distribution_positive_for_two() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert abs(kid(a, b)) < 0.05
    assert kid(a, b + 1.5) > 0.5


def test_precision_recall_extremes() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 4))
    same = rng.normal(size=(200, 4))
    p, r = precision_recall(real, same, k=3)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, same + 50.0, k=3)
    assert p == 0.0 and r == 0.0
    collapsed = np.repeat(real[:1], 200, axis=0) + rng.normal(scale=1e-3, size=(200, 4))
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.1  # faithful but not diverse


def _kid_by_pairs(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> float:
    """The weighted unbiased estimator written out pair by pair (small sets only)."""
    d = a.shape[1]

    def k(x: np.ndarray, y: np.ndarray) -> float:
        return (x @ y / d + 1.0) ** 3

    def within(x: np.ndarray, w: np.ndarray) -> float:
        p = w / w.sum()
        pairs = [(i, j) for i in range(len(x)) for j in range(len(x)) if i != j]
        return sum(p[i] * p[j] * k(x[i], x[j]) for i, j in pairs) / sum(p[i] * p[j] for i, j in pairs)

    pa, pb = wa / wa.sum(), wb / wb.sum()
    cross = sum(pa[i] * pb[j] * k(a[i], b[j]) for i in range(len(a)) for j in range(len(b)))
    return within(a, wa) + within(b, wb) - 2.0 * cross


def _pr_by_loops(real: np.ndarray, fake: np.ndarray, k: int, w_real: np.ndarray, w_fake: np.ndarray
                 ) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        dist = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(dist, axis=1)[:, k]  # column 0 is the sample itself

    def share(points: np.ndarray, centres: np.ndarray, rad: np.ndarray, w: np.ndarray) -> float:
        inside = (np.linalg.norm(points[:, None] - centres[None], axis=2) <= rad[None]).any(axis=1)
        return float(w @ inside / w.sum())

    return share(fake, real, radii(real), w_fake), share(real, fake, radii(fake), w_real)


@pytest.mark.parametrize("shift", [0.0, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_a_reference_compared_with_several_sets_equals_the_two_set_measures(shift: float, weighted: bool) -> None:
    """One Reference, three sets: FD and KID equal the two-set forms in the other argument order and the pairwise
    estimator; precision and recall equal a brute-force count; the reference's statistics are computed once."""
    rng = np.random.default_rng(7)
    real = rng.normal(size=(14, 5))
    w_real = rng.uniform(0.5, 2.0, size=14) if weighted else np.ones(14)
    ref = Reference(real, w_real)
    for n in (9, 12, 15):
        x = rng.normal(size=(n, 5)) * 1.3 + shift
        w = rng.uniform(0.5, 2.0, size=n) if weighted else np.ones(n)
        assert fd_to(ref, x, w) == pytest.approx(fd(x, real, w, w_real), rel=1e-9, abs=1e-9)
        assert fd_to(ref, x, w) == pytest.approx(frechet_distance(*weighted_stats(x, w), *weighted_stats(real, w_real)),
                                                 rel=1e-9, abs=1e-9)
        assert kid_to(ref, x, w) == pytest.approx(_kid_by_pairs(real, w_real, x, w), rel=1e-9, abs=1e-12)
        assert kid_to(ref, x, w) == pytest.approx(kid(x, real, w, w_real), rel=1e-9, abs=1e-12)
        assert precision_recall_to(ref, x, 3, w) == pytest.approx(_pr_by_loops(real, x, 3, w_real, w))
    assert ref.cov_sqrt is ref.cov_sqrt and ref.radii(3) is ref.radii(3)
    assert not np.array_equal(ref.radii(2), ref.radii(3))


def test_nearest_neighbours() -> None:
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    d, i = pairwise_min(np.array([[1.0, 0.0], [9.0, 0.0]]), ref)
    assert i.tolist() == [0, 1] and np.allclose(d, [1.0, 1.0])


def test_pixelate_and_upsample() -> None:
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    pix = pixelate(img, 2)
    assert pix.shape == img.shape and np.all(pix[:, 0, 0] == pix[:, 1, 1])
    up = upsample_nearest(img[:, :2, :2], 4)
    assert up.shape == (2, 4, 4, 3) and np.all(up[:, 1, 1] == img[:, 0, 0])
    with pytest.raises(ValueError, match="not divisible"):
        pixelate(img, 3)


@pytest.mark.parametrize(("n_a", "n_b", "dim"), [
    (400, 300, 32),  # full-rank covariances
    (20, 25, 48),  # fewer samples than features: singular covariances, as for small sets of 1,280-d features
])
def test_frechet_distance_matches_the_general_matrix_square_root(n_a: int, n_b: int, dim: int) -> None:
    """The eigendecomposition form equals ``tr(sqrtm(C1 C2))`` of the textbook formula (Heusel et al. 2017)."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    a = rng.normal(size=(n_a, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(n_b, dim)) @ rng.normal(size=(dim, dim)) + 0.5
    (mu1, c1), (mu2, c2) = weighted_stats(a), weighted_stats(b)
    textbook = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(c1) + np.trace(c2)
                     - 2.0 * np.trace(np.real(linalg.sqrtm(c1 @ c2))))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(textbook, rel=1e-6)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(textbook, rel=1e-6)  # symmetric
