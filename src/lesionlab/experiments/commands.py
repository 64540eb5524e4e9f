"""``lesionlab experiment GRID``: expand a grid, run what is not finished, aggregate the tables.

Argument parsing and printing only; the work is in :mod:`lesionlab.experiments`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lesionlab.core.argparsing import rich_table
from lesionlab.core.console import make_console


def register(subparsers: Any) -> None:
    """Add the ``experiment`` command."""
    p = subparsers.add_parser(
        "experiment", help="run an experiment grid (models x resolutions x clinical data x folds/seeds)",
        description="Expand a grid file into runs, skip finished ones, run the rest with local workers (or write "
                    "a Slurm array / command list), then aggregate mean ± sd tables and Mann-Whitney U tests.")
    p.add_argument("grid", type=Path, help="grid YAML, e.g. configs/grids/ham10000-cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the grid file itself, e.g. workers=2 'repeat.seeds=[0]'")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the plan (runs and their state) and stop")
    what.add_argument("--aggregate-only", action="store_true", help="only collect finished runs into the tables")
    what.add_argument("--slurm", type=Path, metavar="SCRIPT",
                      help="write a Slurm array script (+ SCRIPT-stem.commands.txt) for the unfinished runs")
    what.add_argument("--commands", type=Path, metavar="FILE", help="write one shell command per unfinished run")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: the grid's 'workers')")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // workers)")
    p.add_argument("--no-final", action="store_true",
                   help="with a select section: stop after the cross-validation ranking (no final run, test unscored)")
    p.add_argument("--allow-rescore", action="store_true",
                   help="with a select section: score the test split for a new choice although another choice's "
                        "final run has scored it already (recorded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _plan_table(plan: list, label_names: list[str]) -> Table:
    table = Table(title=f"{len(plan)} runs", show_lines=False)
    table.add_column("#", justify="right")
    for name in label_names:
        table.add_column(name)
    table.add_column("run id", overflow="fold")
    table.add_column("state")
    for i, run in enumerate(plan):
        state = "[green]finished[/]" if run.is_finished else (
            "trained" if run.is_trained else ("started" if run.run_dir.is_dir() else "to do"))
        table.add_row(str(i), *[run.labels.get(n, "") for n in label_names], run.run_id, state)
    return table


def _frame_table(title: str, frame: Any) -> Table:
    index = str(frame.index.name or "")
    table = rich_table(title, [index, *map(str, frame.columns)], left=[index])
    for idx, row in frame.iterrows():
        table.add_row(str(idx), *[str(v) for v in row.tolist()])
    return table


def _aggregate(cfg: Any, plan: list, console: Console, base: dict | None = None) -> None:
    from lesionlab.experiments.runner import aggregate_grid

    tables, paths = aggregate_grid(cfg, plan, base)
    for title, frame in tables.tables.items():
        console.print(_frame_table(title, frame))
    if not tables.tests_table.empty:
        t = rich_table("Mann-Whitney U tests (Holm-adjusted within each compared axis)",
                       ("test", "n", "U", "p", "p_holm", "r"), left=["test"])
        for test in tables.tests:
            t.add_row(test.label, " vs ".join(str(v) for v in test.n.values()), f"{test.statistic:.1f}",
                      f"{test.p_value:.3g}", f"{test.detail['p_holm']:.3g}",
                      "-" if test.effect_size is None else f"{test.effect_size:+.2f}")
        console.print(t)
    for note in tables.notes:
        console.print(f"[yellow]note:[/] {note}")
    names = [p.name for p in paths if p.parent == cfg.output_dir]
    console.print(f"{len(tables.results)} of {len(plan)} runs aggregated into {cfg.output_dir}: {', '.join(names)} "
                  "(and tables/*.csv)")


def _main(args: argparse.Namespace) -> int:
    from lesionlab.experiments.grid import load_grid
    from lesionlab.experiments.plan import expand
    from lesionlab.experiments.runner import execute_local, pending_runs, prepare_grid, write_commands, write_slurm

    console = make_console()
    cfg, base = load_grid(args.grid, args.overrides)
    if args.workers is not None:
        cfg = cfg.model_copy(update={"workers": args.workers})
    plan = expand(cfg, base, where=str(args.grid))
    todo = pending_runs(plan)
    console.print(f"grid [bold]{cfg.name}[/]: {len(plan)} runs, {len(plan) - len(todo)} finished, "
                  f"{len(todo)} to do -> {cfg.output_dir}")
    if args.dry_run:
        console.print(_plan_table(plan, cfg.label_names))
        if cfg.select is not None:
            console.print(f"then: the condition with the best mean {cfg.select.metric} over the folds is trained on "
                          "the base split and scored once on its test split"
                          + ("" if cfg.select.final else " (select.final is off: no final run)"))
        return 0
    if args.aggregate_only:
        _aggregate(cfg, plan, console, base)
        return 0
    hashes = prepare_grid(cfg, plan, grid_path=args.grid)
    n_splits = len(set(hashes.values()))
    console.print(f"test split check passed: {n_splits} distinct {cfg.evaluate.split} split(s) over {len(plan)} runs"
                  + (" (one per fold; the folds partition the data)" if cfg.repeat.kind == "fold" else ""))
    if args.commands:
        n = write_commands(plan, cfg, args.commands, threads=args.threads)
        console.print(f"wrote {n} commands to {args.commands}")
        return 0
    if args.slurm:
        commands, n = write_slurm(plan, cfg, args.slurm)
        console.print(f"wrote {args.slurm} ({n} array tasks, commands in {commands}); submit from this directory: "
                      f"sbatch {args.slurm}")
        return 0
    results = execute_local(plan, cfg, threads=args.threads, progress=not args.no_progress)
    _aggregate(cfg, plan, console, base)
    failed = [r for r in results if not r.ok]
    if cfg.select is not None and cfg.select.final and not args.no_final and not failed:
        results += _final(cfg, plan, base, args, console)
        failed = [r for r in results if not r.ok]
    if failed:
        cols = ("run id", "exit status", "log")
        table = rich_table(f"[red]{len(failed)} of {len(results)} runs failed[/] (the others were kept)", cols, cols)
        for r in failed:
            table.add_row(r.job_id, str(r.returncode), str(r.log))
        console.print(table)
        print(f"lesionlab experiment: {len(failed)} runs failed; see their logs, fix, and re-run to resume",
              file=sys.stderr)
        return 1
    return 0


def _final(cfg: Any, plan: list, base: dict, args: argparse.Namespace, console: Console) -> list:
    """Train the CV-chosen condition on the base split and score its test split once; re-aggregate."""
    from lesionlab.experiments.aggregate import collect
    from lesionlab.experiments.runner import execute_local
    from lesionlab.experiments.selection import check_test_once, final_run, select

    results, _ = collect(plan)
    sel = select(results, cfg)
    if not sel.complete or sel.chosen is None:
        console.print("[yellow]selection:[/] not every condition has all its folds; no final run yet (re-run to "
                      "finish them)")
        return []
    final = final_run(cfg, base, sel.chosen, where=str(args.grid))
    done = []
    if not final.is_finished:
        for note in check_test_once(cfg.output_dir, final, allow_rescore=args.allow_rescore):
            console.print(f"[yellow]note:[/] {note}")
        evaluate = cfg.evaluate.model_copy(update={
            "split": "test", "extra_args": list(cfg.select.final_evaluate_args or cfg.evaluate.extra_args)})
        final_cfg = cfg.model_copy(update={"evaluate": evaluate, "workers": 1})
        console.print(f"final run {final.run_id}: chosen {sel.chosen} by the mean {sel.metric} over "
                      f"{cfg.repeat.folds} folds; training on the base split, then scoring its test split once")
        done = execute_local([final], final_cfg, threads=args.threads, progress=not args.no_progress)
    _aggregate(cfg, plan, console, base)
    console.print(f"selection: {cfg.output_dir / 'selection.md'}")
    return done
