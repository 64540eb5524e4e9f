"""The rich console every command prints with.

Written to a terminal, rich fits its tables to the terminal. Written to a file or a pipe (a log, a CI job, ``| tee``)
it assumes 80 columns, and a table of ten metrics per class shrinks every cell to ``0.8…``: the log keeps nothing
of the figures it was kept for. So without a terminal, and unless the user sets ``COLUMNS``, the console is
:data:`LOG_WIDTH` columns wide.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: The width of a console that writes to no terminal: the widest table the commands print (the evaluation's decision
#: rules, twelve columns, 177 characters) fits without cutting or wrapping a figure.
LOG_WIDTH = 200


def console_width(is_terminal: bool, environ: dict[str, str] | None = None) -> int | None:
    """``None`` (rich decides: the terminal's width, or ``COLUMNS``) or :data:`LOG_WIDTH` for a file or pipe."""
    env = os.environ if environ is None else environ
    if is_terminal or env.get("COLUMNS", "").strip():
        return None
    return LOG_WIDTH


def make_console(stderr: bool = False, **kwargs: Any) -> Any:
    """A ``rich.console.Console`` on stdout (or stderr) whose tables stay readable in a log file."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    is_terminal = bool(getattr(stream, "isatty", lambda: False)())
    if "width" not in kwargs:
        kwargs["width"] = console_width(is_terminal)
    return Console(stderr=stderr, **kwargs)
