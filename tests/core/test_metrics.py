"""Metrics against scikit-learn on small hand cases, and the undefined-value conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from lesionlab.classes import CLASS_CODES
from lesionlab.core import metrics as M


def _onehotish(pred: list[int], k: int, conf: float = 0.7) -> np.ndarray:
    """Probabilities whose arg-max is ``pred``, the rest spread evenly."""
    p = np.full((len(pred), k), (1.0 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def _random_case(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    k = 7
    if name == "perfect":
        y = np.array([0, 1, 2, 3, 4, 5, 6, 5, 5])
        return y, _onehotish(list(y), k)
    if name == "random":
        return _random_case(120, k, 0)
    if name == "ties":  # every row uniform: arg-max is class 0, AUCs are 0.5
        y = np.array([0, 1, 2, 3, 4, 5, 6, 6])
        return y, np.full((8, k), 1 / k)
    if name == "df_absent_but_predicted":
        y = np.array([0, 1, 2, 4, 5, 6, 5, 5, 2])
        return y, _onehotish([0, 3, 2, 4, 5, 6, 3, 5, 1], k)
    if name == "never_predicted":
        y = np.array([0, 1, 2, 3, 4, 5, 6, 5])
        return y, _onehotish([0, 1, 2, 5, 4, 5, 5, 5], k)
    if name == "coarse_scores":  # heavy ties inside the probability columns
        y = np.array([0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 6, 6])
        p = np.round(_random_case(12, k, 3)[1], 1) + 1e-3
        return y, p / p.sum(axis=1, keepdims=True)
    raise KeyError(name)


CASES = ["perfect", "random", "ties", "df_absent_but_predicted", "never_predicted", "coarse_scores"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("name", CASES)
def test_against_sklearn(name: str) -> None:
    y, p = _case(name)
    k = p.shape[1]
    labels = list(range(k))
    pred = p.argmax(axis=1)
    present = sorted(set(y.tolist()))
    m = M.compute_metrics(y, p)

    np.testing.assert_array_equal(M.confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=labels))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["error_rate"] == pytest.approx(1 - skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=present, average="macro"))
    assert m["nll"] == pytest.approx(skm.log_loss(y, p, labels=labels))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=labels, scale_by_half=False))

    recall = skm.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    precision = skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    f1 = skm.f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    aucs, aps = [], []
    for i, code in enumerate(CLASS_CODES):
        pc = m["per_class"][code]
        truth = (y == i).astype(int)
        neg = 1 - truth
        for ours, ref in [(pc["tpr"], recall[i]), (pc["precision"], precision[i]), (pc["f1"], f1[i])]:
            assert (ours is None) == bool(np.isnan(ref)), (code, ours, ref)
            if ours is not None:
                assert ours == pytest.approx(ref)
        tnr = skm.recall_score(neg, (pred != i).astype(int), zero_division=np.nan)
        assert (pc["tnr"] is None) == bool(np.isnan(tnr))
        if pc["tnr"] is not None:
            assert pc["tnr"] == pytest.approx(tnr)
            if pc["tpr"] is not None:
                assert pc["gmean"] == pytest.approx(np.sqrt(pc["tpr"] * tnr))
        if 0 < truth.sum() < truth.size:
            ref_auc = skm.roc_auc_score(truth, p[:, i])
            assert pc["auc"] == pytest.approx(ref_auc)
            aucs.append(ref_auc)
        else:
            assert pc["auc"] is None and f"per_class.{code}.auc" in m["undefined"]
        if truth.sum() > 0:
            ref_ap = skm.average_precision_score(truth, p[:, i])
            assert pc["ap"] == pytest.approx(ref_ap)
            aps.append(ref_ap)
        else:
            assert pc["ap"] is None
    assert m["macro_auc"] == pytest.approx(np.mean(aucs))
    assert m["macro_ap"] == pytest.approx(np.mean(aps))
    if len(present) == k:
        assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    json.dumps(m, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_absent_class_is_reported_as_undefined_not_zero() -> None:
    y, p = _case("df_absent_but_predicted")
    m = M.compute_metrics(y, p)
    assert m["absent_classes"] == ["df"]
    df = m["per_class"]["df"]
    assert df["support"] == 0 and df["tpr"] is None and df["auc"] is None and df["gmean"] is None
    assert m["undefined"]["per_class.df.tpr"] == "class df absent from y_true"
    assert df["precision"] == 0.0  # predicted twice, never right: a defined zero
    assert m["confusion_matrix"]["normalized"][3] is None
    assert "confusion_matrix.normalized.df" in m["undefined"]
    assert any("df" in note for note in m["notes"])


def test_never_predicted_precision_undefined() -> None:
    y, p = _case("never_predicted")
    m = M.compute_metrics(y, p)
    assert m["per_class"]["df"]["precision"] is None
    assert m["undefined"]["per_class.df.precision"] == "class df never predicted"
    assert m["per_class"]["df"]["tpr"] == 0.0


def test_single_class_sample_macro_auc_undefined() -> None:
    y = np.array([5, 5, 5])
    m = M.compute_metrics(y, _onehotish([5, 5, 1], 7))
    assert m["macro_auc"] is None and m["undefined"]["macro_auc"] == "undefined for every class"
    assert m["per_class"]["nv"]["tnr"] is None
    assert m["malignant"]["sensitivity"] is None and m["malignant"]["specificity"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("seed", "n", "levels"), [(0, 40, 0), (1, 300, 0), (2, 300, 5), (3, 908, 3), (4, 12, 2)])
def test_ovr_auc_equals_sklearn_with_and_without_ties(seed: int, n: int, levels: int) -> None:
    """The mid-rank U statistic is scikit-learn's AUC (ties one half), also on coarse scores full of ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, size=n)
    p = rng.dirichlet(np.ones(7), size=n)
    if levels:  # few distinct values per column: most pairs tie
        p = np.round(p * levels) / levels
    got = M.ovr_auc(y, p)
    for k in range(7):
        truth = y == k
        if 0 < truth.sum() < n:
            assert got[k] == pytest.approx(skm.roc_auc_score(truth, p[:, k]), abs=1e-12)
        else:
            assert np.isnan(got[k])


@pytest.mark.parametrize(("y", "pred", "match"), [
    ([0, 1, 7], [0, 1, 2], "row 2: label 7"),
    ([0, 1, 2], [0, -1, 2], "row 1: label 1 / prediction -1"),
    ([0, 1], [0, 1, 2], "2 labels but y_pred has 3"),
])
def test_confusion_matrix_refuses_labels_outside_the_classes(y: list[int], pred: list[int], match: str) -> None:
    with pytest.raises(M.MetricsInputError, match=match):
        M.confusion_matrix(np.array(y), np.array(pred), 7)


def test_ece_hand_computed() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8667, 0.9333] acc 0.5 conf 0.9; (0.5333, 0.6] acc 1.
    y = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.6)
    assert M.expected_calibration_error(y, p) == pytest.approx(expected)
    bins = M.reliability_bins(y, p)
    assert bins["count"].sum() == 3 and bins["count"][13] == 2 and bins["count"][8] == 1
    assert M.expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_malignant_block() -> None:
    y = np.array([4, 4, 5, 5, 1])  # mel, mel, nv, nv, bcc
    p = _onehotish([4, 5, 5, 0, 1], 7)
    mal = M.compute_metrics(y, p)["malignant"]
    assert mal["n_malignant"] == 3 and mal["n_benign"] == 2
    assert mal["sensitivity"] == pytest.approx(2 / 3) and mal["specificity"] == pytest.approx(1 / 2)
    score = M.malignant_score(p)
    assert mal["auc"] == pytest.approx(skm.roc_auc_score(np.isin(y, [0, 1, 4]), score))


@pytest.mark.parametrize(("y", "p", "match"), [
    (np.array([0, 1]), np.full((2, 6), 1 / 6), r"shape \(2, 6\); expected \[N, 7\]"),
    (np.array([0, 1, 2]), np.full((2, 7), 1 / 7), "3 labels for 2 probability rows"),
    (np.array([0, 9]), np.full((2, 7), 1 / 7), "label 9 at row 1 is outside 0..6"),
    (np.array([0, -1]), np.full((2, 7), 1 / 7), "label -1 at row 1"),
    (np.array([0, 1]), np.full((2, 7), 1.0), "row 0 sums to 7.0000.*not logits"),
    (np.array([0, 1]), np.array([[np.nan] * 7, [1 / 7] * 7]), "row 0 contains NaN"),
    (np.array([], dtype=int), np.zeros((0, 7)), "no samples"),
])
def test_bad_input(y: np.ndarray, p: np.ndarray, match: str) -> None:
    with pytest.raises(M.MetricsInputError, match=match):
        M.compute_metrics(y, p)


def test_custom_class_list_without_malignant_block() -> None:
    y = np.array([0, 1, 2, 2])
    p = _onehotish([0, 1, 2, 1], 3)
    m = M.compute_metrics(y, p, classes=["a", "b", "c"])
    assert list(m["per_class"]) == ["a", "b", "c"] and "malignant" not in m
    assert m["accuracy"] == 0.75


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate() -> None:
    y, p = _random_case(300, 7, 1)
    a = M.bootstrap_ci(y, p, M.balanced_accuracy, n=200, seed=3)
    b = M.bootstrap_ci(y, p, M.balanced_accuracy, n=200, seed=3)
    c = M.bootstrap_ci(y, p, M.balanced_accuracy, n=200, seed=4)
    assert a == b and a != c
    assert a["low"] < a["estimate"] < a["high"] and a["n_valid"] == 200


def test_bootstrap_accuracy_matches_normal_approximation() -> None:
    y, p = _random_case(2000, 7, 2)
    ci = M.bootstrap_ci(y, p, M.accuracy, n=1000, seed=0, stratify=False)
    acc = ci["estimate"]
    half = 1.96 * np.sqrt(acc * (1 - acc) / y.size)
    assert ci["low"] == pytest.approx(acc - half, abs=0.006)
    assert ci["high"] == pytest.approx(acc + half, abs=0.006)


def test_stratified_bootstrap_keeps_class_counts() -> None:
    y = np.array([0, 0, 0, 3, 5, 5, 5, 5, 6])
    idx = M.bootstrap_indices(y, 50, seed=0)
    for row in idx:
        np.testing.assert_array_equal(np.bincount(y[row], minlength=7), np.bincount(y, minlength=7))


def test_bootstrap_of_undefined_metric_is_undefined() -> None:
    y = np.array([5, 5, 5, 5])
    ci = M.bootstrap_ci(y, _onehotish([5, 5, 1, 5], 7), M.macro_auc, n=20)
    assert ci["estimate"] is None and ci["low"] is None and "undefined" in ci


def test_compute_metrics_with_ci_has_headline_intervals() -> None:
    y, p = _random_case(150, 7, 5)
    m = M.compute_metrics(y, p, bootstrap=100, seed=1)
    assert set(m["ci"]) == set(M.HEADLINE)
    for name in M.HEADLINE:
        assert m["ci"][name]["estimate"] == pytest.approx(m[name])
    json.dumps(m, allow_nan=False)


def test_softmax_applies_the_temperature_to_the_logits() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(M.softmax(logits).sum(axis=1), 1.0)
    np.testing.assert_allclose(M.softmax(logits, 2.0), M.softmax(logits / 2.0))
    assert M.softmax(logits, None).tolist() == M.softmax(logits, 1.0).tolist()


def test_evaluate_metrics_re_exports_the_core_functions() -> None:
    from lesionlab.evaluate import metrics as old

    assert old.compute_metrics is M.compute_metrics and set(old.__all__) == set(M.__all__)
