"""Sub-commands of ``lesionlab study`` for the reader-study platform."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this part's sub-commands to the ``study`` group."""
