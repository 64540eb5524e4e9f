"""Temperature scaling and the referral threshold."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.evaluate import calibration as C
from lesionlab.evaluate import metrics as M


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, factor: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), predictions softmax(factor * z): the right temperature is ``factor``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 7))
    true_p = _softmax(z)
    y = np.array([rng.choice(7, p=row) for row in true_p])
    return y, _softmax(factor * z)


@pytest.mark.parametrize("factor", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_distortion(factor: float) -> None:
    y, p = _overconfident(4000, factor, seed=int(factor * 10))
    fit = C.fit_temperature(y, p)
    assert fit["temperature"] == pytest.approx(factor, rel=0.1)
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9
    grid = np.linspace(0.3, 5, 400)
    best = grid[np.argmin([M.negative_log_likelihood(y, C.apply_temperature(p, t)) for t in grid])]
    assert fit["temperature"] == pytest.approx(best, abs=0.02)
    if factor == 3.0:
        assert fit["ece_after"] < fit["ece_before"] / 2


def test_apply_temperature_equals_scaled_logits_and_keeps_argmax() -> None:
    z = np.random.default_rng(0).normal(size=(50, 7)) * 3
    p = _softmax(z)
    for t in (0.5, 1.0, 2.5):
        q = C.apply_temperature(p, t)
        np.testing.assert_allclose(q, _softmax(z / t), atol=1e-10)
        np.testing.assert_array_equal(q.argmax(axis=1), p.argmax(axis=1))
    with pytest.raises(C.CalibrationError, match="positive"):
        C.apply_temperature(p, 0.0)


def test_fit_temperature_single_class_is_an_error() -> None:
    with pytest.raises(C.CalibrationError, match=r"single class \(nv\)"):
        C.fit_temperature(np.array([5, 5, 5]), np.full((3, 7), 1 / 7))


def _malignant_case() -> tuple[np.ndarray, np.ndarray]:
    # four malignant (mel) with malignant scores 0.9, 0.8, 0.3, 0.1 and three benign (nv) with 0.5, 0.2, 0.05
    scores = [0.9, 0.8, 0.3, 0.1, 0.5, 0.2, 0.05]
    y = np.array([4, 4, 4, 4, 5, 5, 5])
    p = np.zeros((7, 7))
    p[:, 4] = scores
    p[:, 5] = 1 - np.asarray(scores)
    return y, p


@pytest.mark.parametrize(("target", "threshold", "sens", "spec", "rate"), [
    (0.75, 0.3, 0.75, 2 / 3, 4 / 7),
    (0.90, 0.1, 1.0, 1 / 3, 6 / 7),
    (0.50, 0.8, 0.5, 1.0, 2 / 7),
    (1.00, 0.1, 1.0, 1 / 3, 6 / 7),
])
def test_referral_threshold_hand(target: float, threshold: float, sens: float, spec: float, rate: float) -> None:
    y, p = _malignant_case()
    fit = C.fit_referral_threshold(y, p, target_sensitivity=target)
    assert fit["threshold"] == pytest.approx(threshold)
    assert fit["val_sensitivity"] == pytest.approx(sens) and fit["val_sensitivity"] >= target
    assert fit["val_specificity"] == pytest.approx(spec)
    assert fit["val_referral_rate"] == pytest.approx(rate)
    assert fit["score"] == "sum of p(akiec, bcc, mel)"
    again = C.referral_rates(y, p, fit["threshold"])
    assert again["sensitivity"] == fit["val_sensitivity"] and again["referral_rate"] == pytest.approx(rate)
    # the melanomas are the malignant images here; the nevi referred are 1 - specificity of 3
    assert again["by_class"]["mel"]["referred"] == round(sens * 4) and again["by_class"]["mel"]["n"] == 4
    assert again["by_class"]["nv"] == {"referred": round((1 - spec) * 3), "n": 3, "rate": pytest.approx(1 - spec)}
    assert set(again["by_class"]) == {"mel", "nv"}  # classes without images are left out, not reported as 0


def test_referred_by_class_separates_malignant_classes() -> None:
    # two bcc both referred, two mel of which one referred: pooled sensitivity 3/4 hides melanoma's 1/2
    y = np.array([1, 1, 4, 4, 5])
    by = C.referred_by_class(y, np.array([True, True, True, False, False]))
    assert by["bcc"]["rate"] == 1.0 and by["mel"] == {"referred": 1, "n": 2, "rate": 0.5}
    assert by["nv"]["referred"] == 0


def test_referral_threshold_errors() -> None:
    with pytest.raises(C.CalibrationError, match="no malignant lesion"):
        C.fit_referral_threshold(np.array([5, 2]), np.full((2, 7), 1 / 7))
    with pytest.raises(C.CalibrationError, match="target sensitivity"):
        C.fit_referral_threshold(*_malignant_case(), target_sensitivity=0.0)
