"""Classification metrics as pure functions, shared by training, evaluation, the service and the reader study.

Built on scikit-learn and SciPy (average precision from scikit-learn; one-vs-rest ROC AUC as SciPy's mid-rank
U statistic and the confusion matrix as a ``bincount``, both equal to scikit-learn's and tested against it, because
the bootstrap calls them thousands of times); what lesionlab adds is the reporting. Conventions (one place, so every
caller reports the same numbers):

* ``y_true`` holds label indices ``0..K-1`` (see :mod:`lesionlab.classes`); ``proba`` is ``[N, K]`` class
  probabilities (softmax outputs, rows summing to 1), column ``k`` belonging to ``classes[k]``.
* The low-level array functions mark an undefined value as ``NaN`` (documented per function) where scikit-learn
  would warn and return 0. :func:`compute_metrics` turns every such value into ``None`` and records *why* under
  ``"undefined"`` (``{"per_class.df.tpr": "class df absent from y_true"}``), so a JSON reader never sees a silent 0
  or NaN.
* Macro averages (balanced accuracy, macro F1, macro AUC, macro AP) are taken over the classes present in
  ``y_true``, as scikit-learn's ``balanced_accuracy_score`` does; the classes left out are listed under
  ``"absent_classes"`` and in ``"notes"``. A macro average with no defined class is itself undefined.
* ECE uses the top-label confidence in 15 equal-width bins over ``(0, 1]`` (right-closed, Guo et al. 2017),
  weighted by the share of samples in each bin.
* :func:`softmax` is the one place logits become probabilities, with the run's temperature when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.core.errors import LesionlabError

ECE_BINS = 15
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")

MetricFn = Callable[[np.ndarray, np.ndarray], "float | None"]

__all__ = ["ECE_BINS", "HEADLINE", "METRIC_FUNCTIONS", "MetricFn", "MetricsInputError", "accuracy",
           "average_precision", "balanced_accuracy", "binary_rates", "bootstrap_ci", "bootstrap_indices",
           "brier_score", "check_inputs", "compute_metrics", "confusion_matrix", "ece", "expected_calibration_error",
           "macro_auc", "macro_f1", "malignant_score", "negative_log_likelihood", "ovr_auc", "per_class_rates",
           "reliability_bins", "softmax"]


class MetricsInputError(LesionlabError, ValueError):
    """Labels or probabilities that cannot be scored; the message names the row or column."""


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Softmax of ``logits / T`` in float64 (``T = 1`` when none was fitted)."""
    t = float(temperature) if temperature else 1.0
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------- validation


def check_inputs(y_true: Sequence[int] | np.ndarray, proba: np.ndarray,
                 classes: Sequence[str] = CLASS_CODES, atol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels and probabilities, so a shape or label mistake fails here and not deep inside."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k:
        raise MetricsInputError(f"probabilities have shape {p.shape}; expected [N, {k}] for classes {list(classes)}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise MetricsInputError(f"{y.shape[0] if y.ndim == 1 else y.shape} labels for {p.shape[0]} probability rows")
    if y.shape[0] == 0:
        raise MetricsInputError("no samples to score")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y)):
            raise MetricsInputError("labels must be integer class indices")
        y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= k))
    if bad.size:
        raise MetricsInputError(f"label {int(y[bad[0]])} at row {int(bad[0])} is outside 0..{k - 1} "
                                f"(classes {list(classes)})")
    if not np.all(np.isfinite(p)):
        row = int(np.flatnonzero(~np.all(np.isfinite(p), axis=1))[0])
        raise MetricsInputError(f"probability row {row} contains NaN or infinity")
    sums = p.sum(axis=1)
    off = np.flatnonzero((np.abs(sums - 1.0) > atol) | np.any(p < -1e-9, axis=1))
    if off.size:
        raise MetricsInputError(f"probability row {int(off[0])} sums to {sums[off[0]]:.4f} or has negative "
                                "entries; expected softmax probabilities, not logits")
    return y.astype(np.int64), p


# ------------------------------------------------------------------------------------------- array metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(CLASS_CODES)) -> np.ndarray:
    """Counts ``[K, K]``: row = true class, column = predicted class, every class listed (scikit-learn's layout).

    Counted with ``bincount``, not ``sklearn.metrics.confusion_matrix``, whose input checks cost about 2 ms a call:
    the bootstrap calls this thousands of times. A label outside ``0..K-1`` is an error (scikit-learn would drop it).
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise MetricsInputError(f"y_true has {y.size} labels but y_pred has {p.size}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes) | (p < 0) | (p >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise MetricsInputError(f"row {i}: label {int(y[i])} / prediction {int(p[i])} outside 0..{num_classes - 1}")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ratio that is NaN (undefined) where the denominator is 0, without warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates per class from a confusion matrix; NaN marks an undefined rate.

    ``tpr`` (sensitivity, recall) is undefined for a class absent from ``y_true``; ``tnr`` (specificity) when every
    sample is of that class; ``precision`` when the class is never predicted; ``f1 = 2TP / (2TP + FP + FN)`` only
    when the class is neither present nor predicted; ``gmean = sqrt(tpr * tnr)`` when either factor is.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fn = support - tp
    fp = predicted - tp
    tn = n - tp - fn - fp
    tpr = _div(tp, support)
    tnr = _div(tn, tn + fp)
    return {
        "support": support, "predicted": predicted, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "tpr": tpr, "tnr": tnr, "precision": _div(tp, predicted), "f1": _div(2 * tp, 2 * tp + fp + fn),
        "gmean": np.sqrt(tpr * tnr),
    }


def _per_class(score: Callable[..., Any], truth: np.ndarray, p: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """A scikit-learn one-vs-rest score for the ``defined`` columns (one call for all of them), NaN elsewhere."""
    out = np.full(p.shape[1], np.nan)
    cols = np.flatnonzero(defined)
    if cols.size == 1:
        out[cols] = score(truth[:, cols[0]], p[:, cols[0]])
    elif cols.size > 1:
        out[cols] = score(truth[:, cols], p[:, cols], average=None)
    return out


def ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (ties count one half); NaN where the class is absent or is every sample.

    Computed as the Mann-Whitney U statistic over mid-ranks (``scipy.stats.rankdata``, every column at once), which
    equals ``sklearn.metrics.roc_auc_score`` to float rounding at a small fraction of its cost per call (the
    bootstrap's thousands of replicates).
    """
    p = np.asarray(proba, dtype=np.float64)
    truth = np.asarray(y_true, dtype=np.int64)[:, None] == np.arange(p.shape[1])
    positives = truth.sum(axis=0)
    negatives = len(truth) - positives
    ranks = rankdata(p, axis=0)
    u = (ranks * truth).sum(axis=0) - positives * (positives + 1) / 2.0
    return _div(u, positives * negatives)


def average_precision(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision per class (scikit-learn's step-wise area); NaN where the class is absent."""
    p = np.asarray(proba, dtype=np.float64)
    truth = np.asarray(y_true, dtype=np.int64)[:, None] == np.arange(p.shape[1])
    return _per_class(skm.average_precision_score, truth, p, truth.any(axis=0))


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability table: per equal-width bin over (0, 1], its count, mean confidence and accuracy.

    Empty bins have count 0 and NaN confidence/accuracy (they carry no weight in the ECE).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    return {
        "lower": np.arange(n_bins) / n_bins, "upper": np.arange(1, n_bins + 1) / n_bins, "count": count,
        "confidence": _div(np.bincount(idx, weights=conf, minlength=n_bins), count),
        "accuracy": _div(np.bincount(idx, weights=correct, minlength=n_bins), count),
    }


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean gap |accuracy - confidence| over ``n_bins`` equal-width confidence bins."""
    bins = reliability_bins(y_true, proba, n_bins)
    used = bins["count"] > 0
    weights = bins["count"][used] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][used] - bins["confidence"][used])))


def negative_log_likelihood(y_true: np.ndarray, proba: np.ndarray, eps: float = 1e-12) -> float:
    """Mean cross-entropy of the true class (probabilities clipped at ``eps`` so a hard 0 stays finite)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], eps, 1.0))))


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of the squared distance to the one-hot truth (0 best, 2 worst)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# --------------------------------------------------------------------------------------- scalar (headline)


def _nanmean_or_none(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    vals = values if mask is None else values[mask]
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else None


def accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Share of samples whose arg-max class is the true class."""
    return float(np.mean(np.asarray(proba).argmax(axis=1) == np.asarray(y_true)))


def balanced_accuracy(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Mean sensitivity over the classes present in ``y_true`` (scikit-learn's convention)."""
    k = np.asarray(proba).shape[1]
    return _nanmean_or_none(per_class_rates(confusion_matrix(y_true, np.asarray(proba).argmax(axis=1), k))["tpr"])


def macro_f1(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Mean F1 over the classes present in ``y_true``."""
    k = np.asarray(proba).shape[1]
    cm = confusion_matrix(y_true, np.asarray(proba).argmax(axis=1), k)
    rates = per_class_rates(cm)
    return _nanmean_or_none(rates["f1"], rates["support"] > 0)


def macro_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the classes where it is defined (present, and not every sample)."""
    return _nanmean_or_none(ovr_auc(y_true, proba))


def ece(y_true: np.ndarray, proba: np.ndarray) -> float:
    """:func:`expected_calibration_error` with the default bins, in the (y_true, proba) metric signature."""
    return expected_calibration_error(y_true, proba)


METRIC_FUNCTIONS: dict[str, MetricFn] = {
    "accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1, "macro_auc": macro_auc,
    "ece": ece, "nll": negative_log_likelihood, "brier": brier_score,
}


def malignant_score(proba: np.ndarray, classes: Sequence[str] = CLASS_CODES) -> np.ndarray:
    """Summed probability of the malignant classes: the one score a referral threshold is set on."""
    cols = [i for i, c in enumerate(classes) if c in MALIGNANT_CODES]
    if not cols:
        raise MetricsInputError(f"none of the classes {list(classes)} is malignant ({list(MALIGNANT_CODES)})")
    return np.asarray(proba, dtype=np.float64)[:, cols].sum(axis=1)


def binary_rates(truth: np.ndarray, flagged: np.ndarray) -> dict[str, float | None]:
    """Sensitivity and specificity of a yes/no decision (``None`` when there are no positives / negatives)."""
    truth = np.asarray(truth, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return {"sensitivity": float((flagged & truth).sum() / n_pos) if n_pos else None,
            "specificity": float((~flagged & ~truth).sum() / n_neg) if n_neg else None}


# ------------------------------------------------------------------------------------------------ bootstrap


def bootstrap_indices(y_true: np.ndarray, n: int, seed: int, stratify: bool = True) -> np.ndarray:
    """``[n, N]`` resample indices; stratified resampling draws within each true class, keeping class counts fixed."""
    y = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    if not stratify:
        return rng.integers(0, y.size, size=(n, y.size))
    out = np.empty((n, y.size), dtype=np.int64)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        out[:, members] = members[rng.integers(0, members.size, size=(n, members.size))]
    return out


def bootstrap_ci(y_true: np.ndarray, proba: np.ndarray, metric_fn: MetricFn, n: int = 1000, seed: int = 0,
                 level: float = 0.95, stratify: bool = True) -> dict[str, Any]:
    """Percentile bootstrap CI of one metric over images.

    Stratified by true class by default: the split fixes how many images of each class there are, and resampling
    within classes keeps every present class in every replicate, so macro metrics stay defined. Replicates where
    the metric is undefined are dropped and counted (``n_valid``); with fewer than half valid, the CI is undefined.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba)
    estimate = metric_fn(y, p)
    values = []
    for idx in bootstrap_indices(y, n, seed, stratify):
        v = metric_fn(y[idx], p[idx])
        if v is not None and np.isfinite(v):
            values.append(v)
    arr = np.asarray(values, dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    result: dict[str, Any] = {"estimate": None if estimate is None else float(estimate), "level": level,
                              "n_boot": n, "n_valid": int(arr.size), "seed": seed, "stratified": stratify,
                              "method": "percentile"}
    if estimate is None or arr.size < max(1, n // 2):
        result.update(low=None, high=None,
                      undefined="metric undefined on the full sample" if estimate is None
                      else f"metric defined on only {arr.size} of {n} bootstrap replicates")
    else:
        low, high = np.quantile(arr, [alpha, 1.0 - alpha])
        result.update(low=float(low), high=float(high))
    return result


# -------------------------------------------------------------------------------------------- the full dict


def _num(x: float | np.floating | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _per_class_block(classes: list[str], rates: dict[str, np.ndarray], aucs: np.ndarray, aps: np.ndarray,
               undefined: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The ``per_class`` block; each undefined value is ``None`` with its reason recorded in ``undefined``."""
    per_class: dict[str, dict[str, Any]] = {}
    for i, code in enumerate(classes):
        absent = f"class {code} absent from y_true"
        no_negatives = f"every sample is class {code} (no negatives)"
        reasons = {"tpr": absent, "tnr": no_negatives, "precision": f"class {code} never predicted",
                   "f1": f"class {code} neither present in y_true nor predicted",
                   "gmean": f"sensitivity or specificity of class {code} undefined",
                   "auc": absent if rates["support"][i] == 0 else no_negatives, "ap": absent}
        values = {"tpr": rates["tpr"][i], "tnr": rates["tnr"][i], "precision": rates["precision"][i],
                  "f1": rates["f1"][i], "gmean": rates["gmean"][i], "auc": aucs[i], "ap": aps[i]}
        entry: dict[str, Any] = {"support": int(rates["support"][i]), "predicted": int(rates["predicted"][i])}
        for name, value in values.items():
            entry[name] = _num(value)
            if entry[name] is None:
                undefined[f"per_class.{code}.{name}"] = reasons[name]
        per_class[code] = entry
    return per_class


def _malignant(classes: list[str], y: np.ndarray, pred: np.ndarray, p: np.ndarray, undefined: dict[str, str]
               ) -> dict[str, Any]:
    """Malignant (akiec, bcc, mel) vs benign: AUC of the summed probability, sensitivity and specificity of arg-max."""
    truth = np.isin(np.asarray(classes)[y], MALIGNANT_CODES)
    flagged = np.isin(np.asarray(classes)[pred], MALIGNANT_CODES)
    score = malignant_score(p, classes)
    auc = _num(ovr_auc(truth.astype(np.int64), np.c_[1.0 - score, score])[1])
    block = {"classes": [c for c in classes if c in MALIGNANT_CODES], "n_malignant": int(truth.sum()),
             "n_benign": int((~truth).sum()), "auc": auc, **binary_rates(truth, flagged)}
    for name in ("auc", "sensitivity", "specificity"):
        if block[name] is None:
            undefined[f"malignant.{name}"] = "no malignant or no benign samples"
    return block


def compute_metrics(y_true: Sequence[int] | np.ndarray, proba: np.ndarray, classes: Sequence[str] = CLASS_CODES,
                    bootstrap: int = 0, seed: int = 0, ece_bins: int = ECE_BINS) -> dict[str, Any]:
    """Every evaluation metric in one JSON-ready dict (see the module docstring for the undefined-value rules).

    ``bootstrap > 0`` adds ``"ci"``: stratified percentile 95% intervals for the headline metrics (accuracy,
    balanced accuracy, macro F1, macro AUC). Training calls this with ``bootstrap=0`` for model selection.
    """
    classes = list(classes)
    y, p = check_inputs(y_true, proba, classes)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, len(classes))
    rates = per_class_rates(cm)
    aucs, aps = ovr_auc(y, p), average_precision(y, p)
    undefined: dict[str, str] = {}
    absent = [c for c, s in zip(classes, rates["support"], strict=True) if s == 0]
    per_class = _per_class_block(classes, rates, aucs, aps, undefined)
    present = rates["support"] > 0
    macro = {"balanced_accuracy": _nanmean_or_none(rates["tpr"]), "macro_f1": _nanmean_or_none(rates["f1"], present),
             "macro_auc": _nanmean_or_none(aucs), "macro_ap": _nanmean_or_none(aps),
             "macro_gmean": _nanmean_or_none(rates["gmean"], present)}
    undefined.update({name: "undefined for every class" for name, value in macro.items() if value is None})
    acc = float(np.mean(pred == y))
    out: dict[str, Any] = {
        "n": int(y.size), "classes": classes,
        "class_counts": {c: int(s) for c, s in zip(classes, rates["support"], strict=True)},
        "absent_classes": absent, "accuracy": acc, "error_rate": 1.0 - acc, **macro,
        "ece": expected_calibration_error(y, p, ece_bins), "ece_bins": ece_bins, "nll": negative_log_likelihood(y, p),
        "brier": brier_score(y, p), "per_class": per_class,
        "confusion_matrix": {"counts": cm.tolist(), "normalized": [
            None if s == 0 else (row / s).tolist() for row, s in zip(cm, rates["support"], strict=True)]},
    }
    undefined.update({f"confusion_matrix.normalized.{c}": f"class {c} absent from y_true" for c in absent})
    if any(c in MALIGNANT_CODES for c in classes):
        out["malignant"] = _malignant(classes, y, pred, p, undefined)
    if bootstrap > 0:
        out["ci"] = {name: bootstrap_ci(y, p, METRIC_FUNCTIONS[name], n=bootstrap, seed=seed) for name in HEADLINE}
    out["undefined"] = undefined
    out["notes"] = [f"classes absent from y_true ({', '.join(absent)}) are left out of the macro averages"] if absent \
        else []
    return out
