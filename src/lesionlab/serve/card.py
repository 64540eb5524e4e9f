"""The model card served at ``GET /v1/model``: what the model is, what it was checked on, and what it is not for.

Built from ``run.json`` and, when ``lesionlab evaluate`` has written one, the evaluation's ``model_card.json``
(``RUN/eval-test/`` first), so the card can never describe a different model from the one answering requests.
The words (intended use, known limits, serving limits) come from :mod:`lesionlab.core.card`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from lesionlab.classes import CLASSES, MALIGNANT_CODES
from lesionlab.core.card import INTENDED_USE, KNOWN_LIMITS, SERVING_LIMITS
from lesionlab.data.transforms import Preprocessing
from lesionlab.runs import RunError

EVAL_CARD_DIRS = ("eval-test", "eval-isic", "eval-val", "eval-all")


class Served(Protocol):
    """What the card describes: the service's :class:`~lesionlab.serve.service.Predictor`."""

    info: dict[str, Any]
    model_id: str
    model_version: str
    preprocessing: Preprocessing
    tta: bool
    uses_meta: bool
    temperature: float | None
    threshold: float
    threshold_source: str
    evaluation: tuple[dict[str, Any] | None, str | None]

    @property
    def backend_name(self) -> str: ...


def evaluation_card(run_dir: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """The evaluation's ``model_card.json`` and the folder it came from (``None`` before any evaluation)."""
    if run_dir is None:
        return None, None
    for name in EVAL_CARD_DIRS:
        path = run_dir / name / "model_card.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), name
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RunError(f"{path}: not valid JSON ({err}); re-run `lesionlab evaluate`") from None
    return None, None


def model_card(served: Served) -> dict[str, Any]:
    """The card as JSON-ready data (no file system paths)."""
    info = served.info
    model = info.get("model") or {}
    evaluation, eval_dir = served.evaluation
    source_size = served.preprocessing.source_size
    return {
        "model_id": served.model_id,
        "model_version": served.model_version,
        "backend": served.backend_name,
        "architecture": {k: model.get(k) for k in ("name", "timm_name", "head", "fusion", "parameters")},
        "classes": [{"index": c.index, "code": c.code, "name": c.name, "malignant": c.malignant} for c in CLASSES],
        "input": {"preprocessing": info.get("preprocessing"), "flip_averaged": served.tta,
                  "source_size": list(source_size) if source_size else None},
        "uses_metadata": served.uses_meta,
        "calibration": {"temperature": served.temperature, "applied": served.temperature is not None,
                        "fit": info.get("calibration")},
        "referral": {"rule": f"refer when p({' + '.join(MALIGNANT_CODES)}) >= threshold",
                     "threshold": served.threshold, "threshold_source": served.threshold_source,
                     "fit": info.get("referral")},
        "training": {"created": info.get("created"), "split": info.get("split"), "data": info.get("data"),
                     "best_validation": info.get("best")},
        "evaluation": evaluation,
        "evaluation_source": eval_dir,
        "intended_use": INTENDED_USE,
        "known_limits": [*KNOWN_LIMITS, *SERVING_LIMITS],
    }
