"""``lesionlab synth train | sample | traverse | evaluate``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

EPILOG = """examples:
  lesionlab synth train --config configs/synth/cpu-32.yaml                  (about 20 min on 2 CPU cores)
  lesionlab synth train --config configs/synth/smoke.yaml                   (seconds, built-in synthetic data)
  lesionlab synth train runs/synth-b --config configs/synth/cpu-32.yaml train.seed=1   (re-run to resume)
  lesionlab synth sample runs/synth-cpu-32 --n 1000 --balanced --out runs/synth-cpu-32/samples-balanced
  lesionlab synth sample runs/synth-cpu-32 --n 200 --class mel --age 60 --sex female --site back
  lesionlab synth traverse runs/synth-cpu-32
  lesionlab synth evaluate runs/synth-cpu-32 --usefulness      (also trains the 4 usefulness classifiers)
  lesionlab synth evaluate runs/synth-cpu-32 --classifier runs/cpu-lite0-64 n_per_class=100
"""


def register(subparsers: Any) -> None:
    """Add ``synth`` and its sub-commands to the ``lesionlab`` command line."""
    parser = subparsers.add_parser(
        "synth", help="synthetic lesion images: train a generator, sample, traverse codes, evaluate",
        description="A progressive, code-conditioned InfoGAN with WGAN-GP: train it on any lesionlab data source, "
                    "write labelled SYNTHETIC image sets, see what each code controls, and measure what the images "
                    "are worth.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="synth_command", metavar="{train,sample,traverse,evaluate}", required=True)

    tr = sub.add_parser("train", help="train (or resume) a generator into a run directory",
                        description="Train a generator; re-run the same command after a kill to resume from the last "
                                    "checkpoint.")
    tr.add_argument("args", nargs="*", metavar="[RUN] [key=value ...]",
                    help="the run directory (default: <output_dir>/<name> from the config), then config overrides, "
                         "e.g. train.seed=1 train.bf16=false")
    tr.add_argument("--config", type=Path, help="YAML config (configs/synth/*.yaml); defaults when omitted")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (stage lines in the log only)")
    tr.set_defaults(func=_train)

    sa = sub.add_parser("sample", help="write a labelled SYNTHETIC image set (HAM10000 layout)",
                        description="Generate images into a HAM10000-layout folder (metadata CSV with dx_type "
                                    "'synthetic' on every row + PNG images) that every lesionlab command reads.")
    sa.add_argument("run", type=Path, help="synthesis run directory")
    sa.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    sa.add_argument("--class", dest="dx", help="only this class (akiec, bcc, bkl, df, mel, nv, vasc)")
    sa.add_argument("--balanced", action="store_true", help="equal numbers of every class (default: training mix)")
    sa.add_argument("--age", type=float, help="fix the age code (years)")
    sa.add_argument("--sex", help="fix the sex code (male, female)")
    sa.add_argument("--site", help="fix the site code (e.g. back, face, 'lower extremity')")
    sa.add_argument("--free", help="fix the free codes, comma-separated values in [-1, 1]")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", type=Path, help="output folder (default RUN/samples-<seed>)")
    sa.add_argument("--overwrite", action="store_true", help="replace an existing sample set in --out")
    sa.set_defaults(func=_sample)

    tv = sub.add_parser("traverse", help="one grid per code: what each code controls",
                        description="Render a grid per code (that code varied along the columns, noise and the other "
                                    "codes fixed per row) into PNGs and one HTML page.")
    tv.add_argument("run", type=Path)
    tv.add_argument("--out", type=Path, help="output folder (default RUN/traverse)")
    tv.add_argument("--rows", type=int, default=6)
    tv.add_argument("--steps", type=int, default=7, help="values per continuous code / sites shown")
    tv.add_argument("--seed", type=int, default=0)
    tv.set_defaults(func=_traverse)

    ev = sub.add_parser("evaluate", help="fidelity, diversity, label fidelity, codes, memorisation, usefulness",
                        description="Measure a generator on class-balanced samples and write RUN/eval/report.html "
                                    "and report.md (settings: the run config's evaluate section, overridable).")
    ev.add_argument("run", type=Path)
    ev.add_argument("overrides", nargs="*", metavar="key=value",
                    help="evaluate settings replacing the run config's (evaluate. optional), e.g. n_per_class=100 "
                         "usefulness.arms=[real,synthetic]")
    ev.add_argument("--classifier", type=Path, help="an independent lesionlab run trained on real images")
    ev.add_argument("--usefulness", action="store_true",
                    help="train the usefulness arms (real, class-weighted, oversampled, synthetic-only) with the "
                         "classifier preset; the class-weighted arm becomes the classifier unless --classifier")
    ev.add_argument("--out", type=Path, help="output folder (default RUN/eval)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from lesionlab.core.argparsing import run_and_overrides
    from lesionlab.synth.config import SYNTH_SECTIONS, load_synth_config
    from lesionlab.synth.run import read_info
    from lesionlab.synth.training import train_synth

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run, overrides = run_and_overrides(args.args, "synth train", config_keys=SYNTH_SECTIONS)
    cfg = load_synth_config(args.config, overrides)
    run_dir = train_synth(cfg, run_dir=run, progress=not args.no_progress)
    info = read_info(run_dir)
    print(f"synthesis run: {run_dir} (status {info.get('status')}, {info.get('images', 0):,} images, "
          f"{info.get('seconds', 0.0):.0f} s); sample grids in {run_dir / 'samples'}")
    if info.get("data", {}).get("synthetic"):
        print("note: trained on SYNTHETIC data (the built-in demo set), not dermoscopy")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from lesionlab.synth.codes import CodeRequest
    from lesionlab.synth.errors import SynthError
    from lesionlab.synth.run import load_synth_run
    from lesionlab.synth.sample import sample_to_folder

    if args.dx and args.balanced:
        raise SynthError("--class and --balanced exclude each other")
    free = None
    if args.free:
        try:
            free = tuple(float(v) for v in args.free.split(","))
        except ValueError:
            raise SynthError(f"--free {args.free!r}: expected comma-separated numbers") from None
    run = load_synth_run(args.run)
    request = CodeRequest(dx=args.dx, sex=args.sex, site=args.site, age=args.age, free=free)
    out = args.out or args.run / f"samples-{args.seed}"
    csv, notes = sample_to_folder(run, out, args.n, dx=args.dx, balanced=args.balanced, request=request,
                                  seed=args.seed, overwrite=args.overwrite)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.n} SYNTHETIC images to {out} (metadata {csv})")
    print(f"use them with: data.source=ham10000 data.metadata_csv={csv} data.split=lesion")
    return 0


def _traverse(args: argparse.Namespace) -> int:
    from lesionlab.synth.run import load_synth_run
    from lesionlab.synth.traverse import traverse

    run = load_synth_run(args.run)
    page = traverse(run, args.out or args.run / "traverse", rows=args.rows, steps=args.steps, seed=args.seed)
    print(f"code traversals: {page}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lesionlab.config import apply_overrides, build_config
    from lesionlab.synth.config import SynthEvalConfig
    from lesionlab.synth.evaluation import evaluate_synth
    from lesionlab.synth.run import load_synth_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = load_synth_run(args.run)
    overrides = [o.removeprefix("evaluate.") for o in args.overrides]
    raw = apply_overrides(run.config.evaluate.model_dump(mode="json"), overrides, where="evaluate overrides")
    settings = build_config(SynthEvalConfig, raw, where="evaluate overrides")
    doc = evaluate_synth(args.run, out_dir=args.out, classifier=args.classifier, usefulness=args.usefulness,
                         settings=settings, progress=not args.no_progress)
    fid = doc["fidelity"]
    print(f"FD-lite0 {fid['synthetic']['fd']:.1f} (real vs real {fid['real_held_out']['fd']:.1f}, pixelated "
          f"{fid['pixelated_real']['fd']:.1f}); precision {fid['synthetic']['precision']:.3f}, recall "
          f"{fid['synthetic']['recall']:.3f}")
    lf = doc["label_fidelity"]
    if lf.get("synthetic"):
        print("independent classifier on generated images: balanced accuracy "
              f"{lf['synthetic']['balanced_accuracy']:.3f} (on real test images "
              f"{lf['real_test']['balanced_accuracy']:.3f})")
    mem = doc["memorisation"]
    print(f"memorisation: {mem['fraction_closer_than_any_held_out']:.3f} of samples closer to a training image than "
          "any real held-out image")
    if doc.get("usefulness"):
        for arm, m in doc["usefulness"]["arms"].items():
            print(f"usefulness {arm}: balanced accuracy {m['balanced_accuracy']:.3f} on the real test split")
    print(f"report: {doc['report']['html']}")
    return 0
