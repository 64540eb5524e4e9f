"""FD, KID, improved precision/recall and helpers, against closed forms and simple cases."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.synth.fidelity import (
    class_weights,
    fd,
    frechet_distance,
    kid,
    pairwise_min,
    pixelate,
    precision_recall,
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
