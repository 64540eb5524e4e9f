"""Evaluation: pure metric functions, statistics, calibration, predictions -> metrics, and report rendering.

Kept import-light (numpy/scipy only here) because training imports :func:`compute_metrics` for model selection.
"""

from lesionlab.evaluate.metrics import bootstrap_ci, compute_metrics

__all__ = ["bootstrap_ci", "compute_metrics"]
