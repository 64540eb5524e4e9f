"""Errors of the reader-study platform: one for the command line, one that is an HTTP refusal.

Every participant or admin request the server refuses becomes :class:`StudyRequestError`, sent in the service's
one JSON shape ``{"error": {"code", "message", "field"}}`` with a 4xx status (see ``lesionlab.serve.errors``).
"""

from __future__ import annotations

from typing import Any

from lesionlab.core.errors import LesionlabError


class StudyError(LesionlabError, ValueError):
    """A study definition, study folder or storage that cannot be used; the message names the file or field."""


class StudyRequestError(LesionlabError):
    """A request the study server refuses: HTTP status, machine-readable code, a message for people, the field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}
