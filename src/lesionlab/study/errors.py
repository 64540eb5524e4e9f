"""Errors of the reader-study platform: one for the command line, one that is an HTTP refusal.

Every participant or admin request the server refuses becomes :class:`StudyRequestError`: the service's
``ServeError`` (so it is sent in the one JSON shape ``{"error": {"code", "message", "field"}}`` with a 4xx status)
and a ``LesionlabError`` (so the command line shows it as one line).
"""

from __future__ import annotations

from lesionlab.core.errors import LesionlabError
from lesionlab.serve.errors import ServeError


class StudyError(LesionlabError, ValueError):
    """A study definition, study folder or storage that cannot be used; the message names the file or field."""


class StudyRequestError(ServeError, LesionlabError):
    """A request the study server refuses: HTTP status, machine-readable code, a message for people, the field."""
