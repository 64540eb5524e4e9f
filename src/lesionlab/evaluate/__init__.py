"""Evaluation: pure metric functions, statistics, calibration, predictions -> metrics, and report rendering.

The metric functions themselves live in the bottom layer (:mod:`lesionlab.core.metrics`), so training and serving
use them without importing evaluation; ``lesionlab.evaluate.metrics`` re-exports them.
"""

from lesionlab.core.metrics import bootstrap_ci, compute_metrics

__all__ = ["bootstrap_ci", "compute_metrics"]
