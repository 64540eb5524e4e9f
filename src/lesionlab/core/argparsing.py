"""Command-line pieces shared by every ``commands`` module, so that all commands follow one convention (``--debug``
everywhere, deprecated spellings, ``[RUN] [key=value ...]`` positionals, one error line, the printed tables)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lesionlab.core.errors import LesionlabError, UsageError


def _subparsers(parser: argparse.ArgumentParser | argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    actions = [parser] if isinstance(parser, argparse._SubParsersAction) else [
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: list[argparse.ArgumentParser] = []
    for action in actions:
        for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            found += [child, *_subparsers(child)]
    return found


def add_everywhere(parent: argparse.ArgumentParser | argparse._SubParsersAction, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` to every sub-command below ``parent`` that does not define it itself."""
    for parser in _subparsers(parent):
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, **kwargs)


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr: the old spelling still works for this release; say what to write instead."""
    print(f"lesionlab: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)


class Deprecated(argparse.Action):
    """An old option spelling that still works for one release: stores its value in its own ``dest`` (the command
    merges it with the new spelling) and says on stderr what replaces it.

    ``add_argument("--run-dir", dest="old_run_dir", action=Deprecated, new="lesionlab train RUN")``
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, append: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        kwargs.setdefault("default", [] if append else None)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new
        self.append = append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(str(option_string), self.new)
        if self.append:
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        else:
            setattr(namespace, self.dest, values)


def run_and_overrides(values: Sequence[str], command: str, config_keys: Sequence[str] = ()
                      ) -> tuple[str | None, list[str]]:
    """``[RUN] [key=value ...]`` in any order: the one argument without ``=`` is the run directory.

    An argument without ``=`` that names a config key (its first part is one of ``config_keys``, e.g.
    ``train.epochs``) is a forgotten value, not a directory.
    """
    runs = [v for v in values if "=" not in v]
    for value in runs:
        if value.split(".", 1)[0] in config_keys:
            raise UsageError(f"{command}: override {value!r} is not of the form key=value")
    if len(runs) > 1:
        raise UsageError(f"{command}: one run directory at most, got {runs}; overrides are written key=value")
    return (runs[0] if runs else None), [v for v in values if "=" in v]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes positional overrides placed after options (``RUN --calibrate
    split=lesion``), which argparse alone refuses: they join the command's ``overrides`` (or ``args``) list."""
    args, extra = parser.parse_known_args(argv)
    target = next((name for name in ("overrides", "args") if isinstance(getattr(args, name, None), list)), None)
    if extra and (target is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra and target is not None:
        setattr(args, target, [*getattr(args, target), *extra])
    return args


def run_command(args: argparse.Namespace, label: str) -> int:
    """``args.func(args)``; a :class:`LesionlabError` prints as ``lesionlab LABEL: error: ...`` (exit status 1)
    unless ``--debug``; any other exception is a bug and propagates with its traceback."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LesionlabError as err:
        if getattr(args, "debug", False):
            raise
        print(f"lesionlab {label}: error: {err}", file=sys.stderr)
        return 1


def rich_table(title: str, columns: Sequence[str], left: Sequence[str] = (), overflow: str = "ellipsis",
               **kwargs: Any) -> Any:
    """A rich table (imported here, so ``lesionlab --help`` stays fast): columns right-aligned except ``left``."""
    from rich.table import Table

    table = Table(title=title, **kwargs)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right", overflow=overflow)
    return table
