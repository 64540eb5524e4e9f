"""The model card served at ``GET /v1/model``: what the model is, what it was checked on, and what it is not for.

Built from ``run.json`` and, when ``lesionlab evaluate`` has written one, the evaluation's ``model_card.json``
(``RUN/eval-test/`` first), so the card can never describe a different model from the one answering requests.
Intended use and known limits are the evaluation report's own text, plus what is specific to serving.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lesionlab.classes import CLASSES, MALIGNANT_CODES
from lesionlab.evaluate.report import INTENDED_USE, KNOWN_LIMITS

if TYPE_CHECKING:
    from lesionlab.serve.service import Predictor

SERVING_LIMITS = (
    "The referral flag compares the summed probability of mel, bcc and akiec with one threshold; its sensitivity on "
    "new patients is unknown. With threshold_source 'default' the threshold was not fitted on validation data.",
    "Grad-CAM heatmaps show which regions raised the class score, not why; they are not evidence for a diagnosis.",
)
EVAL_CARD_DIRS = ("eval-test", "eval-isic", "eval-val", "eval-all")


def evaluation_card(predictor: Predictor) -> tuple[dict[str, Any] | None, str | None]:
    """The evaluation's ``model_card.json`` and the folder it came from (``None`` before any evaluation)."""
    if predictor.run_dir is None:
        return None, None
    for name in EVAL_CARD_DIRS:
        path = predictor.run_dir / name / "model_card.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), name
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: not valid JSON ({err}); re-run `lesionlab evaluate`") from None
    return None, None


def model_card(predictor: Predictor) -> dict[str, Any]:
    """The card as JSON-ready data (no file system paths)."""
    info = predictor.info
    model = info.get("model") or {}
    evaluation, eval_dir = predictor.evaluation
    card: dict[str, Any] = {
        "model_id": predictor.model_id,
        "model_version": predictor.model_version,
        "backend": predictor.backend.name,
        "architecture": {k: model.get(k) for k in ("name", "timm_name", "head", "fusion", "parameters")},
        "classes": [{"index": c.index, "code": c.code, "name": c.name, "malignant": c.malignant} for c in CLASSES],
        "input": {"preprocessing": info.get("preprocessing"), "flip_averaged": predictor.tta,
                  "source_size": list(predictor.source_size[::-1]) if predictor.source_size else None},
        "uses_metadata": predictor.uses_meta,
        "calibration": {"temperature": predictor.temperature, "applied": predictor.temperature is not None,
                        "fit": info.get("calibration")},
        "referral": {"rule": f"refer when p({' + '.join(MALIGNANT_CODES)}) >= threshold",
                     "threshold": predictor.threshold, "threshold_source": predictor.threshold_source,
                     "fit": info.get("referral")},
        "training": {"created": info.get("created"), "split": info.get("split"), "data": info.get("data"),
                     "best_validation": info.get("best")},
        "evaluation": evaluation,
        "evaluation_source": eval_dir,
        "intended_use": INTENDED_USE,
        "known_limits": [*KNOWN_LIMITS, *SERVING_LIMITS],
    }
    return card
