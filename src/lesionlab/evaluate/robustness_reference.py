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

REFERENCE: dict[str, Any] | None = {
    "name": "cpu-lite0-64-clinical (seed 0)",
    "note": ("configs/cpu-lite0-64-clinical.yaml trained on ../shared/data (DermaMNIST-C split, seed 0; 817 s, "
             "best epoch 7 of 12), evaluated with `lesionlab evaluate RUN --calibrate --corruptions all` at "
             "commit 2c3c9d6 on 2026-12-04"),
    "corruptions_version": 1,
    "split_name": "dermamnist_c (published)",
    "n": 908,
    "image_size": [128, 128],
    "severities": [1, 2, 3, 4, 5],
    "seed": 0,
    "tta": True,
    "clean_balanced_error": 0.239665,
    "per_corruption": {
        "pixelate": {"mean_balanced_error": 0.502939},
        "jpeg_compression": {"mean_balanced_error": 0.519881},
        "gaussian_noise": {"mean_balanced_error": 0.780195},
        "speckle_noise": {"mean_balanced_error": 0.765278},
        "impulse_noise": {"mean_balanced_error": 0.720582},
        "shot_noise": {"mean_balanced_error": 0.821094},
        "defocus_blur": {"mean_balanced_error": 0.362212},
        "motion_blur": {"mean_balanced_error": 0.420362},
        "zoom_blur": {"mean_balanced_error": 0.429786},
        "brightness_up": {"mean_balanced_error": 0.419529},
        "brightness_down": {"mean_balanced_error": 0.469674},
        "contrast_up": {"mean_balanced_error": 0.331945},
        "contrast_down": {"mean_balanced_error": 0.39499},
        "black_corner": {"mean_balanced_error": 0.43636},
        "characters": {"mean_balanced_error": 0.250238},
    },
}
