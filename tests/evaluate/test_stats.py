"""Statistical tests against scipy and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lesionlab.evaluate import metrics as M
from lesionlab.evaluate import stats as S


@pytest.mark.parametrize(("a", "b", "u", "p", "r"), [
    ([1, 2, 3], [4, 5, 6], 0.0, 0.1, -1.0),  # exact: 2 of C(6,3)=20 orderings as extreme
    ([4, 5, 6], [1, 2, 3], 9.0, 0.1, 1.0),
    ([1, 3, 5, 7], [2, 4, 6, 8], 6.0, None, -0.25),
])
def test_mann_whitney_hand(a: list[float], b: list[float], u: float, p: float | None, r: float) -> None:
    res = S.mann_whitney(a, b, names=("64px", "224px"))
    assert res.statistic == u and res.effect_size == pytest.approx(r)
    assert res.p_value == pytest.approx(p if p is not None else sps.mannwhitneyu(a, b).pvalue)
    assert res.n == {"64px": len(a), "224px": len(b)}


def test_mann_whitney_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(0.7, 0.05, 12), 2)
    b = np.round(rng.normal(0.65, 0.05, 9), 2)
    res = S.mann_whitney(a, b)
    ref = sps.mannwhitneyu(a, b)
    assert res.statistic == ref.statistic and res.p_value == pytest.approx(ref.pvalue)
    # rank-biserial equals P(a > b) - P(a < b) over all pairs
    diff = a[:, None] - b[None, :]
    assert res.effect_size == pytest.approx(np.mean(diff > 0) - np.mean(diff < 0))


def test_mann_whitney_rejects_undefined_values() -> None:
    with pytest.raises(S.StatsInputError, match="group 'with meta' has an undefined value at position 1"):
        S.mann_whitney([0.5, 0.6], [0.7, None, 0.8], names=("without", "with meta"))
    with pytest.raises(S.StatsInputError, match="group 'B' is empty"):
        S.mann_whitney([0.5], [])


def _paired(b: int, c: int, both: int = 5, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ra = np.r_[np.ones(b), np.zeros(c), np.ones(both), np.zeros(neither)].astype(bool)
    rb = np.r_[np.zeros(b), np.ones(c), np.ones(both), np.zeros(neither)].astype(bool)
    return ra, rb


@pytest.mark.parametrize(("b", "c", "stat_name", "stat", "p", "odds"), [
    (10, 2, "b", 10.0, 2 * (1 + 12 + 66) / 4096, 5.0),  # exact binomial, hand-computed
    (2, 10, "b", 2.0, 2 * (1 + 12 + 66) / 4096, 0.2),
    (30, 10, "chi2", 361 / 40, sps.chi2.sf(361 / 40, 1), 3.0),  # (|30-10|-1)^2/40
    (0, 0, "b", 0.0, 1.0, None),
    (4, 0, "b", 4.0, 2 / 16, None),
])
def test_mcnemar_hand(b: int, c: int, stat_name: str, stat: float, p: float, odds: float | None) -> None:
    ra, rb = _paired(b, c)
    res = S.mcnemar(ra, rb, names=("effnet", "mobilenet"))
    assert res.statistic_name == stat_name and res.statistic == pytest.approx(stat)
    assert res.p_value == pytest.approx(p)
    assert res.effect_size == (None if odds is None else pytest.approx(odds))
    assert res.n == {"paired images": b + c + 8, "discordant": b + c}
    if odds is None and c == 0:
        assert "odds ratio undefined" in str(res) or b == 0


def test_mcnemar_length_mismatch() -> None:
    with pytest.raises(S.StatsInputError, match="differ in length"):
        S.mcnemar([True, False], [True])


def _model(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(y.size, 7)) + skill * np.eye(7)[y]
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_paired_bootstrap_identical_models_no_difference() -> None:
    y = np.r_[np.arange(7), np.random.default_rng(0).integers(0, 7, 200)]
    p = _model(y, 1.0, 1)
    res = S.paired_bootstrap(y, p, p, M.balanced_accuracy, "balanced_accuracy", n=200)
    assert res.statistic == 0.0 and res.p_value == 1.0 and res.ci == (0.0, 0.0)


def test_paired_bootstrap_detects_a_better_model_and_is_seeded() -> None:
    y = np.r_[np.arange(7), np.random.default_rng(0).integers(0, 7, 300)]
    good, bad = _model(y, 3.0, 1), _model(y, 0.5, 2)
    res = S.paired_bootstrap(y, good, bad, M.balanced_accuracy, "balanced_accuracy", names=("good", "bad"), n=300)
    assert res.statistic == pytest.approx(M.balanced_accuracy(y, good) - M.balanced_accuracy(y, bad))
    assert res.ci[0] > 0 and res.p_value < 0.01 and res.p_value == pytest.approx(1 / 301)
    again = S.paired_bootstrap(y, good, bad, M.balanced_accuracy, "balanced_accuracy", names=("good", "bad"), n=300)
    assert again == res
    # a small, noisy difference is not significant
    near = S.paired_bootstrap(y, _model(y, 1.0, 5), _model(y, 1.0, 6), M.accuracy, "accuracy", n=300)
    assert near.ci[0] < 0 < near.ci[1] and near.p_value > 0.05


def test_paired_bootstrap_shape_mismatch() -> None:
    y = np.arange(7)
    with pytest.raises(S.StatsInputError, match="differ in shape"):
        S.paired_bootstrap(y, np.full((7, 7), 1 / 7), np.full((6, 7), 1 / 7), M.accuracy, "accuracy")


def test_str_names_test_statistic_p_sizes_and_effect() -> None:
    res = S.mann_whitney([0.80, 0.82, 0.81], [0.70, 0.72, 0.71], names=("224px", "64px"), label="balanced_accuracy")
    text = str(res)
    for part in ("balanced_accuracy:", "Mann-Whitney U (two-sided)", "U(224px) = 9", "p = 0.1",
                 "n: 224px = 3, 64px = 3", "rank-biserial r = 1"):
        assert part in text, (part, text)
    d = res.to_dict()
    assert d["text"] == text
    json.dumps(d, allow_nan=False)
    assert S.format_p(1e-7) == "p < 0.0001"


def test_holm_adjust() -> None:
    # sorted p: 0.01*3, 0.02*2, 0.04*1 -> 0.03, 0.04, 0.04 (monotone)
    assert S.holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert S.holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_compare_groups_within_models() -> None:
    rows = pd.DataFrame({
        "model": ["a"] * 6 + ["b"] * 6,
        "image_size": [64, 64, 64, 224, 224, 224] * 2,
        "balanced_accuracy": [0.5, 0.52, 0.51, 0.6, 0.61, 0.62, 0.4, 0.45, 0.42, 0.41, 0.44, 0.43],
    })
    results = S.compare_groups(rows, "balanced_accuracy", by="image_size", within=["model"])
    assert [r.label for r in results] == ["balanced_accuracy: image_size=64 vs image_size=224 (model=a)",
                                          "balanced_accuracy: image_size=64 vs image_size=224 (model=b)"]
    assert results[0].effect_size == -1.0
    assert results[0].detail["p_holm"] == pytest.approx(min(1.0, 2 * min(r.p_value for r in results)))
    with pytest.raises(S.StatsInputError, match="column 'seed' not in the runs table"):
        S.compare_groups(rows, "balanced_accuracy", by="seed")


def test_test_result_round_trip() -> None:
    y = np.r_[np.arange(7), np.random.default_rng(0).integers(0, 7, 100)]
    res = S.paired_bootstrap(y, _model(y, 2.0, 1), _model(y, 1.0, 2), M.accuracy, "accuracy", n=50)
    back = S.TestResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res and str(back) == str(res)
    with pytest.raises(S.StatsInputError, match="not a saved test result"):
        S.TestResult.from_dict({"test": "x"})
