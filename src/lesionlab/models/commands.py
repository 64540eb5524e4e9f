"""``lesionlab models``: the model registry with parameters, FLOPs and offline weight availability.

Argument parsing and printing only; the work is in :mod:`lesionlab.models.summary`.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``models`` command."""
    p = subparsers.add_parser(
        "models", help="list the model registry (parameters, FLOPs, offline weights)",
        description="List the studies' backbone names and the offline-pretrained extras with their timm "
                    "architecture, parameters (backbone + 7-class linear head), FLOPs at --size, and whether "
                    "ImageNet weights are available without network. Any other timm name is accepted as "
                    "model.name; give names to measure them too.")
    p.add_argument("names", nargs="*", help="extra model names to measure (registry or any timm name)")
    p.add_argument("--size", type=int, default=224, help="square input size for the FLOPs (default 224)")
    p.add_argument("--notes", action="store_true", help="also print each entry's notes (why that timm variant)")
    p.add_argument("--all", action="store_true", help="also list every other timm architecture name")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from rich.columns import Columns

    from lesionlab.core.argparsing import rich_table
    from lesionlab.core.console import make_console
    from lesionlab.models.registry import REGISTRY, resolve_spec, timm_architectures
    from lesionlab.models.summary import registry_summaries, summarize

    for name in args.names:  # unknown names fail before the slower measuring
        resolve_spec(name)
    console = make_console()
    rows = registry_summaries(args.size) + [summarize(n, args.size) for n in args.names if n not in REGISTRY]
    left = ("name", "kind", "timm model", "offline ImageNet weights")
    table = rich_table(f"lesionlab models at {args.size}x{args.size} (FLOPs: 1 multiply-add = 2)",
                       (*left[:3], "params (M)", f"GFLOPs @{args.size}", "native", left[3]), left=left,
                       overflow="fold")
    for r in rows:
        table.add_row(r.name, r.kind, r.timm_name, f"{r.params / 1e6:.2f}", f"{r.flops / 1e9:.2f}",
                      str(r.native_size), r.offline)
    console.print(table)
    console.print("params: backbone + 7-class linear head; native: timm's pretrained input size")
    if args.notes:
        for r in rows:
            if r.notes:
                console.print(f"[bold]{r.name}[/]: {r.notes}")
    if args.all:
        others = [n for n in timm_architectures() if n not in {r.timm_name for r in rows}]
        console.print(f"\n{len(others)} other timm architectures (any is accepted as model.name):")
        console.print(Columns(others, equal=True, column_first=True))
    return 0
