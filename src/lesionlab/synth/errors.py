"""Errors of the synthesis package: user-fixable problems with a message that names the file, run or setting."""

from __future__ import annotations

from lesionlab.core.errors import LesionlabError


class SynthError(LesionlabError, ValueError):
    """A synthesis run, config or request that cannot be used; the message says which and why.

    Also a ``ValueError`` so that the command line reports it as one clear line.
    """
