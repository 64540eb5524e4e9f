"""Errors of the reader-study analysis: every one names the file, row, column, reader, case or arm at fault.

They derive from :class:`lesionlab.core.errors.LesionlabError` (a user's mistake, shown as one line) and from
``ValueError`` (so callers that catch bad values, the CLI among them, treat them alike).
"""

from __future__ import annotations

from lesionlab.core.errors import LesionlabError


class StudyAnalysisError(LesionlabError, ValueError):
    """Base: inputs the reader-study analysis cannot be run on."""


class ExportError(StudyAnalysisError):
    """An answer export or reader table that cannot be read: missing columns, unknown classes, bad values."""


class NotCrossedError(StudyAnalysisError):
    """A reader table that is not fully crossed (some reader x modality x case cells missing or repeated)."""

    def __init__(self, message: str, missing: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


class UndefinedFOMError(StudyAnalysisError):
    """A figure of merit that the data cannot define (no diseased cases for a sensitivity, a single class, ...)."""
