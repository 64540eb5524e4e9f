"""The two decision rules of every evaluation: arg-max for accuracy, prior-corrected arg-max for balanced accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.core.metrics import balanced_accuracy
from lesionlab.evaluate.decision import balanced_predictions, decision_rules, rule_scores


def test_rule_scores_count_recall_per_class_and_malignant_decisions() -> None:
    classes = list(CLASS_CODES)
    y = np.array([4, 4, 5, 5, 5, 1])  # mel, mel, nv x3, bcc
    pred = np.array([4, 5, 5, 5, 4, 1])
    s = rule_scores(y, pred, classes)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["recall"]["mel"] == 0.5 and s["recall"]["nv"] == pytest.approx(2 / 3) and s["recall"]["bcc"] == 1.0
    assert s["recall"]["df"] is None  # absent: undefined, left out of the mean
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert s["malignant"] == {"sensitivity": pytest.approx(2 / 3), "specificity": pytest.approx(2 / 3)}


def test_balanced_rule_trades_accuracy_for_balanced_accuracy(synth) -> None:
    frame = synth(n=600, skill=1.2, seed=3)
    y = frame["label"].to_numpy()
    p = frame[[f"p_{c}" for c in CLASS_CODES]].to_numpy()
    # a model that learnt HAM10000's priors on top of its evidence
    prior = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    posterior = p * prior / (p * prior).sum(axis=1, keepdims=True)
    rules = decision_rules(y, posterior, prior, CLASS_CODES, "unit prior", bootstrap=100, seed=1)
    arg, bal = rules["argmax"], rules["balanced"]
    assert arg["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, posterior))
    assert bal["balanced_accuracy"] > arg["balanced_accuracy"] + 0.05
    assert bal["recall"]["nv"] < arg["recall"]["nv"]
    assert bal["prior"]["nv"] == pytest.approx(0.67) and bal["prior_source"] == "unit prior"
    ci = bal["balanced_accuracy_ci"]
    assert ci["low"] <= bal["balanced_accuracy"] <= ci["high"] and ci["n_boot"] == 100
    assert list(balanced_predictions(posterior, prior)) == list((posterior / prior).argmax(axis=1))


def test_without_a_prior_the_balanced_rule_says_why() -> None:
    y = np.array([0, 1])
    p = np.array([[0.9, 0.1, 0, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0, 0]])
    rules = decision_rules(y, p, None, CLASS_CODES, "run.json has no training class counts")
    assert rules["argmax"]["accuracy"] == 1.0
    assert rules["balanced"]["undefined"] == "run.json has no training class counts"
    assert balanced_predictions(p, None) is None
