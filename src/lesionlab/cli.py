"""The one command line: ``lesionlab [--debug] <command>``.

Thin by design: each concern registers its own sub-commands from a ``commands`` module (argument parsing and
printing only) and calls pure functions of its package. The conventions every command follows (RUN first,
positional ``key=value`` overrides, one meaning per flag, the project's errors as one line and everything else with
its traceback, ``--debug``, deprecated spellings): docs/ARCHITECTURE.md, "Command line" and "Errors".
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lesionlab.core.allocator import tune_malloc
from lesionlab.core.argparsing import add_everywhere, parse_args, run_command
from lesionlab.core.version import __version__

# Each module defines ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "lesionlab.data.commands",         # data summary | audit | split | cache
    "lesionlab.data.corruption_commands",  # corruptions list | gallery
    "lesionlab.models.commands",       # models
    "lesionlab.train.commands",        # train, ensemble, train-bench
    "lesionlab.evaluate.commands",     # evaluate, report, compare
    "lesionlab.experiments.commands",  # experiment
    "lesionlab.serve.commands",        # serve, export, predict, serve-bench
    "lesionlab.study.commands",        # study (reader studies)
    "lesionlab.synth.commands",        # synth train | sample | traverse | evaluate
    "lesionlab.demo",                  # demo
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command module registered (imported here, so ``import lesionlab.cli`` is light)."""
    parser = argparse.ArgumentParser(prog="lesionlab", description="Dermoscopy lesion classification toolkit.")
    parser.add_argument("--version", action="version", version=f"lesionlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, also expected ones")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # `lesionlab <command> ... --debug` means the same as `lesionlab --debug <command> ...`
    add_everywhere(sub, "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch to the command's ``func``, turn the project's errors into one clear line."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    note = tune_malloc()  # before the command allocates anything large: see lesionlab.core.allocator
    if getattr(args, "debug", False):
        print(note, file=sys.stderr)
    return run_command(args, args.command)


if __name__ == "__main__":
    sys.exit(main())
