"""The out-of-scope scores, the validation-fitted thresholds, the quality flags and the abstention margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlab.core.scope import (
    SCOPE_METHODS,
    DegradationCheck,
    ScopeError,
    ScopeGate,
    degradation_arrays,
    energy,
    fit_scope_gate,
    fit_uncertainty,
    load_degradation,
    load_gate,
    margins,
    quality_flags,
    quality_measures,
    save_degradation,
    save_gate_arrays,
    threshold_for,
    wilson_lower,
)


def _clusters(n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, 16) * 6
    return centres[labels] + rng.normal(0, 1, (n, 16)) + shift, labels


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_feature_gates_separate_far_features_and_keep_the_validation_share(method: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, train_y = _clusters(600, rng)
    val, _ = _clusters(400, rng)
    gate = fit_scope_gate(method, train, train_y, lambda g: g.score(val), max_false_rejection=0.05)
    assert gate.fit["val_false_rejection"] <= 0.05 and gate.fit["n_val"] == 400
    test, _ = _clusters(400, rng)
    far = rng.normal(0, 1, (100, 16)) * 3 + 12
    assert (~gate.in_scope(gate.score(test))).mean() < 0.12  # about the fitted share, on fresh data
    assert (~gate.in_scope(gate.score(far))).mean() > 0.95
    save_gate_arrays(tmp_path / "scope.safetensors", gate)
    again = load_gate(tmp_path / "scope.safetensors", gate.record())
    np.testing.assert_allclose(again.score(far), gate.score(far), rtol=1e-5)


def test_logit_scores_and_errors(tmp_path: Path) -> None:
    logits = np.array([[10.0, 0, 0], [0.1, 0, 0]])
    assert energy(logits)[0] < energy(logits)[1]  # a confident row is "closer"
    with pytest.raises(ScopeError, match="needs the logits"):
        ScopeGate("energy", 0.0).score(np.zeros((2, 3)))
    with pytest.raises(ScopeError, match="unknown scope method"):
        ScopeGate("cosine", 0.0).score(np.zeros((2, 3)))
    with pytest.raises(ScopeError, match="missing"):
        load_gate(tmp_path / "absent.safetensors", {"method": "mahalanobis", "threshold": 1.0})
    assert load_gate(tmp_path / "absent.safetensors", {"method": "energy", "threshold": -3}).threshold == -3
    assert set(SCOPE_METHODS) == {"mahalanobis", "knn", "energy", "msp"}


@pytest.mark.parametrize(("share", "expected_rejected"), [(0.0, 0), (0.05, 5), (0.1, 10)])
def test_threshold_rejects_at_most_the_asked_share(share: float, expected_rejected: int) -> None:
    scores = np.arange(100, dtype=float)
    t = threshold_for(scores, share)
    assert int((scores > t).sum()) == expected_rejected


@pytest.mark.parametrize(("pixels", "flags"), [
    (np.full((64, 64, 3), 5, np.uint8), ["too_dark", "blurred", "one_colour"]),
    (np.full((64, 64, 3), 250, np.uint8), ["too_bright", "blurred", "one_colour"]),
    (np.full((64, 64, 3), (200, 120, 110), np.uint8), ["blurred", "one_colour"]),
    (np.random.default_rng(0).integers(60, 200, (64, 64, 3)).astype(np.uint8), []),
])
def test_quality_flags(pixels: np.ndarray, flags: list[str]) -> None:
    assert quality_flags(quality_measures(pixels)) == flags


def test_uncertainty_threshold_marks_the_band_where_the_model_is_mostly_wrong() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 3, n)
    confident = rng.random(n) < 0.7
    proba = np.full((n, 3), 0.0)
    pred = np.where(confident, y, rng.integers(0, 3, n))  # the unsure third is right a third of the time
    proba[np.arange(n), pred] = np.where(confident, 0.9, 0.4)
    proba[np.arange(n), (pred + 1) % 3] = np.where(confident, 0.05, 0.35)
    proba[np.arange(n), (pred + 2) % 3] = np.where(confident, 0.05, 0.25)
    fit = fit_uncertainty(y, proba)
    assert 0.05 < fit["threshold"] <= 0.85
    flagged = margins(proba) < fit["threshold"]
    assert flagged[~confident].all() and not flagged[confident].any()
    assert fit["val_accuracy_uncertain"] <= 0.5 < fit["val_accuracy_certain"]


def test_wilson_lower_bound_matches_scipy() -> None:
    from scipy.stats import binomtest

    k, n = np.array([0, 3, 31, 60, 95]), np.array([5, 10, 60, 60, 100])
    # a one-sided 95% bound is the lower end of the two-sided 90% interval
    expected = [binomtest(int(a), int(b)).proportion_ci(0.90, method="wilson").low for a, b in zip(k, n, strict=True)]
    np.testing.assert_allclose(wilson_lower(k, n, 0.95), expected, atol=1e-12)


def test_uncertainty_band_is_not_decided_by_a_few_lucky_images() -> None:
    """The lowest-margin band right 52% of the time, its first images right: the band's plain accuracy never reaches
    0.5, so a point rule never abstains; the bound keeps the band uncertain, and stops where accuracy is shown."""
    band = np.array([1, 1] + [1, 0] * 29, dtype=bool)  # 31 of 60 right, always ahead
    correct = np.r_[band, np.ones(400, dtype=bool)]
    margin = np.r_[np.linspace(0.01, 0.3, band.size), np.linspace(0.5, 0.99, 400)]
    y = np.zeros(correct.size, dtype=np.int64)
    proba = np.zeros((correct.size, 3))
    top = np.where(correct, 0, 1)  # the predicted class; the truth is class 0
    proba[np.arange(correct.size), top] = (1 + margin) / 2
    proba[np.arange(correct.size), 2] = (1 - margin) / 2
    assert fit_uncertainty(y, proba, confidence=0.5)["threshold"] == 0.0  # z = 0: the plain accuracy rule
    fit = fit_uncertainty(y, proba)
    flagged = margins(proba) < fit["threshold"]
    assert flagged[: band.size].all() and fit["val_uncertain_rate"] < 0.5  # the band, and not the confident bulk
    assert fit["confidence"] == 0.95 and "Wilson" in fit["rule"]


def _detector(threshold: float = 0.5) -> DegradationCheck:
    return DegradationCheck(threshold, degradation_arrays(np.array([1.0, 2.0, 0.0]), np.array([2.0, 1.0, 0.0]),
                                                          np.array([[1.0, -1.0, 5.0]]), -0.5), {"C": 0.01})


def test_degradation_score_is_the_standardised_linear_log_odds(tmp_path: Path) -> None:
    check = _detector()
    x = np.array([[3.0, 2.0, 7.0], [1.0, 4.0, 7.0]])
    # ((3-1)/2)*1 + ((2-2)/1)*-1 + (7-0)/1*5 - 0.5: a constant feature keeps scale 1 instead of dividing by 0
    np.testing.assert_allclose(check.score(x), [1.0 + 35.0 - 0.5, 0.0 - 2.0 + 35.0 - 0.5])
    assert check.degraded(np.array([0.5, 0.6])).tolist() == [False, True]  # above the threshold is degraded
    path = save_degradation(tmp_path / "degradation.safetensors", check)
    again = load_degradation(path, check.record())
    np.testing.assert_allclose(again.score(x), check.score(x), rtol=1e-6)
    assert again.threshold == 0.5 and again.fit == {"C": 0.01}
    with pytest.raises(ScopeError, match="reads 3 features per image, got shape"):
        check.score(np.zeros((2, 4)))


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(arrays, str(path))
    return path


@pytest.mark.parametrize(("make", "record", "message"), [
    (lambda p: p, {"threshold": 1.0}, "missing"),
    (lambda p: p.write_bytes(b"\x00" * 20) and p, {"threshold": 1.0}, "cannot read the degradation detector"),
    (lambda p: _write_arrays(p, {"mean": np.zeros(3, np.float32)}), {"threshold": 1.0},
     "lacks scale, coef, intercept"),
    (lambda p: _write_arrays(p, {"mean": np.zeros(3, np.float32), "scale": np.ones(3, np.float32),
                                 "coef": np.ones(4, np.float32), "intercept": np.zeros(1, np.float32)}),
     {"threshold": 1.0}, "disagree in size"),
    (lambda p: p, {"threshold": "high"}, "needs a threshold"),
])
def test_a_bad_degradation_file_is_refused_by_name(tmp_path: Path, make: object, record: dict, message: str) -> None:
    path = tmp_path / "degradation.safetensors"
    make(path)  # type: ignore[operator]
    with pytest.raises(ScopeError, match=message) as err:
        load_degradation(path, record)
    assert message == "needs a threshold" or "degradation.safetensors" in str(err.value)
