"""The degradation check's fitting: the detector, its validation threshold and its training copies."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.data.corruptions import CORRUPTION_NAMES
from lesionlab.evaluate.scope import degraded_copies, fit_degradation


def _features(n: int, rng: np.random.Generator, degraded: bool = False) -> np.ndarray:
    x = rng.normal(0, 1, (n, 24)) + np.linspace(0, 3, 24)
    if degraded:  # as a blur does: the high-frequency units fade, one unit rises
        x[:, :8] *= 0.3
        x[:, 8] += 5.0
    return x


@pytest.mark.parametrize("share", [0.02, 0.05])
def test_the_detector_keeps_the_validation_share_and_catches_degraded_features(share: float) -> None:
    rng = np.random.default_rng(0)
    val = _features(400, rng)
    check = fit_degradation(_features(800, rng), _features(800, rng, degraded=True), val, share)
    assert check.degraded(check.score(val)).mean() <= share  # the threshold: all but the share of validation
    fresh_clean = check.degraded(check.score(_features(2000, rng)))
    fresh_degraded = check.degraded(check.score(_features(2000, rng, degraded=True)))
    assert fresh_clean.mean() < share + 0.03  # about the fitted share, on images it never saw
    assert fresh_degraded.mean() > 0.95
    assert check.arrays["coef"].shape == (24,) and check.arrays["intercept"].shape == (1,)


def test_degraded_copies_are_seeded_one_per_image_and_change_the_pixels() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(30)]
    copies, names, levels = degraded_copies(images, seed=3)
    again, names2, levels2 = degraded_copies(images, seed=3)
    other, _, _ = degraded_copies(images, seed=4)
    assert len(copies) == 30 and all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in copies)
    assert all(np.array_equal(a, b) for a, b in zip(copies, again, strict=True))
    assert names.tolist() == names2.tolist() and levels.tolist() == levels2.tolist()
    assert set(levels.tolist()) <= {1, 2, 3, 4, 5} and names.max() < len(CORRUPTION_NAMES)
    assert len(set(names.tolist())) > 5  # spread over the corruptions
    assert sum(not np.array_equal(a, b) for a, b in zip(copies, images, strict=True)) >= 25
    assert sum(not np.array_equal(a, b) for a, b in zip(copies, other, strict=True)) >= 25
