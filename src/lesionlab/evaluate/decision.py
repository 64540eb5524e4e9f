"""Two decision rules in every evaluation: the arg-max for accuracy, the prior-corrected arg-max for balanced accuracy.

The arg-max of the calibrated probabilities maximises the expected accuracy: it is ``pred`` in predictions.csv, the
headline figures and what the service ranks first. Balanced accuracy weighs every class alike, as if they were
equally frequent; its decision divides the probabilities by the run's effective training prior first
(:mod:`lesionlab.core.priors`: class counts times the loss's class weights). ``metrics.json`` reports both under
``decision_rules`` (accuracy, balanced accuracy with a bootstrap CI, recall of every class, malignant sensitivity
and specificity), so a user picks the rule that fits the question instead of the one a single number favours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lesionlab.classes import MALIGNANT_CODES
from lesionlab.core.metrics import balanced_accuracy, binary_rates, bootstrap_ci, confusion_matrix, per_class_rates
from lesionlab.core.priors import prior_corrected, training_prior
from lesionlab.runs import Run

RULES: dict[str, str] = {
    "argmax": "the class of highest probability (maximises expected accuracy)",
    "balanced": "the class of highest probability / effective training prior (maximises expected balanced "
                "accuracy)",
}


def run_training_prior(run: Run) -> tuple[np.ndarray | None, str]:
    """The run's effective training prior in its class order, and how it was derived (or why it is unknown)."""
    counts = (run.info.get("data") or {}).get("train_class_counts")
    if not isinstance(counts, dict) or not counts:
        return None, "run.json has no training class counts (data.train_class_counts)"
    tc = run.config.train
    prior = training_prior([int(counts.get(c, 0)) for c in run.classes], tc.class_weights, tc.sampler,
                           tc.logit_adjust)
    return prior, (f"training class counts x {tc.class_weights} class weights"
                   + (" (class-balanced sampler: uniform)" if tc.sampler == "balanced" else "")
                   + (f", raised to 1 - {tc.logit_adjust:g} by the logit-adjusted loss" if tc.logit_adjust else "")
                   + (f"; approximate: a focal loss (gamma {tc.focal_gamma:g}) does not learn the posterior"
                      if tc.focal_gamma else ""))


def rule_scores(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and malignant sensitivity / specificity of hard decisions."""
    y, pred = np.asarray(y), np.asarray(pred)
    rates = per_class_rates(confusion_matrix(y, pred, len(classes)))
    recall = {c: None if not np.isfinite(v) else float(v) for c, v in zip(classes, rates["tpr"], strict=True)}
    defined = [v for v in recall.values() if v is not None]
    malignant = np.isin(np.asarray(classes)[y], MALIGNANT_CODES)
    flagged = np.isin(np.asarray(classes)[pred], MALIGNANT_CODES)
    return {"accuracy": float(np.mean(pred == y)) if y.size else None,
            "balanced_accuracy": float(np.mean(defined)) if defined else None, "recall": recall,
            "malignant": binary_rates(malignant, flagged)}


def decision_rules(y: np.ndarray, proba: np.ndarray, prior: np.ndarray | None, classes: Sequence[str],
                   prior_source: str = "", bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``decision_rules`` block of metrics.json (pure): both rules' scores (the balanced rule only with a prior)."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    out: dict[str, Any] = {"argmax": {"rule": RULES["argmax"], **rule_scores(y, proba.argmax(axis=1), classes)}}
    if prior is None:
        out["balanced"] = {"rule": RULES["balanced"], "undefined": prior_source or "no training prior"}
        return out
    corrected = prior_corrected(proba, prior)
    block = {"rule": RULES["balanced"], "prior": {c: float(p) for c, p in zip(classes, prior, strict=True)},
             "prior_source": prior_source, **rule_scores(y, corrected.argmax(axis=1), classes)}
    if bootstrap > 0:
        block["balanced_accuracy_ci"] = bootstrap_ci(y, corrected, balanced_accuracy, n=bootstrap, seed=seed)
    out["balanced"] = block
    return out


def balanced_predictions(proba: np.ndarray, prior: np.ndarray | None) -> np.ndarray | None:
    """The balanced rule's class index per row (``None`` without a prior)."""
    return None if prior is None else prior_corrected(np.asarray(proba, dtype=np.float64), prior).argmax(axis=1)
