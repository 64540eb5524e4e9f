"""One error base class, so that the CLI and the service can tell a user's mistake from a bug.

Everything a user can cause and fix (a bad file, an unknown class, a missing column, an unfinished run, a flag that
does not apply) raises a subclass of :class:`LesionlabError`, whose message names the file, row or field. The
command line prints that message on one line; anything else is a bug and is shown with its traceback. Each
subclass also keeps the built-in base it always had (``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so
``except ValueError`` in callers keeps working.
"""

from __future__ import annotations


class LesionlabError(Exception):
    """Base of every expected, user-fixable error in lesionlab; the message is meant to be shown as it is."""


class UsageError(LesionlabError, ValueError):
    """Command-line arguments that do not fit together (a flag that does not apply, a missing argument)."""


class MissingFileError(LesionlabError, FileNotFoundError):
    """A file or folder the user named (or a command needs) does not exist; the message names it."""
