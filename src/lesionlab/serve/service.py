"""The service's core, free of HTTP: validate metadata, preprocess, score, calibrate, flag, explain.

``create_app`` wraps one :class:`Predictor` per process; the ``predict`` command and the benchmarks call it
directly, so the command line, the API and the page give the same numbers for the same image. The image goes
through the run's own :class:`~lesionlab.data.transforms.Preprocessing` (the one ``Run.predict_proba`` and
evaluation use), so the service answers exactly as the run is evaluated.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lesionlab.classes import CLASS_CODES, CLASSES, MALIGNANT_CODES, MALIGNANT_INDICES, by_code
from lesionlab.core.card import INTENDED_USE, KNOWN_LIMITS, SERVING_LIMITS
from lesionlab.core.io import file_sha256, read_json
from lesionlab.core.metrics import softmax
from lesionlab.core.version import __version__
from lesionlab.data.metadata import SITES, MetadataError, validate_patient
from lesionlab.data.transforms import Preprocessing, to_chw_tensor
from lesionlab.evaluate.subgroups import subgroup_cautions
from lesionlab.runs import (
    WEIGHTS_FILE,
    Run,
    RunError,
    check_run_use,
    features_and_logits,
    mean_logits,
    pooled_features,
    views_of,
)
from lesionlab.serve.assess import Assessor
from lesionlab.serve.backend import Backend, OnnxBackend, OnnxError, TorchBackend, torch_threads
from lesionlab.serve.decode import Decoded, decode_image, decode_upload
from lesionlab.serve.errors import ServeError, redact
from lesionlab.serve.explain import GradCamExplainer, overlay_png, to_image_geometry
from lesionlab.serve.onnx_export import check_onnx_matches, run_uses_meta
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion
from lesionlab.serve.settings import ServeSettings


@dataclass
class Timer:
    """Milliseconds per stage of one request, so the service's own overhead can be told from model time."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> float:
        """Add the time since ``start`` to ``stage``; returns now, for chaining."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + 1000.0 * (now - start)
        return now


@dataclass(frozen=True)
class Patient:
    """Validated clinical data of one image; ``None`` / ``unknown`` where not given."""

    age: float | None = None
    sex: str = "unknown"
    site: str = "unknown"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"age": self.age, "sex": self.sex, "site": self.site}


def site_vocabulary(sites: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The sites a request may name: the run's encoder's (HAM10000's 14 localizations), ``unknown`` last."""
    return (*(s for s in (sites or SITES) if s != "unknown"), "unknown")


def referral_threshold(info: dict[str, Any], settings: ServeSettings) -> tuple[float, str]:
    """The run's validation-fitted ``referral_threshold`` when present, else the documented default."""
    value = info.get("referral_threshold")
    if isinstance(value, dict):  # tolerate {"value": ..., ...} written with its provenance
        value = value.get("value", value.get("threshold"))
    if value is None:
        return settings.default_threshold, "default"
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise RunError(f"run.json: referral_threshold {value} is not a probability in [0, 1]")
    return value, "validation"


EVAL_CARD_DIRS = ("eval-test", "eval-isic", "eval-val", "eval-all")


def evaluation_card(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The evaluation's ``model_card.json`` (``RUN/eval-test/`` first) and its folder; ``None`` before any."""
    for name in EVAL_CARD_DIRS:
        path = run_dir / name / "model_card.json"
        if path.is_file():
            return read_json(path, RunError, "; re-run `lesionlab evaluate`"), name
    return None, None


def served_preprocessing(run: Run, settings: ServeSettings) -> Preprocessing:
    """The run's preprocessing, with ``settings.source_size`` instead of the run's own when one is set (0: none)."""
    if run.preprocessing is None:
        raise RunError(f"{run.path}: the run saved no preprocessing; it cannot be served")
    if settings.source_size is None:
        return run.preprocessing
    return replace(run.preprocessing, source_size=settings.source_size if min(settings.source_size) > 0 else None)


class Predictor:
    """One loaded run behind the service: everything a request needs, and nothing about HTTP."""

    def __init__(self, run: Run, settings: ServeSettings) -> None:
        if tuple(run.classes) != CLASS_CODES:
            raise RunError(f"run classes {list(run.classes)} differ from the project's {list(CLASS_CODES)}")
        self.run = run
        self.settings = settings
        self.info: dict[str, Any] = dict(run.info)
        self.preprocessing = served_preprocessing(run, settings)
        self.meta_encoder = run.meta_encoder
        self.uses_meta = run_uses_meta(run)
        self.tta = run.tta if settings.tta is None else settings.tta
        self.tta_views = run.tta_views
        temperature = self.info.get("temperature")
        self.temperature = float(temperature) if temperature is not None else None
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise RunError(f"run.json: temperature {temperature!r} must be a positive number")
        self.threshold, self.threshold_source = referral_threshold(self.info, settings)
        self.warnings = check_run_use(run.path, run.info, "serve", settings.allow_unfinished, settings.allow_synthetic)
        self.assessor = Assessor(run.scope, run.uncertainty_threshold, run.degradation)
        self.warnings += self.assessor.missing()
        size, source = self.preprocessing.size, self.preprocessing.source_size
        self.max_pixels = settings.pixel_limit(size)
        self.need = max(*size, *(source or (0, 0)))  # the longest side the preprocessing uses
        self.decode_slots = threading.BoundedSemaphore(settings.max_decodes)
        torch_backend = TorchBackend(run.model, threads=settings.threads)
        self.torch_backend = torch_backend
        self.backend: Backend = self._onnx_backend(settings) if settings.onnx_path else torch_backend
        self.explainer = GradCamExplainer(torch_backend)
        self.run_dir = Path(run.path)
        self.model_id = self.run_dir.name
        weights = self.run_dir / WEIGHTS_FILE
        self.model_version = file_sha256(weights)[:12] if weights.is_file() else "unversioned"
        self.sites = site_vocabulary(self.meta_encoder.sites if self.meta_encoder is not None else None)
        self.evaluation = evaluation_card(self.run_dir)  # read once: the card must not change under a running server
        card, eval_dir = self.evaluation
        self.subgroups = card.get("subgroups") if isinstance(card, dict) else None
        self.subgroups_source = eval_dir

    def cautions(self, patient: Patient) -> list[dict[str, Any]]:
        """The subgroups its evaluation flagged as less accurate that this patient belongs to (empty before any
        evaluation, or when none was flagged)."""
        return subgroup_cautions(self.subgroups, patient.age, patient.sex, patient.site, self.subgroups_source)

    def _onnx_backend(self, settings: ServeSettings) -> OnnxBackend:
        backend = OnnxBackend(str(settings.onnx_path), settings.threads)
        if backend.uses_meta != self.uses_meta:
            raise OnnxError(f"{settings.onnx_path}: ONNX model {'has' if backend.uses_meta else 'lacks'} a 'meta' "
                            f"input but the run {'uses' if self.uses_meta else 'does not use'} metadata; re-export "
                            "it with `lesionlab export RUN --onnx`")
        check_onnx_matches(str(settings.onnx_path), self.run)
        return backend

    @property
    def source_size(self) -> tuple[int, int] | None:
        """The size uploads are squashed to first, as PIL's (width, height); ``None``: not squashed."""
        size = self.preprocessing.source_size
        return (size[1], size[0]) if size else None

    # -- input checks ------------------------------------------------------------------------------------------

    def check_patient(self, age: str | float | None, sex: str | None, site: str | None, prefix: str = "") -> Patient:
        """Validate form values (strings as sent) into a :class:`Patient`; :class:`ServeError` 422 names the field
        (the data layer's :func:`~lesionlab.data.metadata.validate_patient`, with the service's age range)."""
        try:
            value, sex_v, site_v = validate_patient(age, sex, site, sites=self.sites, age_range=self.settings.age_range)
        except MetadataError as err:
            raise ServeError(422, err.code, str(err), prefix + err.field) from None
        return Patient(value, sex_v, site_v)

    def decode(self, data: bytes, name: str, content_type: str | None, field: str) -> Decoded:
        """Decode an upload with the run's pixel limit and JPEG draft size, at most ``max_decodes`` at a time
        (a request that waits longer than ``decode_wait_s`` for a slot gets 503 with Retry-After)."""
        if not self.decode_slots.acquire(timeout=self.settings.decode_wait_s):
            raise ServeError(503, "busy", f"{name}: the server is decoding {self.settings.max_decodes} images "
                             f"already and none finished within {self.settings.decode_wait_s:g} s; retry shortly",
                             field)
        try:
            return decode_upload(data, self.settings, name, content_type, field, need=self.need,
                                 max_pixels=self.max_pixels)
        finally:
            self.decode_slots.release()

    # -- scoring -----------------------------------------------------------------------------------------------

    def prepare(self, image: Image.Image, patient: Patient) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model inputs of one image: the run's preprocessing, and its encoded metadata when the model uses it."""
        return self._prepare(image, patient)[:2]

    def _prepare(self, image: Image.Image, patient: Patient
                 ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        with torch_threads(1):
            pixels = self.preprocessing.resize_image(image)
            x = self.preprocessing.normalize(to_chw_tensor(pixels))
        meta = None
        if self.uses_meta and self.meta_encoder is not None:
            age = float("nan") if patient.age is None else patient.age
            meta = torch.as_tensor(self.meta_encoder.encode_one(age, patient.sex, patient.site), dtype=torch.float32)
        return x, meta, pixels

    def _backend_logits(self, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        return torch.from_numpy(self.backend.logits(x.numpy(), meta.numpy() if meta is not None else None))

    def probabilities(self, images: torch.Tensor, meta: torch.Tensor | None) -> np.ndarray:
        """Calibrated class probabilities ``[N, 7]``: logits averaged over the run's test-time views when it was
        validated that way (its temperature and threshold were fitted on those), then the run's temperature.

        The views go through the backend as one batch, which costs less than one call per view at batch 1.
        """
        return self.scores(images, meta)[0]

    def scores(self, images: torch.Tensor, meta: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`probabilities` and the (view-averaged, unscaled) logits they come from."""
        views = views_of(images, self.tta_views) if self.tta else [images]
        logits = mean_logits(self._backend_logits, views, meta, batched=True).numpy()
        return softmax(logits, self.temperature), logits

    def scores_and_features(self, images: torch.Tensor, meta: torch.Tensor | None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`scores` and, when the safety checks read them, :meth:`features`: from the same backbone pass when
        PyTorch scores (the image's own features are the first rows of the views' batch), else two calls."""
        if not self.assessor.needs_features:
            return (*self.scores(images, meta), None)
        if self.backend is not self.torch_backend or not hasattr(self.run.model, "forward_head"):  # ONNX, ensembles
            probs, logits = self.scores(images, meta)
            return probs, logits, self.features(images)

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode():
                return features_and_logits(self.run.model, images, meta, self.tta, self.tta_views, batched=True)

        feats, logits_t = self.torch_backend.call(run)
        logits = logits_t.numpy()
        return softmax(logits, self.temperature), logits, feats.numpy()

    def features(self, images: torch.Tensor) -> np.ndarray:
        """The run's pooled image features (PyTorch, also when ONNX Runtime scores): the scope gate's input."""
        def run() -> np.ndarray:
            with torch.inference_mode():
                return pooled_features(self.run.model, images).numpy()

        return self.torch_backend.call(run)

    def describe(self, probs: np.ndarray, assessment: dict[str, Any] | None = None) -> dict[str, Any]:
        """The per-image answer: every class, the top ``k``, and the referral decision (withheld, ``refer: null``,
        when the image cannot be assessed)."""
        classes = [{"code": c.code, "name": c.name, "malignant": c.malignant, "probability": round(float(p), 6)}
                   for c, p in zip(CLASSES, probs, strict=True)]
        order = np.argsort(-probs, kind="stable")[: self.settings.top_k]
        malignant = float(probs[list(MALIGNANT_INDICES)].sum())
        withheld = bool(assessment and assessment["assessment"]["status"] == "cannot_assess")
        return {
            **(assessment or {}),
            "probabilities": classes,
            "top": [classes[i] for i in order],
            "referral": {"refer": None if withheld else bool(malignant >= self.threshold),
                         "malignant_probability": round(malignant, 6), "threshold": self.threshold,
                         "threshold_source": self.threshold_source, "malignant_classes": list(MALIGNANT_CODES)},
        }

    def heatmap(self, x: torch.Tensor, meta: torch.Tensor | None, class_index: int,
                image_size: tuple[int, int]) -> dict[str, Any]:
        """Grad-CAM of one class as a base64 RGBA PNG in the uploaded image's geometry."""
        hm = self.explainer.cam(x, meta, class_index)
        width, height = image_size
        scale = min(1.0, self.settings.heatmap_max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resize = self.preprocessing.resize
        if self.source_size is not None:  # the model saw the squashed image: map onto it, then stretch back
            cam = to_image_geometry(to_image_geometry(hm.cam, self.source_size, resize), size, "square")
        else:
            cam = to_image_geometry(hm.cam, size, resize)
        png = overlay_png(cam, self.settings.heatmap_max_side)
        return {"method": "Grad-CAM", "class": CLASS_CODES[class_index], "layer": hm.layer,
                "width": size[0], "height": size[1], "png_base64": base64.b64encode(png).decode("ascii")}

    def predict(self, images: list[Image.Image | Decoded], patients: list[Patient], names: list[str], timer: Timer,
                explain: bool = False, explain_class: str | None = None) -> list[dict[str, Any]]:
        """Score a batch of decoded images; fills ``timer`` with preprocess / model / explain times."""
        t = time.perf_counter()
        decoded = [d if isinstance(d, Decoded) else Decoded(d, d.width, d.height, d.mode) for d in images]
        prepared = [self._prepare(d.image, p) for d, p in zip(decoded, patients, strict=True)]
        x = torch.stack([p[0] for p in prepared])
        meta = torch.stack([p[1] for p in prepared if p[1] is not None]) if self.uses_meta else None
        t = timer.add("preprocess", t)
        probs, logits, features = self.scores_and_features(x, meta)
        assessed = self.assessor.assess([p[2] for p in prepared], features, logits, probs)
        t = timer.add("model", t)
        results = []
        for i, (d, patient, name) in enumerate(zip(decoded, patients, names, strict=True)):
            out = {"image": {"name": name, "width": d.width, "height": d.height, "mode": d.mode, "notes": d.notes},
                   **self.describe(probs[i], assessed[i]),
                   "metadata": {**patient.as_dict(), "used_by_model": self.uses_meta},
                   "cautions": self.cautions(patient)}
            if explain and assessed[i]["assessment"]["status"] != "cannot_assess":  # no verdict, nothing to explain
                cls = by_code(explain_class).index if explain_class else int(np.argmax(probs[i]))
                out["heatmap"] = self.heatmap(prepared[i][0], prepared[i][1], cls, d.image.size)
            else:
                out["heatmap"] = None
            results.append(out)
        if explain:
            timer.add("explain", t)
        return results

    def warm_up(self) -> None:
        """Decode, preprocess and score one synthetic JPEG: first calls pay for lazy imports and allocations."""
        image = decode_image(jpeg_bytes(synthetic_lesion()), self.settings, "warm-up", "image/jpeg")
        self.predict([image], [Patient()], ["warm-up"], Timer())

    def model_info(self) -> dict[str, Any]:
        """Identity of the served model, repeated in every response."""
        return {"id": self.model_id, "version": self.model_version, "backend": self.backend.name,
                "flip_averaged": self.tta, "tta_views": self.tta_views, "lesionlab": __version__,
                "warnings": list(self.warnings)}

    def card(self) -> dict[str, Any]:
        """The model card of ``GET /v1/model``: identity, classes, data, validation and evaluation figures,
        calibration, referral rule, intended use and limits; from run.json and the evaluation's model_card.json,
        so it can never describe another model than the one answering (no file system paths)."""
        model = self.info.get("model") or {}
        evaluation, eval_dir = self.evaluation
        source_size = self.preprocessing.source_size
        return redact({
            "model_id": self.model_id, "model_version": self.model_version, "backend": self.backend.name,
            "architecture": {k: model.get(k) for k in ("name", "timm_name", "head", "fusion", "parameters")},
            "classes": [{"index": c.index, "code": c.code, "name": c.name, "malignant": c.malignant} for c in CLASSES],
            "input": {"preprocessing": self.info.get("preprocessing"), "flip_averaged": self.tta,
                      "tta_views": self.tta_views,
                      "source_size": list(source_size) if source_size else None},
            "uses_metadata": self.uses_meta,
            "calibration": {"temperature": self.temperature, "applied": self.temperature is not None,
                            "fit": self.info.get("calibration")},
            "referral": {"rule": f"refer when p({' + '.join(MALIGNANT_CODES)}) >= threshold",
                         "threshold": self.threshold, "threshold_source": self.threshold_source,
                         "fit": self.info.get("referral")},
            "training": {"created": self.info.get("created"), "split": self.info.get("split"),
                         "data": self.info.get("data"), "best_validation": self.info.get("best")},
            "evaluation": evaluation, "evaluation_source": eval_dir,
            "scope": {"gate": self.info.get("scope"), "uncertainty": self.info.get("uncertainty")},
            "warnings": list(self.warnings),
            "intended_use": INTENDED_USE, "known_limits": [*KNOWN_LIMITS, *SERVING_LIMITS],
        })
