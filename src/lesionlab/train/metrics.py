"""The validation metrics used for model selection, from the project's one metric implementation."""

from __future__ import annotations

from typing import Any

import numpy as np

from lesionlab.evaluate.metrics import compute_metrics

#: Scalar metrics recorded per epoch (as ``val_<name>``) and available to ``train.monitor``.
SELECTION_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "nll", "ece")


def selection_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro AUC, macro F1, NLL and ECE (``None`` where undefined)."""
    full = compute_metrics(labels, proba)
    return {name: full.get(name) for name in SELECTION_METRICS}
