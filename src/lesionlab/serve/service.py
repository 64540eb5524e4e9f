"""The service's core, free of HTTP: validate metadata, preprocess, score, calibrate, flag, explain.

``create_app`` wraps one :class:`Predictor` per process; the ``predict`` command and the benchmarks call it
directly, so the command line, the API and the page give the same numbers for the same image.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lesionlab import __version__
from lesionlab.classes import CLASS_CODES, CLASSES, MALIGNANT_CODES, MALIGNANT_INDICES, by_code
from lesionlab.data.metadata import SEXES, SITES, normalise_sex, normalise_site
from lesionlab.runs import flip_views, softmax_np
from lesionlab.serve.backend import Backend, OnnxBackend, TorchBackend, torch_threads
from lesionlab.serve.errors import ServeError
from lesionlab.serve.explain import GradCamExplainer, overlay_png, to_image_geometry
from lesionlab.serve.onnx_export import check_onnx_matches, run_uses_meta
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


def site_vocabulary(meta_encoder: Any = None) -> tuple[str, ...]:
    """The sites a request may name: the run's encoder's (HAM10000's 14 localizations and ``unknown``)."""
    sites = tuple(getattr(meta_encoder, "sites", None) or SITES)
    return (*(s for s in sites if s != "unknown"), "unknown")


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a user-sent value, cut so that a megabyte of junk does not come back in the error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def file_digest(path: Path, n: int = 12) -> str:
    """First ``n`` hex digits of a file's SHA-256: the model version, which changes whenever the weights do."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def referral_threshold(info: dict[str, Any], settings: ServeSettings) -> tuple[float, str]:
    """The run's validation-fitted ``referral_threshold`` when present, else the documented default."""
    value = info.get("referral_threshold")
    if isinstance(value, dict):  # tolerate {"value": ..., ...} written with its provenance
        value = value.get("value", value.get("threshold"))
    if value is None:
        return settings.default_threshold, "default"
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"run.json: referral_threshold {value} is not a probability in [0, 1]")
    return value, "validation"


class Predictor:
    """One loaded run behind the service: everything a request needs, and nothing about HTTP."""

    def __init__(self, run: Any, settings: ServeSettings) -> None:
        self.run = run
        self.settings = settings
        self.info: dict[str, Any] = dict(getattr(run, "info", {}) or {})
        codes = tuple(getattr(run, "classes", CLASS_CODES))
        if codes != CLASS_CODES:
            raise ValueError(f"run classes {list(codes)} differ from the project's {list(CLASS_CODES)}")
        self.preprocessing = run.preprocessing
        self.meta_encoder = getattr(run, "meta_encoder", None)
        self.uses_meta = run_uses_meta(run)
        self.tta = bool(getattr(run, "tta", False)) if settings.tta is None else settings.tta
        source = settings.source_size
        if source is None:  # as the run records; runs from before the field have none
            source = (self.info.get("data") or {}).get("source_image_size")
        self.source_size: tuple[int, int] | None = (  # PIL's (w, h); (0, 0) switches it off
            (int(source[1]), int(source[0])) if source and min(source) > 0 else None)
        temperature = self.info.get("temperature")
        self.temperature = float(temperature) if temperature is not None else None
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"run.json: temperature {temperature!r} must be a positive number")
        self.threshold, self.threshold_source = referral_threshold(self.info, settings)
        torch_backend = TorchBackend(run.model, threads=settings.threads)
        self.backend: Backend = OnnxBackend(settings.onnx_path, settings.threads) if settings.onnx_path \
            else torch_backend
        if isinstance(self.backend, OnnxBackend):
            if self.backend.uses_meta != self.uses_meta:
                raise ValueError(f"{settings.onnx_path}: ONNX model {'has' if self.backend.uses_meta else 'lacks'} "
                                 f"a 'meta' input but the run {'uses' if self.uses_meta else 'does not use'} "
                                 "metadata; re-export it with `lesionlab export RUN --onnx`")
            check_onnx_matches(settings.onnx_path, run)
        self.explainer = GradCamExplainer(torch_backend)
        path = getattr(run, "path", None) or getattr(run, "run_dir", None)
        self.run_dir = Path(path) if path is not None else None
        config_name = (self.info.get("config") or {}).get("name")
        self.model_id = str(self.run_dir.name if self.run_dir else config_name or "model")
        weights = self.run_dir / "model.safetensors" if self.run_dir else None
        self.model_version = file_digest(weights) if weights is not None and weights.is_file() else \
            str(self.info.get("version", "unversioned"))
        self.sites = site_vocabulary(self.meta_encoder)
        from lesionlab.serve.card import evaluation_card

        self.evaluation = evaluation_card(self)  # read once: the card must not change under a running server

    # -- input checks ------------------------------------------------------------------------------------------

    def check_patient(self, age: str | float | None, sex: str | None, site: str | None, prefix: str = "") -> Patient:
        """Validate form values (strings as sent) into a :class:`Patient`; :class:`ServeError` 422 names the field.

        Sex and site are normalised as in training (case, underscores, spaces) and must then be in the HAM10000
        vocabulary: the encoder would silently map an unseen value to ``unknown``, which a typo must not become.
        """
        low, high = self.settings.age_range
        value: float | None = None
        if age is not None and str(age).strip() != "":
            try:
                value = float(str(age).strip())
            except ValueError:
                raise ServeError(422, "invalid_age", f"age {_short(age)} is not a number", prefix + "age") from None
            if not math.isfinite(value) or not low <= value <= high:
                raise ServeError(422, "age_out_of_range", f"age {_short(age)} is outside {low:g}..{high:g} years",
                                 prefix + "age")
        sex_v = normalise_sex(sex)
        if sex_v not in SEXES:
            raise ServeError(422, "unknown_sex", f"sex {_short(sex)} is not one of {', '.join(SEXES)}", prefix + "sex")
        site_v = normalise_site(site)
        if site_v not in self.sites:
            raise ServeError(422, "unknown_site", f"site {_short(site)} is not a HAM10000 site; use one of "
                             f"{', '.join(self.sites)}", prefix + "site")
        if self.meta_encoder is not None:
            try:
                self.meta_encoder.validate_one(value, sex_v, site_v)
            except ValueError as err:
                name = str(err).split(":", 1)[0]
                field = prefix + name if name in ("age", "sex", "site") else (prefix.rstrip(".") or None)
                raise ServeError(422, "invalid_metadata", str(err), field) from None
        return Patient(value, sex_v, site_v)

    # -- scoring -----------------------------------------------------------------------------------------------

    def prepare(self, image: Image.Image, patient: Patient) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model inputs of one image: the run's preprocessing, and its encoded metadata when the model uses it.

        With a ``source_size`` the image is first squashed to that size (bicubic), reproducing training images that
        were stored small (the shared 64 px HAM10000) before the run's own resize.
        """
        if self.source_size is not None and image.size != self.source_size:
            image = image.resize(self.source_size, Image.Resampling.BICUBIC)
        with torch_threads(1):
            x = self.preprocessing(image)
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        meta = None
        if self.uses_meta:
            age = float("nan") if patient.age is None else patient.age
            meta = torch.as_tensor(np.asarray(self.meta_encoder.encode_one(age, patient.sex, patient.site),
                                              dtype=np.float32))
        return x, meta

    def probabilities(self, images: torch.Tensor, meta: torch.Tensor | None) -> np.ndarray:
        """Calibrated class probabilities ``[N, 7]``: flip-averaged logits when the run was validated that way
        (its temperature and threshold were fitted on those), then the run's temperature.

        The views go through the backend as one batch, which costs less than three calls at batch 1.
        """
        views = flip_views(images) if self.tta else [images]
        x = torch.cat(views).numpy()
        m = meta.repeat(len(views), 1).numpy() if meta is not None else None
        logits = self.backend.logits(x, m).reshape(len(views), len(images), -1).mean(axis=0)
        return softmax_np(logits, self.temperature)

    def describe(self, probs: np.ndarray) -> dict[str, Any]:
        """The per-image answer: every class, the top ``k``, and the referral decision."""
        classes = [{"code": c.code, "name": c.name, "malignant": c.malignant, "probability": round(float(p), 6)}
                   for c, p in zip(CLASSES, probs, strict=True)]
        order = np.argsort(-probs, kind="stable")[: self.settings.top_k]
        malignant = float(probs[list(MALIGNANT_INDICES)].sum())
        return {
            "probabilities": classes,
            "top": [classes[i] for i in order],
            "referral": {"refer": bool(malignant >= self.threshold), "malignant_probability": round(malignant, 6),
                         "threshold": self.threshold, "threshold_source": self.threshold_source,
                         "malignant_classes": list(MALIGNANT_CODES)},
        }

    def heatmap(self, x: torch.Tensor, meta: torch.Tensor | None, class_index: int,
                image_size: tuple[int, int]) -> dict[str, Any]:
        """Grad-CAM of one class as a base64 RGBA PNG in the uploaded image's geometry."""
        hm = self.explainer.cam(x, meta, class_index)
        resize = getattr(self.preprocessing, "resize", "square")
        width, height = image_size
        scale = min(1.0, self.settings.heatmap_max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.source_size is not None:  # the model saw the squashed image: map onto it, then stretch back
            cam = to_image_geometry(to_image_geometry(hm.cam, self.source_size, resize), size, "square")
        else:
            cam = to_image_geometry(hm.cam, size, resize)
        png = overlay_png(cam, self.settings.heatmap_max_side)
        return {"method": "Grad-CAM", "class": CLASS_CODES[class_index], "layer": hm.layer,
                "width": size[0], "height": size[1], "png_base64": base64.b64encode(png).decode("ascii")}

    def predict(self, images: list[Image.Image], patients: list[Patient], names: list[str], timer: Timer,
                explain: bool = False, explain_class: str | None = None) -> list[dict[str, Any]]:
        """Score a batch of decoded images; fills ``timer`` with preprocess / model / explain times."""
        t = time.perf_counter()
        prepared = [self.prepare(im, p) for im, p in zip(images, patients, strict=True)]
        x = torch.stack([p[0] for p in prepared])
        meta = torch.stack([p[1] for p in prepared]) if self.uses_meta else None
        t = timer.add("preprocess", t)
        probs = self.probabilities(x, meta)
        t = timer.add("model", t)
        results = []
        for i, (im, patient, name) in enumerate(zip(images, patients, names, strict=True)):
            out = {"image": {"name": name, "width": im.width, "height": im.height}, **self.describe(probs[i]),
                   "metadata": {**patient.as_dict(), "used_by_model": self.uses_meta}}
            if explain:
                cls = by_code(explain_class).index if explain_class else int(np.argmax(probs[i]))
                out["heatmap"] = self.heatmap(prepared[i][0], prepared[i][1], cls, im.size)
            else:
                out["heatmap"] = None
            results.append(out)
        if explain:
            timer.add("explain", t)
        return results

    def warm_up(self) -> None:
        """Decode, preprocess and score one synthetic JPEG: first calls pay for lazy imports and allocations."""
        from lesionlab.serve.bench import jpeg_bytes, synthetic_lesion
        from lesionlab.serve.decode import decode_image

        image = decode_image(jpeg_bytes(synthetic_lesion()), self.settings, "warm-up", "image/jpeg")
        self.predict([image], [Patient()], ["warm-up"], Timer())

    def model_info(self) -> dict[str, Any]:
        """Identity of the served model, repeated in every response."""
        return {"id": self.model_id, "version": self.model_version, "backend": self.backend.name,
                "flip_averaged": self.tta, "lesionlab": __version__}

    def card(self) -> dict[str, Any]:
        """The model card: identity, classes, data, validation metrics, calibration, referral rule, limits."""
        from lesionlab.serve.card import model_card

        return model_card(self)
