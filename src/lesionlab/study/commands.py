"""``lesionlab study ...``: the reader-study platform's and the analysis' sub-commands under one group."""

from __future__ import annotations

import argparse

from lesionlab.study import analysis_commands, platform_commands


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``study`` with its sub-commands (platform: create, invite, serve, export, close, progress; analysis:
    report, mrmc, simulate, plan)."""
    parser = subparsers.add_parser("study", help="reader studies: run them, simulate readers, analyse the answers")
    sub = parser.add_subparsers(dest="study_command", metavar="<study command>", required=True)
    platform_commands.register(sub)
    analysis_commands.register(sub)
