"""The out-of-scope scores, the validation-fitted thresholds, the quality flags and the abstention margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlab.core.scope import (
    SCOPE_METHODS,
    ScopeError,
    ScopeGate,
    energy,
    fit_scope_gate,
    fit_uncertainty,
    load_gate,
    margins,
    quality_flags,
    quality_measures,
    save_gate_arrays,
    threshold_for,
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
