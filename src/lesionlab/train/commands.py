"""``lesionlab train`` and ``lesionlab train-bench``: argument parsing and printing only.

The work is :func:`lesionlab.train.fit` and the benchmark functions of :mod:`lesionlab.train.bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lesionlab.config import RunConfig
from lesionlab.core.argparsing import Deprecated, rich_table, run_and_overrides
from lesionlab.core.errors import UsageError
from lesionlab.core.io import atomic_write_text

EPILOG = """examples:
  lesionlab train --config configs/smoke.yaml
  lesionlab train --config configs/cpu-lite0-64.yaml train.epochs=6 train.seed=1
  lesionlab train runs/lite0-a --config configs/cpu-lite0-64.yaml     (re-run to resume after a kill)
  lesionlab train runs/lite0-a --resume                                (resume with the saved config)
  torchrun --nproc_per_node=2 -m lesionlab.train.ddp --config configs/smoke.yaml   (data parallel)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments (shared with ``python -m lesionlab.train.ddp``)."""
    parser.add_argument("args", nargs="*", metavar="[RUN] [key=value ...]",
                        help="the run directory (default: <output_dir>/<name> from the config), then config "
                             "overrides, e.g. train.epochs=5 model.name=lite0 data.image_size=128")
    parser.add_argument("--config", type=Path, help="YAML run config (configs/*.yaml); defaults when omitted")
    parser.add_argument("--run-dir", dest="old_run_dir", type=Path, action=Deprecated, new="lesionlab train RUN")
    parser.add_argument("--resume", action="store_true",
                        help="require a checkpoint in the run directory and continue from it; without --config the "
                             "run's saved config.yaml is used")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def register(subparsers: Any) -> None:
    """Add ``train`` and ``train-bench`` to the ``lesionlab`` command line."""
    parser = subparsers.add_parser("train", help="train a model into a run directory",
                                   description="Train one run (scratch, finetune or frozen) into a run directory. "
                                               "Under torchrun it trains data-parallel.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_train)

    ens = subparsers.add_parser(
        "ensemble", help="several trained runs as one run directory (their logits averaged)",
        description="Write an ensemble run: the members' weights in one model.safetensors and a run.json that "
                    "evaluate, serve, predict and export use like any run. The members must share preprocessing, "
                    "metadata encoder, test-time views, class weighting and training split.",
        epilog="example:\n  lesionlab ensemble runs/a runs/b runs/c --out runs/abc\n"
               "  lesionlab evaluate runs/abc --calibrate", formatter_class=argparse.RawDescriptionHelpFormatter)
    ens.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="member run directories (two or more)")
    ens.add_argument("--out", type=Path, required=True, help="the ensemble's run directory")
    ens.set_defaults(func=run_ensemble)

    bench = subparsers.add_parser(
        "train-bench", help="training benchmarks: embedding cache vs frozen backbone, engine vs a plain JPEG loop, "
                            "float32 vs bf16",
        description="frozen: seconds per head-training epoch on cached embeddings vs running the frozen backbone "
                    "every epoch. throughput: fine-tuning images/s of the engine's input path vs a plain loop that "
                    "decodes the JPEGs every epoch. precision: fine-tuning images/s in float32, float32 "
                    "channels-last and bf16 on this CPU. Run alone on the machine (e.g. under flock -x).",
        epilog="examples:\n  lesionlab train-bench frozen --config configs/frozen-simple-64.yaml\n"
               "  lesionlab train-bench throughput --config configs/cpu-lite0-64.yaml data.image_size=64\n"
               "  lesionlab train-bench precision --config configs/cpu-lite0-64-robust.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # sub-parsers rather than a positional choice, so that key=value overrides may follow options
    which = bench.add_subparsers(dest="which", metavar="{frozen,throughput,precision}", required=True)
    for name, text in (("frozen", "seconds per head epoch: embedding cache vs the frozen backbone every epoch"),
                       ("throughput", "fine-tuning images/s: the engine's input path vs a plain JPEG-decoding loop"),
                       ("precision", "fine-tuning images/s in float32, float32 channels-last and bf16 (native or "
                                     "emulated) on this CPU")):
        sub = which.add_parser(name, help=text, description=text)
        sub.add_argument("overrides", nargs="*", metavar="key=value")
        sub.add_argument("--config", type=Path, required=True)
        sub.add_argument("--epochs", type=int, default=5, help="frozen: cached head epochs timed")
        sub.add_argument("--keras-epochs", type=int, default=1, help="frozen: backbone-every-epoch epochs timed")
        sub.add_argument("--batches", type=int, default=30 if name == "throughput" else 10,
                         help="throughput, precision: timed batches per side and round")
        sub.add_argument("--rounds", type=int, default=3,
                         help="throughput, precision: alternating rounds (medians compared)")
        sub.add_argument("--json", type=Path, help="also write the result here")
        sub.add_argument("--no-progress", action="store_true")
        sub.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """Run one benchmark, print its JSON (with the command that produced it) and optionally save it."""
    from lesionlab.config import load_config
    from lesionlab.train import bench

    cfg = load_config(args.config, args.overrides)
    progress = not args.no_progress
    if args.which == "frozen":
        result = bench.bench_frozen(cfg, args.epochs, args.keras_epochs, progress)
    elif args.which == "precision":
        result = bench.bench_precision(cfg, args.batches, progress=progress, rounds=args.rounds)
    else:
        result = bench.bench_throughput(cfg, args.batches, progress=progress, rounds=args.rounds)
    result["command"] = " ".join(["lesionlab", *sys.argv[1:]])
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    return 0


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, Path | None]:
    """The run config from ``--config`` + overrides (or the saved one of RUN when resuming), and the run directory."""
    from lesionlab.config import CONFIG_SECTIONS, ConfigError, load_config, load_saved_config
    from lesionlab.runs import CONFIG_FILE

    run, overrides = run_and_overrides(args.args, "train", config_keys=CONFIG_SECTIONS)
    if run is not None and args.old_run_dir is not None and Path(run) != args.old_run_dir:
        raise UsageError(f"train: two run directories given ({run} and --run-dir {args.old_run_dir}); give one")
    run_dir = Path(run) if run is not None else args.old_run_dir
    path = args.config
    if path is None and args.resume:
        if run_dir is None:
            raise ConfigError("--resume without --config needs the run directory: lesionlab train RUN --resume "
                              "(the run's config.yaml is used)")
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: missing; pass --config with the run's original config")
        return load_saved_config(path, overrides), run_dir
    return load_config(path, overrides), run_dir


def run_train(args: argparse.Namespace) -> int:
    """Train and print where the run went and its best validation metrics."""
    from lesionlab.train import fit
    from lesionlab.train.distributed import launched_by_torchrun

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg, run_dir = resolve_config(args)
    run_dir = fit(cfg, run_dir=run_dir, resume=True if args.resume else None, progress=not args.no_progress)
    if not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0:
        print_summary(run_dir)
    return 0


def print_summary(run_dir: Path) -> None:
    """A rich table of the best epoch's validation metrics."""
    from lesionlab.core.console import make_console
    from lesionlab.runs import read_info

    info = read_info(run_dir)
    if (info.get("training") or {}).get("mode") == "ensemble":
        print_ensemble_summary(run_dir, info)
        return
    best = info.get("best", {})
    table = rich_table(f"best epoch {int(best.get('epoch', -1)) + 1} (by val {best.get('monitor', '?')})",
                       ("validation metric", "value"), left=["validation metric"], min_width=56)
    for key, value in best.items():
        if key.startswith("val_"):
            table.add_row(key.removeprefix("val_"), "n/a" if value is None else f"{value:.4f}")
    console = make_console()
    console.print(table)
    training = info.get("training", {})
    console.print(f"run directory: {run_dir}  (status {info.get('status')}, {info.get('epochs_run', '?')} epochs, "
                  f"{training.get('seconds', 0.0):.0f} s)")


def print_ensemble_summary(run_dir: Path, info: dict[str, Any]) -> None:
    """One row per member (its best epoch and validation balanced accuracy), then where the ensemble went."""
    from lesionlab.core.console import make_console

    members = (info.get("ensemble") or {}).get("members") or []
    table = rich_table(f"ensemble of {len(members)} runs", ("member", "best epoch", "val balanced accuracy",
                                                           "training s"), left=["member"], min_width=56)
    for member in members:
        best = member.get("best") or {}
        value = best.get("val_balanced_accuracy")
        table.add_row(str(member.get("run") or member.get("name")), str(int(best.get("epoch", -1)) + 1),
                      "n/a" if value is None else f"{value:.4f}", f"{float(member.get('training_seconds') or 0):.0f}")
    console = make_console()
    console.print(table)
    console.print(f"run directory: {run_dir}  (ensemble, {float((info.get('training') or {}).get('seconds') or 0):.0f}"
                  f" s of training); fit its temperature and referral threshold with "
                  f"`lesionlab evaluate {run_dir} --calibrate`")


def run_ensemble(args: argparse.Namespace) -> int:
    """``lesionlab ensemble``: write the ensemble run and say what it holds."""
    from lesionlab.train.ensemble import make_ensemble

    out = make_ensemble(args.runs, args.out)
    print(f"{out}: ensemble of {len(args.runs)} runs ({', '.join(p.name for p in args.runs)}); score it with "
          f"`lesionlab evaluate {out} --calibrate`")
    return 0
