"""Is this image one the model can judge? The out-of-scope gate, the image-quality check and abstention, as pure
functions on features, pixels and probabilities.

* Out of scope: the Mahalanobis distance of the image's penultimate features to the nearest class mean under one
  shared covariance (Lee et al., NeurIPS 2018, without input preprocessing), fitted on the training split. Other
  scores, for comparison in the benchmark: the energy score (Liu et al., NeurIPS 2020), the distance to the k-th
  nearest training feature after L2 normalisation (Sun et al., ICML 2022) and the maximum softmax probability
  (Hendrycks & Gimpel, ICLR 2017). The threshold is fitted on the validation split: the score that keeps all but
  ``max_false_rejection`` of the validation images in scope.
* Quality: too dark, too bright, blurred, mostly one colour, measured on the pixels the model sees; and *degraded*:
  a linear detector on the same penultimate features, trained to tell the training images from copies of them under
  the fifteen acquisition corruptions (:mod:`lesionlab.data.corruptions`), threshold fitted on the clean validation
  images. It catches what the distance gate lets through: the mildly pixelated, blurred or badly lit images on
  which a model still answers with confidence and misses more melanomas (docs/BENCHMARKS.md).
* Uncertain: a small margin between the two most probable classes; the threshold is fitted on validation as the
  largest margin below which the model cannot be shown (one-sided 95% Wilson bound) to be right more than half of the
  time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionlab.core.errors import LesionlabError

SCOPE_METHODS = ("mahalanobis", "knn", "energy", "msp")
DEFAULT_SCOPE_METHOD = "mahalanobis"
DEFAULT_MAX_FALSE_REJECTION = 0.05
KNN_K = 10
KNN_BANK = 4096  # training features kept for the k-NN score (a seeded subsample beyond that)


class ScopeError(LesionlabError, ValueError):
    """A scope gate that cannot be fitted or read; the message names what is missing."""


# ------------------------------------------------------------------------------------------------------- scores


def energy(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` per row: higher means further from the training data."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def msp(proba: np.ndarray) -> np.ndarray:
    """``1 - max p`` per row (the maximum softmax probability baseline, as a score where higher = further)."""
    return 1.0 - np.asarray(proba, dtype=np.float64).max(axis=1)


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-3) -> dict[str, np.ndarray]:
    """Class means and the precision matrix of the shared (tied) covariance, slightly shrunk to stay invertible."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / max(1, len(x) - len(classes))
    cov += shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean."""
    x = np.asarray(features, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    best = np.full(len(x), np.inf)
    for mu in np.asarray(means, dtype=np.float64):
        d = x - mu
        best = np.minimum(best, ((d @ p) * d).sum(axis=1))  # BLAS: an einsum over three operands would not be
    return best


def fit_knn(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The normalised training features the k-NN score compares with (at most :data:`KNN_BANK`)."""
    x = _l2(features)
    if len(x) > KNN_BANK:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), KNN_BANK, replace=False))]
    return {"bank": x.astype(np.float32)}


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int = KNN_K, chunk: int = 256) -> np.ndarray:
    """Euclidean distance of each normalised feature to its k-th nearest neighbour in ``bank``."""
    x = _l2(features)
    b = np.asarray(bank, dtype=np.float64)
    k = min(k, len(b))
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ b.T
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
        out[start:start + chunk] = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * kth))
    return out


# --------------------------------------------------------------------------------------------------------- gate


@dataclass
class ScopeGate:
    """A fitted out-of-scope score and its threshold: ``score > threshold`` means out of scope."""

    method: str
    threshold: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray, logits: np.ndarray | None = None, proba: np.ndarray | None = None
              ) -> np.ndarray:
        """The out-of-scope score of each row (higher = less like the training images)."""
        if self.method == "mahalanobis":
            return mahalanobis(features, self.arrays["means"], self.arrays["precision"])
        if self.method == "knn":
            return knn_distance(features, self.arrays["bank"])
        if self.method == "energy":
            if logits is None:
                raise ScopeError("the energy score needs the logits")
            return energy(logits)
        if self.method == "msp":
            if proba is None:
                raise ScopeError("the maximum-softmax score needs the probabilities")
            return msp(proba)
        raise ScopeError(f"unknown scope method {self.method!r}; expected one of {', '.join(SCOPE_METHODS)}")

    def in_scope(self, scores: np.ndarray) -> np.ndarray:
        """True where the image looks like the training data."""
        return np.asarray(scores) <= self.threshold

    def record(self) -> dict[str, Any]:
        """The JSON part (``run.json`` ``scope``); the arrays go to a safetensors file."""
        return {"method": self.method, "threshold": float(self.threshold), **self.fit}


def fit_arrays(method: str, train_features: np.ndarray, train_labels: np.ndarray) -> dict[str, np.ndarray]:
    """What ``method`` keeps from the training split."""
    if method == "mahalanobis":
        return fit_mahalanobis(train_features, train_labels)
    if method == "knn":
        return fit_knn(train_features)
    if method in ("energy", "msp"):
        return {}
    raise ScopeError(f"unknown scope method {method!r}; expected one of {', '.join(SCOPE_METHODS)}")


def threshold_for(val_scores: np.ndarray, max_false_rejection: float = DEFAULT_MAX_FALSE_REJECTION) -> float:
    """The score below which all but ``max_false_rejection`` of the validation images fall."""
    if not 0.0 <= max_false_rejection < 1.0:
        raise ScopeError(f"max_false_rejection must be in [0, 1), got {max_false_rejection}")
    scores = np.sort(np.asarray(val_scores, dtype=np.float64))
    if scores.size == 0:
        raise ScopeError("no validation images to fit the scope threshold on")
    keep = int(np.ceil((1.0 - max_false_rejection) * scores.size - 1e-9))
    return float(scores[max(0, keep - 1)])


def fit_scope_gate(method: str, train_features: np.ndarray, train_labels: np.ndarray, val_scores_of: Any,
                   max_false_rejection: float = DEFAULT_MAX_FALSE_REJECTION) -> ScopeGate:
    """Fit ``method`` on the training split, then its threshold on the validation scores
    (``val_scores_of(gate)`` scores the validation images with the partly fitted gate)."""
    gate = ScopeGate(method, float("inf"), fit_arrays(method, train_features, train_labels))
    val_scores = np.asarray(val_scores_of(gate))
    gate.threshold = threshold_for(val_scores, max_false_rejection)
    gate.fit = {"max_false_rejection": max_false_rejection, "n_train": len(train_features),
                "n_val": int(val_scores.size), "val_false_rejection": float((val_scores > gate.threshold).mean())}
    return gate


# ------------------------------------------------------------------------------------------------------ quality

#: Limits on the model's pixels (uint8 RGB). Fixed, and checked against the real HAM10000 test images: see
#: docs/BENCHMARKS.md ("Out-of-scope gate") for how many real images each flags.
#: On 1,995 real test-set-like images (every third of the shared 64 px set, at 128 px) the measures ranged over mean
#: luminance 80-227, Laplacian variance 2.0-143 and one-colour share 0.01-0.92: these limits flag none of them.
QUALITY_LIMITS = {"dark_mean": 40.0, "bright_mean": 240.0, "blur_laplacian_var": 1.0, "one_colour_share": 0.98,
                  "one_colour_tolerance": 12.0}


def quality_measures(pixels: np.ndarray) -> dict[str, float]:
    """Mean luminance, variance of the Laplacian (sharpness) and the share of pixels near the median colour."""
    rgb = np.asarray(pixels, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ScopeError(f"quality check needs HxWx3 pixels, got shape {rgb.shape}")
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    lap = (-4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:])
    median = np.median(rgb.reshape(-1, 3), axis=0)
    near = np.abs(rgb - median).max(axis=2) <= QUALITY_LIMITS["one_colour_tolerance"]
    return {"mean_luminance": float(grey.mean()), "laplacian_var": float(lap.var()) if lap.size else 0.0,
            "one_colour_share": float(near.mean())}


def quality_flags(measures: dict[str, float]) -> list[str]:
    """``too_dark``, ``too_bright``, ``blurred``, ``one_colour`` (in that order) for the measures that fail."""
    q = QUALITY_LIMITS
    flags = []
    if measures["mean_luminance"] < q["dark_mean"]:
        flags.append("too_dark")
    if measures["mean_luminance"] > q["bright_mean"]:
        flags.append("too_bright")
    if measures["laplacian_var"] < q["blur_laplacian_var"]:
        flags.append("blurred")
    if measures["one_colour_share"] > q["one_colour_share"]:
        flags.append("one_colour")
    return flags


# -------------------------------------------------------------------------------------------------- degradation

DEFAULT_DEGRADATION_FALSE_REJECTION = 0.02
DEGRADATION_FILE = "degradation.safetensors"
DEGRADATION_ARRAYS = ("mean", "scale", "coef", "intercept")


@dataclass
class DegradationCheck:
    """A fitted linear detector of degraded images on the penultimate features: ``score > threshold`` means
    degraded. The arrays: feature ``mean`` and ``scale`` (standardisation), ``coef`` and ``intercept``."""

    threshold: float
    arrays: dict[str, np.ndarray]
    fit: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The detector's log-odds that each row's image is degraded."""
        a = self.arrays
        if np.ndim(features) != 2 or np.shape(features)[1] != a["coef"].size:
            raise ScopeError(f"the degradation detector reads {a['coef'].size} features per image, got shape "
                             f"{np.shape(features)} (a detector fitted for another model?)")
        x = (np.asarray(features, dtype=np.float64) - a["mean"]) / a["scale"]
        return x @ np.asarray(a["coef"], dtype=np.float64) + float(np.asarray(a["intercept"]).reshape(-1)[0])

    def degraded(self, scores: np.ndarray) -> np.ndarray:
        """True where the image looks degraded."""
        return np.asarray(scores) > self.threshold

    def record(self) -> dict[str, Any]:
        """The JSON part (``run.json`` ``degradation``); the arrays go to :data:`DEGRADATION_FILE`."""
        return {"threshold": float(self.threshold), **self.fit}


def degradation_arrays(mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float
                       ) -> dict[str, np.ndarray]:
    """The detector's arrays from a fitted standardisation and linear model (a constant feature keeps scale 1)."""
    scale = np.where(np.asarray(scale) > 0, scale, 1.0)
    return {"mean": np.asarray(mean, np.float32), "scale": np.asarray(scale, np.float32),
            "coef": np.asarray(coef, np.float32).reshape(-1), "intercept": np.array([intercept], np.float32)}


def save_degradation(path: Any, check: DegradationCheck) -> Any:
    """The detector's arrays as a safetensors file (atomic): plain numbers, nothing that runs when loaded."""
    from safetensors.numpy import save_file

    from lesionlab.core.io import atomic_write

    arrays = {k: np.ascontiguousarray(check.arrays[k]) for k in DEGRADATION_ARRAYS}
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata={"check": "degradation"}))


def load_degradation(path: Any, record: dict[str, Any]) -> DegradationCheck:
    """The detector described by ``record`` (``run.json`` ``degradation``) with its arrays from ``path``."""
    if not isinstance(record.get("threshold"), (int, float)):
        raise ScopeError(f"degradation record {record!r} needs a threshold")
    arrays = read_arrays(path, DEGRADATION_ARRAYS, "degradation detector")
    n = arrays["coef"].size
    if arrays["mean"].size != n or arrays["scale"].size != n or arrays["intercept"].size != 1:
        raise ScopeError(f"{path}: the degradation detector's arrays disagree in size (coef {n}, mean "
                         f"{arrays['mean'].size}, scale {arrays['scale'].size}, intercept {arrays['intercept'].size})")
    return DegradationCheck(float(record["threshold"]), arrays, {k: v for k, v in record.items() if k != "threshold"})


# ------------------------------------------------------------------------------------------------- the verdict

def assessment_state(in_scope: bool | None, quality_ok: bool, uncertain: bool | None) -> str:
    """What may be said of one image: ``cannot_assess`` (out of scope, or its quality fails: no verdict),
    ``uncertain`` (the model abstains) or ``assessed``; ``None`` means that check was never fitted. The one rule
    that the service answers by and the corrupted test split is measured by."""
    if in_scope is False or not quality_ok:
        return "cannot_assess"
    return "uncertain" if uncertain else "assessed"


# -------------------------------------------------------------------------------------------------- uncertainty


def margins(proba: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row."""
    top2 = -np.partition(-np.asarray(proba, dtype=np.float64), 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


#: One-sided confidence with which the uncertain band's validation accuracy must be shown to exceed
#: ``max_band_accuracy`` for the band to stop: the conventional 95%.
UNCERTAINTY_CONFIDENCE = 0.95


def wilson_lower(correct: np.ndarray, n: np.ndarray, confidence: float = UNCERTAINTY_CONFIDENCE) -> np.ndarray:
    """One-sided Wilson score lower bound of a proportion ``correct / n`` (vectorised)."""
    from scipy.stats import norm

    k, n = np.asarray(correct, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = float(norm.ppf(confidence))
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def fit_uncertainty(y_true: np.ndarray, proba: np.ndarray, max_band_accuracy: float = 0.5, min_band: int = 5,
                    confidence: float = UNCERTAINTY_CONFIDENCE) -> dict[str, Any]:
    """The margin threshold: the largest margin ``t`` such that the validation images with a margin below ``t`` (at
    least ``min_band`` of them) cannot be shown to be classified correctly more than ``max_band_accuracy`` of the
    time: the one-sided Wilson lower bound of their accuracy at ``confidence`` is at most ``max_band_accuracy``.

    Why a bound and not the band's plain accuracy: some 450 validation images hold only about 50 errors, and whether
    the few lowest-margin ones happen to be right decided between abstaining on a fifth of the images and never
    (one seed of the clinical preset: its 60 lowest-margin validation images were right 58% of the time, so the plain
    rule never abstained, while on test its 100 lowest-margin images were right 38% of the time; docs/BENCHMARKS.md).
    """
    m = margins(proba)
    correct = (np.asarray(proba).argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    order = np.argsort(m, kind="stable")
    count = np.arange(1, m.size + 1)
    lower = wilson_lower(np.cumsum(correct[order]), count, confidence)
    ok = np.flatnonzero((lower <= max_band_accuracy) & (count >= min_band))
    threshold = float(m[order][ok[-1] + 1]) if ok.size and ok[-1] + 1 < m.size else (
        float(m[order][ok[-1]]) if ok.size else 0.0)
    flagged = m < threshold
    return {"threshold": threshold, "score": "margin p(top1) - p(top2)", "max_band_accuracy": max_band_accuracy,
            "rule": f"largest band whose accuracy's one-sided {confidence:.0%} Wilson lower bound is at most "
                    f"{max_band_accuracy}", "confidence": confidence,
            "n": int(m.size), "val_uncertain_rate": float(flagged.mean()),
            "val_accuracy_uncertain": float(correct[flagged].mean()) if flagged.any() else None,
            "val_accuracy_certain": float(correct[~flagged].mean()) if (~flagged).any() else None}


# ---------------------------------------------------------------------------------------------------- the file

SCOPE_FILE = "scope.safetensors"


def save_gate_arrays(path: Any, gate: ScopeGate) -> Any:
    """The gate's arrays as a safetensors file (atomic); the JSON part goes into ``run.json`` (``scope``)."""
    from safetensors.numpy import save_file

    from lesionlab.core.io import atomic_write

    arrays = {k: np.ascontiguousarray(v) for k, v in gate.arrays.items()} or {"none": np.zeros(1, np.float32)}
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata={"method": gate.method}))


def read_arrays(path: Any, needed: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file (plain numbers, nothing that runs) that must hold ``needed``; every failure
    names the file and ``what`` keeps its numbers there."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise ScopeError(f"{path}: missing (the {what} keeps its numbers there)")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ScopeError(f"{path}: cannot read the {what} ({err})") from None
    lacking = [k for k in needed if k not in arrays]
    if lacking:
        raise ScopeError(f"{path}: lacks {', '.join(lacking)} for the {what}")
    return arrays


def load_gate(path: Any, record: dict[str, Any]) -> ScopeGate:
    """The gate described by ``record`` (``run.json`` ``scope``) with its arrays from ``path``."""
    method = record.get("method")
    if method not in SCOPE_METHODS or not isinstance(record.get("threshold"), (int, float)):
        raise ScopeError(f"scope record {record!r} needs a method ({', '.join(SCOPE_METHODS)}) and a threshold")
    needed = {"mahalanobis": ("means", "precision"), "knn": ("bank",)}.get(method, ())
    arrays = read_arrays(path, needed, f"{method} scope gate") if needed else {}
    fit = {k: v for k, v in record.items() if k not in ("method", "threshold")}
    return ScopeGate(method, float(record["threshold"]), arrays, fit)
