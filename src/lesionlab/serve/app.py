"""The FastAPI application: ``create_app(run_or_path, settings)`` builds it, ``lesionlab serve`` runs it.

Endpoints are synchronous on purpose: decoding and inference are CPU work, so FastAPI runs them in its worker
threads and the event loop keeps answering ``/healthz`` and refusals while a prediction is being computed.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lesionlab.classes import UnknownClassError, by_code
from lesionlab.core.io import sweep_stale_temporaries
from lesionlab.core.version import __version__
from lesionlab.data.metadata import SEXES
from lesionlab.runs import Run, load_run
from lesionlab.serve.contract import BATCH_FIELDS, SINGLE_FIELDS, install_openapi, known_fields
from lesionlab.serve.errors import ServeError, error_response, install_error_handlers, log
from lesionlab.serve.schemas import ERRORS, BatchResponse, PredictResponse
from lesionlab.serve.service import Patient, Predictor, Timer
from lesionlab.serve.settings import ServeSettings

FORM_OVERHEAD = 256 * 1024  # multipart boundaries, headers and the small text fields around the images

DESCRIPTION = """Decision support for dermoscopy images of pigmented skin lesions (HAM10000's seven classes).

Every answer says whether the image can be judged at all (`assessment`): `cannot_assess` when it does not look like
the dermoscopy images the model was trained on (`scope`, a Mahalanobis-distance gate fitted on the run's validation
data) or fails the image-quality check (`quality`: too dark, too bright, blurred, mostly one colour), and then no
referral flag is given (`referral.refer` is null); `uncertain` when the two most likely classes are too close to
call (`uncertainty`). A model that was not trained to the end, or on synthetic images, is only served when asked
explicitly, and every answer then carries `warnings`.

Every error is JSON `{"error": {"code", "message", "field"}}` with a 4xx status (503 when busy). Probabilities use
the run's temperature when `lesionlab evaluate --calibrate` fitted one; the referral flag compares the summed
probability of the malignant classes (mel, bcc, akiec) with the run's validation-fitted `referral_threshold`, or
with the default (0.5) when none was fitted, and says which in `threshold_source`. Research use only: see
`GET /v1/model`.
"""


def static_dir() -> Path:
    """The page's files, shipped as package data."""
    return Path(str(resources.files("lesionlab.serve") / "static"))


class UploadGuard:
    """Checks on prediction uploads before any body is parsed: multipart only (415), a byte limit (413) and read
    timeouts (408).

    The limit covers the whole body (every image plus form overhead); a declared ``Content-Length`` over it is
    refused at once, and a body without one is counted as it arrives and cut off at the limit. A client that pauses
    longer than ``read_timeout_s`` between two chunks, or takes longer than ``body_timeout_s`` for the whole body
    (a slow-upload attack holding a worker), is answered 408.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], read_timeout_s: float = 10.0,
                 body_timeout_s: float = 60.0) -> None:
        self.app = app
        self.limits = limits  # path -> largest body in bytes
        self.read_timeout_s = read_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            response = error_response(415, "not_multipart", f"send the image as multipart/form-data (a form upload "
                                      f"with field 'image'), not {ctype or 'no content type'!r}")
            await response(scope, receive, send)
            return
        too_large = f"request body is over the limit of {limit:,} bytes for {scope['path']}"
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, "too_large", too_large)(scope, receive, send)
            return
        seen, done = 0, False
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def counted() -> Message:
            nonlocal seen, done
            if done:  # the body is complete: later receives wait for a disconnect, untimed
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, min(self.read_timeout_s, left)))
            except asyncio.TimeoutError:
                raise StarletteHTTPException(408, f"the request body did not arrive in time (no data for "
                                                  f"{self.read_timeout_s:g} s, or over {self.body_timeout_s:g} s in "
                                                  "all)") from None
            seen += len(message.get("body", b""))
            done = message.get("type") != "http.request" or not message.get("more_body", False)
            if seen > limit:
                raise StarletteHTTPException(413, too_large)  # FastAPI re-raises HTTP errors met while parsing
            return message

        await self.app(scope, counted, send)


def _load(run_or_path: Run | str | Path) -> Run:
    return load_run(run_or_path) if isinstance(run_or_path, (str, Path)) else run_or_path


def _pick(values: list[str] | None, n: int, name: str) -> list[str | None]:
    """Per-image form values for a batch: none, one for all images, or exactly one per image."""
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ServeError(422, "field_count_mismatch",
                         f"{len(values)} values of '{name}' for {n} images: send none, one, or one per image", name)
    return list(values)


def _read_upload(upload: UploadFile, field: str, settings: ServeSettings) -> tuple[bytes, str]:
    name = upload.filename or field
    if upload.size is not None and upload.size > settings.max_bytes:
        raise ServeError(413, "too_many_bytes", f"{name}: {upload.size:,} bytes is over the limit of "
                         f"{settings.max_bytes:,} bytes", field)
    return upload.file.read(settings.max_bytes + 1), name


def run_predict(predictor: Predictor, uploads: list[UploadFile], patients: list[Patient], fields: list[str],
                explain: bool, explain_class: str | None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Decode the uploads and score them; returns the per-image answers and the timing in milliseconds."""
    settings = predictor.settings
    start = time.perf_counter()
    timer = Timer()
    images, names = [], []
    for upload, field in zip(uploads, fields, strict=True):
        data, name = _read_upload(upload, field, settings)
        images.append(predictor.decode(data, name, upload.content_type, field))
        names.append(name)
    timer.add("decode", start)
    results = predictor.predict(images, patients, names, timer, explain=explain, explain_class=explain_class)
    timer.add("total", start)
    timing = {k: round(v, 3) for k, v in timer.stages.items()}
    timing["overhead"] = round(timing["total"] - timing.get("model", 0.0) - timing.get("explain", 0.0), 3)
    return results, timing


def _info_routes(app: FastAPI, predictor: Predictor) -> None:
    settings = predictor.settings

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness: the model is loaded and answering", response_model=dict[str, Any])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_info()}

    @app.get("/v1/model", summary="The model card")
    def model_card() -> dict[str, Any]:
        return predictor.card()

    @app.get("/v1/options", summary="Accepted values and limits, for forms")
    def options() -> dict[str, Any]:
        return {"sexes": list(SEXES), "sites": list(predictor.sites), "age_range": list(settings.age_range),
                "max_bytes": settings.max_bytes, "max_pixels": predictor.max_pixels, "max_batch": settings.max_batch,
                "image_modes": settings.image_modes,
                "content_types": list(settings.content_types), "uses_metadata": predictor.uses_meta}


def _predict_routes(app: FastAPI, predictor: Predictor) -> None:
    settings = predictor.settings

    @app.post("/v1/predict", summary="Classify one image", response_model=PredictResponse, responses=ERRORS,
              dependencies=[Depends(known_fields(SINGLE_FIELDS))])
    def predict(image: Annotated[UploadFile, File(description="the dermoscopy image (JPEG, PNG, ...)")],
                age: Annotated[str | None, Form(description="years")] = None,
                sex: Annotated[str | None, Form(description="male, female or unknown")] = None,
                site: Annotated[str | None, Form(description="HAM10000 localization")] = None,
                explain: Annotated[bool, Form(description="add a Grad-CAM heatmap overlay (PNG)")] = False,
                explain_class: Annotated[str | None, Form(description="class code to explain (implies explain); "
                                                              "default the top-1 class")] = None) -> JSONResponse:
        patient = predictor.check_patient(age, sex, site)
        if explain_class:
            try:
                explain_class = by_code(explain_class).code
            except UnknownClassError as err:
                raise ServeError(422, "unknown_class", str(err), "explain_class") from None
            explain = True
        results, timing = run_predict(predictor, [image], [patient], ["image"], explain, explain_class)
        body = {"model": predictor.model_info(), **results[0], "temperature": predictor.temperature,
                "warnings": predictor.warnings, "timing_ms": timing}
        return JSONResponse(body)

    @app.post("/v1/predict/batch", summary="Classify several images", response_model=BatchResponse,
              responses=ERRORS, dependencies=[Depends(known_fields(BATCH_FIELDS))])
    def predict_batch(images: Annotated[list[UploadFile], File(description="the images, as repeated 'images'")],
                      age: Annotated[list[str] | None, Form(description="none, one, or one per image")] = None,
                      sex: Annotated[list[str] | None, Form()] = None,
                      site: Annotated[list[str] | None, Form()] = None,
                      explain: Annotated[bool, Form()] = False) -> JSONResponse:
        n = len(images)
        if n > settings.max_batch:
            raise ServeError(413, "too_many_images", f"{n} images in one batch; the limit is {settings.max_batch}",
                             "images")
        ages, sexes, sites = _pick(age, n, "age"), _pick(sex, n, "sex"), _pick(site, n, "site")
        rows = enumerate(zip(ages, sexes, sites, strict=True))
        patients = [predictor.check_patient(a, s, t, prefix=f"images[{i}]." if n > 1 else "") for i, (a, s, t) in rows]
        fields = [f"images[{i}]" for i in range(n)]
        results, timing = run_predict(predictor, images, patients, fields, explain, None)
        return JSONResponse({"model": predictor.model_info(), "temperature": predictor.temperature,
                             "warnings": predictor.warnings, "results": results, "timing_ms": timing})


def create_app(run_or_path: Run | str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service for one run (a loaded ``Run`` or its directory); pure apart from loading the model."""
    settings = settings or ServeSettings()
    run = _load(run_or_path)
    for tmp in sweep_stale_temporaries(run.path):  # an hour old or more: never a write in progress
        log.warning("removed %s, left by a process that was killed mid-write", tmp)
    predictor = Predictor(run, settings)
    if settings.warmup:
        predictor.warm_up()
    app = FastAPI(title="lesionlab decision support", version=__version__, description=DESCRIPTION)
    app.state.predictor = predictor
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(UploadGuard, limits={
        "/v1/predict": settings.max_bytes + FORM_OVERHEAD,
        "/v1/predict/batch": settings.max_batch * settings.max_bytes + FORM_OVERHEAD},
        read_timeout_s=settings.read_timeout_s, body_timeout_s=settings.body_timeout_s)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    _info_routes(app, predictor)
    _predict_routes(app, predictor)
    install_openapi(app, predictor)
    return app
