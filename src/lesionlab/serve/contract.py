"""The API contract: the OpenAPI schema says exactly what the server accepts, and the server refuses the rest.

FastAPI's generated schema describes every form field as a free string and admits any extra field and an empty
image. :func:`install_openapi` replaces those descriptions with what :class:`~lesionlab.serve.service.Predictor`
really checks (age as a number in the service's range, sex and site from the run's vocabulary, a non-empty image,
no other fields), so a client generated from the schema, or a schema-driven fuzzer, sends what the server takes;
:func:`known_fields` makes the server refuse the fields the schema does not list.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from lesionlab.classes import CLASS_CODES
from lesionlab.data.metadata import SEXES
from lesionlab.serve.errors import ServeError

if TYPE_CHECKING:
    from lesionlab.serve.service import Predictor

SINGLE_FIELDS = ("image", "age", "sex", "site", "explain", "explain_class")
BATCH_FIELDS = ("images", "age", "sex", "site", "explain")


def known_fields(allowed: tuple[str, ...]) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency refusing (422) a form field that the endpoint does not know, naming it."""

    async def check(request: Request) -> None:
        form = await request.form()  # parsed once by Starlette; FastAPI reads the same cached form
        unknown = sorted(set(form.keys()) - set(allowed))
        if unknown and allowed[0] in form:  # a missing image is the first thing to say (FastAPI says it)
            raise ServeError(422, "unknown_field", f"unknown form field {unknown[0]!r}; this endpoint takes "
                             f"{', '.join(allowed)}", unknown[0])

    return check


def _field_schemas(predictor: Predictor) -> dict[str, dict[str, Any]]:
    lo, hi = predictor.settings.age_range
    return {
        "age": {"type": "number", "minimum": lo, "maximum": hi, "description": "years"},
        "sex": {"type": "string", "enum": list(SEXES)},
        "site": {"type": "string", "enum": list(predictor.sites), "description": "HAM10000 localization"},
        "explain": {"type": "boolean", "default": False},
        "explain_class": {"type": "string", "enum": list(CLASS_CODES),
                          "description": "class to explain (implies explain); default the top-1 class"},
    }


def _image_schema(predictor: Predictor) -> dict[str, Any]:
    settings = predictor.settings
    return {"type": "string", "format": "binary", "minLength": 1, "maxLength": settings.max_bytes,
            "description": f"the dermoscopy image: {', '.join(settings.content_types)}; at most "
                           f"{settings.max_bytes:,} bytes and {predictor.max_pixels:,} pixels decoded"}


def tighten(schema: dict[str, Any], predictor: Predictor) -> dict[str, Any]:
    """Replace the form bodies' generic field schemas with the checks the service applies (see module doc)."""
    fields = _field_schemas(predictor)
    for name, body in (schema.get("components", {}).get("schemas", {})).items():
        if not name.startswith("Body_predict"):
            continue
        props = body.get("properties", {})
        batch = "images" in props
        for key in list(props):
            if key in fields:
                one = fields[key]
                props[key] = {"type": "array", "items": one, "maxItems": predictor.settings.max_batch,
                              "description": "none, one for all images, or one per image"} if batch and \
                    key != "explain" else one
        if "image" in props:
            props["image"] = _image_schema(predictor)
        if batch:
            props["images"] = {"type": "array", "items": _image_schema(predictor), "minItems": 1,
                               "maxItems": predictor.settings.max_batch}
        body["additionalProperties"] = False
    return schema


def install_openapi(app: FastAPI, predictor: Predictor) -> None:
    """Serve the tightened schema at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = tighten(get_openapi(title=app.title, version=app.version,
                                                     description=app.description, routes=app.routes), predictor)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
