"""One error base class, so that the CLI and the service can tell a user's mistake from a bug.

Everything a user can cause and fix (a bad file, an unknown class, a missing column, an unfinished run) raises a
subclass of :class:`LesionlabError`, whose message names the file, row or field. Anything else is a bug and is
shown with its traceback.
"""

from __future__ import annotations


class LesionlabError(Exception):
    """Base of every expected, user-fixable error in lesionlab; the message is meant to be shown as it is."""
