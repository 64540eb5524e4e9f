"""One error shape for every refusal: ``{"error": {"code", "message", "field"}}`` with a 4xx status.

Clients (the page, scripts, other services) branch on ``code``; ``message`` is for people and names the file or
field; ``field`` says which form field was wrong, so the page can point at it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesionlab.core.errors import LesionlabError

log = logging.getLogger("lesionlab.serve")


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?!/v1/)(?:/[^\s/'\"(),;:]+){2,}/?|(?<![\w])[A-Za-z]:\\[^\s'\"(),;]+")
#: Keys of run.json and model cards whose values are file system paths: left out of every answer.
PATH_KEYS = frozenset({"path", "metadata_csv", "image_dirs", "npz", "cache_dir", "split_file", "output_dir",
                       "weights", "run_dir", "onnx_path", "image_dir"})


def clean_text(text: str) -> str:
    """A message fit for a response: no Python object reprs, and absolute paths cut to their last part."""
    text = _OBJECT_REPR.sub("the upload", text)
    return _ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m.group().rstrip("/\\"))[-1] or "<path>", text)


def redact(value: Any) -> Any:
    """``value`` without path-valued keys (:data:`PATH_KEYS`) and with :func:`clean_text` on every string."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return clean_text(value) if isinstance(value, str) else value


class ServeError(LesionlabError):
    """A request the service refuses, with the HTTP status and the machine-readable code to send back."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": {"code": self.code, "message": clean_text(self.message), "field": self.field}}


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    """A JSON error response in the service's one shape."""
    return JSONResponse(ServeError(status, code, message, field).body(), status_code=status)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "timeout", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_field"}


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the JSON error shape; bad input becomes 4xx, a real bug a logged 500."""

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        kind = first.get("type", "")
        code = "missing_field" if kind == "missing" else "invalid_field"
        where = f"field '{field}': " if field else ""
        return error_response(422, code, f"{where}{first.get('msg', 'invalid value')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); the server is still up")
