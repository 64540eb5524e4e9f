"""Whether the service may give a verdict for an image: in scope, good enough to judge, and decided.

Every answer carries an ``assessment``: ``assessed`` (a class and a referral flag), ``uncertain`` (the model
abstains between its two leading classes; the referral flag stands, since it sums the malignant classes), or
``cannot_assess`` (out of scope, or the image quality fails, the degradation detector included): then no referral
flag and no verdict are given.
The checks and their thresholds come from the run (:mod:`lesionlab.core.scope`, fitted by
``lesionlab evaluate RUN --calibrate``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lesionlab.core.scope import (
    DegradationCheck,
    ScopeGate,
    assessment_state,
    margins,
    quality_flags,
    quality_measures,
)

OUT_OF_SCOPE = ("cannot assess: this does not look like a dermoscopy image of the kind the model was trained on")
QUALITY_WORDS = {"too_dark": "too dark", "too_bright": "too bright (over-exposed)", "blurred": "blurred",
                 "one_colour": "mostly one colour",
                 "degraded": "degraded (noisy, blurred, pixelated, compressed or badly lit, as the model sees it)"}
FEATURE_METHODS = ("mahalanobis", "knn")


def cannot_assess_quality(flags: list[str]) -> str:
    """The page's words for a failed quality check."""
    return (f"cannot assess: the image is {' and '.join(QUALITY_WORDS[f] for f in flags)}; take the picture again "
            "(in focus, evenly lit, the lesion filling the frame)")


class Assessor:
    """The run's scope gate, degradation detector and abstention margin, applied to one batch of scored images."""

    def __init__(self, gate: ScopeGate | None, uncertainty_threshold: float | None,
                 degradation: DegradationCheck | None = None) -> None:
        self.gate = gate
        self.uncertainty_threshold = uncertainty_threshold
        self.degradation = degradation

    @property
    def needs_features(self) -> bool:
        """Whether a check reads the penultimate features (else logits or probabilities suffice)."""
        return (self.gate is not None and self.gate.method in FEATURE_METHODS) or self.degradation is not None

    def missing(self) -> list[str]:
        """Warnings for a run whose checks were never fitted."""
        out = []
        if self.gate is None:
            out.append("No out-of-scope gate was fitted for this run (lesionlab evaluate RUN --calibrate): images "
                       "that are not dermoscopy are not recognised.")
        if self.uncertainty_threshold is None:
            out.append("No abstention threshold was fitted for this run (lesionlab evaluate RUN --calibrate): "
                       "uncertain predictions are not marked.")
        if self.degradation is None:
            out.append("No degradation check was fitted for this run (lesionlab evaluate RUN --calibrate): noisy, "
                       "blurred or badly lit images the gate lets through are answered.")
        return out

    def assess(self, pixels: list[np.ndarray], features: np.ndarray | None, logits: np.ndarray,
               probs: np.ndarray) -> list[dict[str, Any]]:
        """Per image: ``assessment``, ``scope``, ``quality`` and ``uncertainty`` blocks of the answer."""
        scores = None
        if self.gate is not None:
            scores = self.gate.score(features if features is not None else np.zeros((len(probs), 0)), logits, probs)
        degraded = None
        if self.degradation is not None:
            if features is None:
                raise ValueError("the degradation check needs the penultimate features")
            degraded = self.degradation.score(features)
        m = margins(probs)
        out = []
        for i, px in enumerate(pixels):
            measures = quality_measures(px)
            flags = quality_flags(measures)
            if degraded is not None and self.degradation.degraded(degraded[i]):  # type: ignore[union-attr]
                flags.append("degraded")
            in_scope = None if scores is None else bool(scores[i] <= self.gate.threshold)  # type: ignore[union-attr]
            uncertain = None if self.uncertainty_threshold is None else bool(m[i] < self.uncertainty_threshold)
            out.append({
                "assessment": _status(in_scope, flags, uncertain),
                "scope": {"in_scope": in_scope, "score": None if scores is None else round(float(scores[i]), 6),
                          "threshold": None if self.gate is None else self.gate.threshold,
                          "method": None if self.gate is None else self.gate.method},
                "quality": {"ok": not flags, "flags": flags, **{k: round(v, 4) for k, v in measures.items()},
                            "degradation_score": None if degraded is None else round(float(degraded[i]), 4),
                            "degradation_threshold": None if self.degradation is None
                            else round(self.degradation.threshold, 4)},
                "uncertainty": {"uncertain": uncertain, "margin": round(float(m[i]), 6),
                                "threshold": self.uncertainty_threshold},
            })
        return out


def _status(in_scope: bool | None, flags: list[str], uncertain: bool | None) -> dict[str, Any]:
    state = assessment_state(in_scope, not flags, uncertain)
    if state == "cannot_assess" and in_scope is False:
        return {"status": state, "reasons": ["out_of_scope", *flags], "message": OUT_OF_SCOPE}
    if state == "cannot_assess":
        return {"status": state, "reasons": flags, "message": cannot_assess_quality(flags)}
    if state == "uncertain":
        return {"status": state, "reasons": ["small_margin"],
                "message": "uncertain: the model cannot decide between its two most likely classes; it abstains"}
    return {"status": "assessed", "reasons": [], "message": "assessed"}
