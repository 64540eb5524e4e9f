"""The one command line: ``lesionlab <command>``.

Thin by design: each concern registers its own sub-commands from a ``commands`` module (argument parsing and
printing only) and calls pure functions of its package. Command modules are imported lazily by name so that
``lesionlab --help`` stays fast and one broken optional part cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) - each module defines ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "lesionlab.data.commands",      # data summary | audit | split | cache
    "lesionlab.data.corruption_commands",  # corruptions list | gallery
    "lesionlab.models.commands",    # models
    "lesionlab.train.commands",     # train
    "lesionlab.evaluate.commands",  # evaluate, report, compare
    "lesionlab.experiments.commands",  # experiment
    "lesionlab.serve.commands",     # serve, export, predict
    "lesionlab.demo",               # demo
    "lesionlab.study.commands",     # study (reader studies)
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every available command module registered."""
    from lesionlab import __version__

    parser = argparse.ArgumentParser(prog="lesionlab", description="Dermoscopy lesion classification toolkit.")
    parser.add_argument("--version", action="version", version=f"lesionlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # that part is not built yet; other import errors are real
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch to the command's ``func``, turn expected errors into one clear line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"lesionlab {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
