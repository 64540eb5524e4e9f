"""Post-hoc calibration fitted on the validation split only: temperature scaling and the referral threshold.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T`` fitted to minimise the validation
negative log-likelihood. It works here from probabilities: ``log p = z - logsumexp(z)`` differs from the logits
``z`` by a per-row constant, which softmax ignores, so ``softmax(log p / T) == softmax(z / T)``. That lets the
same code calibrate saved prediction tables and flip-averaged (TTA) probabilities. The arg-max, and so accuracy,
never changes; only confidence (ECE, NLL) and summed-class scores such as the malignant score do.

The referral threshold is set on the summed probability of the malignant classes (akiec, bcc, mel), *after*
temperature scaling: the highest threshold whose validation sensitivity for malignant lesions reaches the target
(default 0.90, a triage operating point that misses at most one malignant lesion in ten on validation data).
The service refers a lesion when its malignant score is at or above the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.core.errors import LesionlabError
from lesionlab.core.metrics import (
    binary_rates,
    check_inputs,
    expected_calibration_error,
    malignant_score,
    negative_log_likelihood,
)

DEFAULT_TARGET_SENSITIVITY = 0.90
TEMPERATURE_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


class CalibrationError(LesionlabError, ValueError):
    """Validation data that cannot fit a calibration (no malignant lesion, a single class, ...)."""


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled as ``softmax(log p / T)`` (``T > 1`` softens, ``T < 1`` sharpens)."""
    if not temperature > 0:
        raise CalibrationError(f"temperature must be positive, got {temperature}")
    z = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str] = CLASS_CODES) -> dict[str, Any]:
    """Fit ``T`` on validation predictions by bounded 1-D minimisation of the NLL over ``log T``.

    Returns ``{"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "n"}``.
    """
    y, p = check_inputs(y_true, proba, classes)
    if np.unique(y).size < 2:
        raise CalibrationError(f"validation labels hold a single class ({classes[int(y[0])]}); cannot fit a "
                               "temperature")
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda lt: negative_log_likelihood(y, apply_temperature(p, math.exp(lt))),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    if not res.success:
        raise CalibrationError(f"temperature fit did not converge: {res.message}")
    t = float(math.exp(res.x))
    q = apply_temperature(p, t)
    return {"temperature": t, "n": int(y.size),
            "nll_before": negative_log_likelihood(y, p), "nll_after": negative_log_likelihood(y, q),
            "ece_before": expected_calibration_error(y, p), "ece_after": expected_calibration_error(y, q)}


def fit_referral_threshold(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str] = CLASS_CODES,
                           target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> dict[str, Any]:
    """The highest malignant-score threshold whose sensitivity on these (validation) data reaches the target.

    With ``m`` malignant lesions the threshold is the ``ceil(target * m)``-th highest malignant score, so at least
    that many are referred. Returns the threshold with the sensitivity, specificity and referral rate it gives here.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise CalibrationError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    y, p = check_inputs(y_true, proba, classes)
    score = malignant_score(p, classes)
    truth = np.isin(np.asarray(classes)[y], MALIGNANT_CODES)
    n_mal = int(truth.sum())
    if n_mal == 0:
        raise CalibrationError("no malignant lesion (akiec, bcc, mel) in the validation data; cannot fit a referral "
                               "threshold")
    need = math.ceil(target_sensitivity * n_mal - 1e-9)
    threshold = float(np.sort(score[truth])[::-1][need - 1])
    flagged = score >= threshold
    rates = binary_rates(truth, flagged)
    return {"threshold": threshold, "target_sensitivity": target_sensitivity,
            "score": f"sum of p({', '.join(c for c in classes if c in MALIGNANT_CODES)})",
            "val_sensitivity": rates["sensitivity"], "val_specificity": rates["specificity"],
            "val_referral_rate": float(flagged.mean()), "n_malignant": n_mal, "n_benign": int((~truth).sum())}


def referral_rates(y_true: np.ndarray, proba: np.ndarray, threshold: float,
                   classes: Sequence[str] = CLASS_CODES) -> dict[str, float | None]:
    """Sensitivity, specificity and referral rate of a fixed threshold (e.g. the validation one on test data)."""
    y, p = check_inputs(y_true, proba, classes)
    truth = np.isin(np.asarray(classes)[y], MALIGNANT_CODES)
    flagged = malignant_score(p, classes) >= threshold
    return {**binary_rates(truth, flagged), "referral_rate": float(flagged.mean()), "threshold": float(threshold),
            "by_class": referred_by_class(y, flagged, classes)}


def referred_by_class(y: np.ndarray, flagged: np.ndarray, classes: Sequence[str] = CLASS_CODES
                      ) -> dict[str, dict[str, float | int]]:
    """Of the images of each class present, how many the referral flag sends on: a clinician asks "how many melanomas
    does it refer?", which the pooled malignant sensitivity hides (melanoma can be missed while bcc is caught)."""
    n = np.bincount(np.asarray(y), minlength=len(classes))
    k = np.bincount(np.asarray(y), weights=np.asarray(flagged, dtype=bool), minlength=len(classes)).astype(int)
    return {c: {"referred": int(k[i]), "n": int(n[i]), "rate": int(k[i]) / int(n[i])}
            for i, c in enumerate(classes) if n[i]}
