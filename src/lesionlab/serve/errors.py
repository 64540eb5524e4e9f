"""One error shape for every refusal: ``{"error": {"code", "message", "field"}}`` with a 4xx status.

Clients (the page, scripts, other services) branch on ``code``; ``message`` is for people and names the file or
field; ``field`` says which form field was wrong, so the page can point at it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesionlab.core.errors import LesionlabError

log = logging.getLogger("lesionlab.serve")


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
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    """A JSON error response in the service's one shape."""
    return JSONResponse(ServeError(status, code, message, field).body(), status_code=status)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_field"}


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the JSON error shape; bad input becomes 4xx, a real bug a logged 500."""

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

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
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); the server is still up")
