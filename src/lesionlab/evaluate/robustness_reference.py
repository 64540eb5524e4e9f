"""The reference run that normalises robustness figures (MedMNIST-C normalises by an AlexNet; see
:mod:`lesionlab.evaluate.robustness` for why lesionlab uses its own best CPU preset instead).

``REFERENCE`` holds what normalisation needs of the reference run's corrupted-test-split evaluation: its clean
balanced error and each corruption's balanced error averaged over severities 1-5, with the split, input size and
corruption definitions they were measured with (normalisation is refused when those differ). Regenerate with
``lesionlab evaluate RUN --corruptions all`` on a run of ``configs/cpu-lite0-64-clinical.yaml`` (seed 0) and
:func:`lesionlab.evaluate.robustness.reference_record`; docs/BENCHMARKS.md records the run.
"""

from __future__ import annotations

from typing import Any

REFERENCE: dict[str, Any] | None = None
