"""The reader-study web app: ``create_study_app(folder)`` builds it, ``lesionlab study serve STUDY`` runs it.

Participant API (``Authorization: Bearer <invite token>``; the page keeps the token from the link's fragment):

- ``GET /api/state``: the study's texts, the answer form, consent, progress (read-only).
- ``POST /api/consent``: record consent.
- ``POST /api/next`` ``{"start_session": k?}``: the current case (recording when it was first served), a break
  before a new session, or ``finished``.
- ``POST /api/answer`` ``{"item", "step", "answer", "confidence", "management", "elapsed_ms", "timeout"}``: store
  one answer; a repeat returns the stored answer. The page asks for the next case only after this confirms.
- ``GET /api/image/{key}``, ``GET /api/heatmap/{key}``: the current case's image and heatmap (PNG, opaque keys).

Admin API (``Authorization: Bearer <admin token>``): ``GET /api/admin/progress``, ``GET /api/admin/export.csv``,
``POST /api/admin/close``. Pages: ``/join`` (participants), ``/admin`` (progress). Every error is the service's
JSON shape ``{"error": {"code", "message", "field"}}`` with a 4xx status.

Endpoints are synchronous (FastAPI runs them in worker threads); each request is one database transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lesionlab.core.version import __version__
from lesionlab.serve.errors import error_response, install_error_handlers
from lesionlab.study import participation as P
from lesionlab.study.errors import StudyRequestError
from lesionlab.study.folder import StudyFolder
from lesionlab.study.storage import Study

Auth = Annotated[str | None, Header(description="Bearer <token>")]  # module level: annotations are resolved here
MAX_BODY_BYTES = 16 * 1024  # an answer is a few hundred bytes

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
)


def static_dir() -> Path:
    """The participant and admin pages, shipped as package data."""
    return Path(str(resources.files("lesionlab.study") / "static"))


class Guard:
    """Security headers on every response, and a small body limit (413) on every POST, before any parsing."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] == "POST":
            declared = dict(scope.get("headers") or []).get(b"content-length", b"").decode("latin-1")
            too_large = f"request body is over the limit of {self.max_body:,} bytes"
            if declared.isdigit() and int(declared) > self.max_body:
                await error_response(413, "too_large", too_large)(scope, receive, send_with_headers)
                return
            seen = 0

            async def counted() -> Message:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # FastAPI re-raises HTTP errors met while parsing (others become 400)
                    raise StarletteHTTPException(413, too_large)
                return message

            await self.app(scope, counted, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def create_study_app(folder: StudyFolder) -> FastAPI:
    """The web app of one created study (its folder opened with :func:`lesionlab.study.folder.open_study`)."""
    definition = folder.definition
    study_id = folder.study_id
    sessions = folder.sessions
    media = folder.media
    app = FastAPI(title="lesionlab reader study", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)  # no schema browser on a server participants reach
    app.state.folder = folder
    install_error_handlers(app)

    @app.exception_handler(StudyRequestError)
    async def _refused(_: Request, exc: StudyRequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    app.add_middleware(Guard)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    def as_participant(authorization: str | None, fn: Callable[[Any, Study, Any], Any], lock: bool = False) -> Any:
        token = P.bearer_token(authorization)
        with folder.write_lock, sessions.begin() as db:
            participant = P.authenticate(db, study_id, token, lock=lock)
            study = db.get(Study, study_id)
            assert study is not None
            return fn(db, study, participant)

    def as_admin(authorization: str | None, fn: Callable[[Any, Study], Any]) -> Any:
        token = P.bearer_token(authorization)
        with folder.write_lock, sessions.begin() as db:
            study = P.authenticate_admin(db, study_id, token)
            return fn(db, study)

    @app.get("/", include_in_schema=False)
    @app.get("/join", include_in_schema=False)
    def participant_page() -> FileResponse:
        return FileResponse(static_dir() / "participant.html", media_type="text/html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(static_dir() / "admin.html", media_type="text/html")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        from lesionlab.study.storage import ping

        ping(folder.engine)
        return {"status": "ok"}

    @app.get("/api/state")
    def state(authorization: Auth = None) -> Any:
        return as_participant(authorization, lambda db, study, p: P.participant_state(db, study, definition, p))

    @app.post("/api/consent")
    def give_consent(authorization: Auth = None) -> Any:
        return as_participant(authorization, lambda db, study, p: P.consent(db, p), lock=True)

    @app.post("/api/next")
    def next_case(authorization: Auth = None, body: Annotated[Any, Body()] = None) -> Any:
        start = body.get("start_session") if isinstance(body, dict) else None
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            raise StudyRequestError(422, "invalid_field", "start_session must be a session number", "start_session")
        return as_participant(authorization, lambda db, study, p: P.next_item(db, study, definition, p, start),
                              lock=True)

    @app.post("/api/answer")
    def answer(authorization: Auth = None, body: Annotated[Any, Body()] = None) -> Any:
        return as_participant(authorization, lambda db, study, p: P.submit_answer(db, study, definition, p, body),
                              lock=True)

    def png(kind: str, key: str, authorization: str | None) -> Response:
        checked = as_participant(authorization, lambda db, study, p: P.media_key(db, definition, p, kind, key))
        data = P.media_path(media, checked).read_bytes()
        return Response(content=data, media_type="image/png")

    @app.get("/api/image/{key}")
    def image(key: str, authorization: Auth = None) -> Response:
        return png("image", key, authorization)

    @app.get("/api/heatmap/{key}")
    def heatmap(key: str, authorization: Auth = None) -> Response:
        return png("heatmap", key, authorization)

    @app.get("/api/admin/progress")
    def admin_progress(authorization: Auth = None) -> Any:
        return as_admin(authorization, lambda db, study: P.progress(db, study, definition))

    @app.post("/api/admin/close")
    def admin_close(authorization: Auth = None) -> Any:
        return as_admin(authorization, lambda db, study: P.close_study(db, study.id))

    @app.get("/api/admin/export.csv")
    def admin_export(authorization: Auth = None) -> Response:
        from lesionlab.study.export import answers_frame

        as_admin(authorization, lambda db, study: None)
        frame = answers_frame(folder)
        return Response(content=frame.to_csv(index=False), media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="{study_id}-answers.csv"'})

    return app
