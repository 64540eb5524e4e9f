"""``lesionlab evaluate | report | compare``: argument parsing and printing only; the work is in the package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lesionlab.core.argparsing import Deprecated, rich_table
from lesionlab.core.errors import UsageError
from lesionlab.core.scope import (
    DEFAULT_DEGRADATION_FALSE_REJECTION,
    DEFAULT_MAX_FALSE_REJECTION,
    DEFAULT_SCOPE_METHOD,
    SCOPE_METHODS,
)
from lesionlab.evaluate.calibration import DEFAULT_TARGET_SENSITIVITY


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation commands to the ``lesionlab`` parser."""
    ev = sub.add_parser("evaluate", help="score a run on a split or an external ISIC test set",
                        description="Write predictions.csv, metrics.json (with bootstrap CIs) and model_card.json "
                                    "for a run, plus report.html/report.md. By default the run's own data config "
                                    "and its test split are used.")
    ev.add_argument("run", type=Path, help="run directory (holds run.json and model.safetensors)")
    ev.add_argument("overrides", nargs="*", metavar="key=value",
                    help="data settings replacing the run's, e.g. source=synthetic split=lesion (data. optional)")
    ev.add_argument("--config", type=Path, help="a run config YAML whose data section replaces the run's")
    ev.add_argument("--set", dest="old_overrides", action=Deprecated, append=True,
                    new="positional key=value after RUN")
    ev.add_argument("--source", choices=["auto", "ham10000", "npz", "isic", "synthetic"],
                    help="shorthand for source=...")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score (default test)")
    ev.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="test-time augmentation (default: as the run was validated in training)")
    ev.add_argument("--tta-views", choices=["flips", "dihedral"], default=None,
                    help="which views --tta averages: flips (identity, h- and v-flip) or dihedral (the 8 symmetries "
                         "of the square); default: the run's train.tta_views")
    ev.add_argument("--calibrate", action="store_true",
                    help="fit temperature and referral threshold on the validation split; store them in run.json")
    ev.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY,
                    help="malignant sensitivity the referral threshold must reach on validation (default 0.90)")
    ev.add_argument("--isic-csv", type=Path, help="external test set: ISIC-challenge ground-truth CSV")
    ev.add_argument("--isic-images", type=Path, help="external test set: folder of its images")
    ev.add_argument("--out", type=Path, help="output directory (default RUN/eval-<split> or RUN/eval-isic)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for CIs (0: none)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ev.add_argument("--timing-images", type=int, default=64, help="images timed at batch 1 and batched (0: skip)")
    ev.add_argument("--audit", choices=["none", "lesions", "full"], default="lesions",
                    help="leakage audit of the split for the model card: lesions (metadata, instant), full (also "
                         "hashes every image for duplicates), none")
    ev.add_argument("--scope-method", choices=SCOPE_METHODS, default=DEFAULT_SCOPE_METHOD,
                    help="--calibrate: the out-of-scope score to fit (default mahalanobis; see docs/BENCHMARKS.md)")
    ev.add_argument("--max-false-rejection", type=float, default=DEFAULT_MAX_FALSE_REJECTION,
                    help="--calibrate: share of validation images the scope gate may reject (default 0.05)")
    ev.add_argument("--degradation-false-rejection", type=float, default=DEFAULT_DEGRADATION_FALSE_REJECTION,
                    help="--calibrate: share of clean validation images the degradation check may flag (default "
                         "0.02)")
    ev.add_argument("--scope-compare", action="store_true",
                    help="measure every out-of-scope score against the out-of-scope sets, not just the run's")
    ev.add_argument("--ood-images", type=int, default=60, help="images per out-of-scope set (0: do not measure)")
    _allow_args(ev, "evaluate")
    ev.add_argument("--corruptions", metavar="all|NAME,...",
                    help="also score the corrupted test split: 'all' fifteen acquisition corruptions (MedMNIST-C, "
                         "Di Salvo et al. 2024) or a comma list, e.g. motion_blur,black_corner; see `lesionlab "
                         "corruptions list`")
    ev.add_argument("--severities", default="1-5", metavar="1-5",
                    help="corruption severities to score: a range or list (default 1-5)")
    ev.add_argument("--corruption-seed", type=int, default=0, help="seed of the corrupted copies (default 0)")
    ev.add_argument("--robustness-reference", type=Path, metavar="ROBUSTNESS_JSON",
                    help="normalise against this evaluation's robustness.json instead of the shipped reference run")
    ev.add_argument("--no-report", action="store_true", help="do not render report.html / report.md")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="render the HTML + Markdown report of a run, evaluation or grid directory")
    rep.add_argument("path", type=Path, help="evaluation directory (metrics.json), run directory (its eval*/), or "
                                             "an aggregated grid directory (results.csv, tests.json)")
    rep.add_argument("--out", type=Path, help="where to write report.html and report.md (default: beside metrics)")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="McNemar + paired bootstrap between two evaluations on the same images")
    cmp.add_argument("a", type=Path, help="evaluation directory or predictions.csv of model A")
    cmp.add_argument("b", type=Path, help="evaluation directory or predictions.csv of model B")
    cmp.add_argument("--metric", action="append", dest="metrics", metavar="NAME",
                     help="metric for the paired bootstrap (repeatable; default accuracy and balanced_accuracy)")
    cmp.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--json", type=Path, help="also write the tests as JSON here")
    cmp.set_defaults(func=cmd_compare)


def _allow_args(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--allow-unfinished", action="store_true",
                   help=f"{verb} a run whose training did not finish (every answer then carries a warning)")
    p.add_argument("--allow-synthetic", action="store_true",
                   help=f"{verb} a run trained on synthetic images (every answer then carries a warning)")


def _data_config(args: argparse.Namespace) -> Any | None:
    """The data config to evaluate on, or ``None`` for the run's own (resolved once the run is loaded)."""
    from lesionlab.config import DataConfig, apply_overrides, build_config, read_extending_yaml
    from lesionlab.runs import read_info

    overrides = [o.removeprefix("data.") for o in [*args.overrides, *args.old_overrides]]
    overrides += [f"source={args.source}"] if args.source else []
    if args.config is None and not overrides:
        return None
    run_data = (read_info(args.run).get("config") or {}).get("data", {})
    if args.config is not None:
        base = read_extending_yaml(args.config).get("data", {})
        where = f"{args.config} (data)"
    else:
        base, where = run_data, "run data config"
    cfg = build_config(DataConfig, apply_overrides(base, overrides, where="overrides"), where=where)
    given = {o.split("=", 1)[0].strip() for o in overrides} | (set(base) if args.config is not None else set())
    _refuse_preprocessing_changes(cfg, build_config(DataConfig, run_data, where=f"{args.run}/run.json (config.data)"),
                                  given, f"{args.config} (data)" if args.config is not None else "the overrides")
    return cfg


#: Data settings that are part of a run's preprocessing (run.json): the evaluation always uses the run's own.
PREPROCESSING_KEYS = ("image_size", "resize", "colour_constancy", "colour_constancy_power")


def _refuse_preprocessing_changes(cfg: Any, run_cfg: Any, given: set[str], where: str) -> None:
    """A data setting the evaluation would not apply is an error, not silently ignored: the model is scored on the
    inputs it was trained on (the preprocessing saved in run.json), whatever another config says. Only the keys a
    user gave count (``given``); a default of a config file that does not name them is not a request."""
    changed = [f"{key}={_plain(getattr(cfg, key))} (the run's: {_plain(getattr(run_cfg, key))})"
               for key in PREPROCESSING_KEYS if key in given and getattr(cfg, key) != getattr(run_cfg, key)]
    if changed:
        raise UsageError(f"{where} change the run's preprocessing, which an evaluation does not: {'; '.join(changed)}. "
                         "A run is scored with the preprocessing saved in its run.json; leave these keys out "
                         "(or use a config whose data section matches the run's), or train a run with them")


def _plain(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _console() -> Any:
    from lesionlab.core.console import make_console

    return make_console()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the headline table, render the report."""
    from lesionlab.evaluate.evaluation import ScopeOptions, evaluate_run
    from lesionlab.evaluate.report import render_run_report

    if args.split != "test" and args.isic_csv is not None:
        raise UsageError("--split does not apply to an external ISIC test set (all its images are scored)")
    result = evaluate_run(args.run, data_cfg=_data_config(args), split=args.split, tta=args.tta,
                          tta_views=args.tta_views,
                          calibrate=args.calibrate, target_sensitivity=args.target_sensitivity,
                          isic_csv=args.isic_csv, isic_images=args.isic_images, out_dir=args.out,
                          bootstrap=args.bootstrap, seed=args.seed, batch_size=args.batch_size, device=args.device,
                          timing_images=args.timing_images, audit=args.audit,
                          progress=sys.stderr.isatty() and not args.no_progress, corruptions=args.corruptions,
                          severities=args.severities, corruption_seed=args.corruption_seed,
                          robustness_reference=args.robustness_reference,
                          scope=ScopeOptions(args.scope_method, args.max_false_rejection, args.scope_compare,
                                             args.ood_images, args.degradation_false_rejection),
                          allow_unfinished=args.allow_unfinished, allow_synthetic=args.allow_synthetic)
    print_metrics(result.metrics)
    console = _console()
    console.print(f"predictions: {result.predictions_path}")
    console.print(f"metrics:     {result.metrics_path}")
    if not args.no_report:
        paths = render_run_report(result.out_dir)
        console.print(f"report:      {paths['html']}")
    return 0


def print_metrics(doc: dict[str, Any]) -> None:
    """The report's metrics and per-class tables, then calibration, referral, timing and undefined-value lines."""
    from lesionlab.evaluate.report import decision_rules_table, fmt, headline_table, per_class_table

    console = _console()
    data = doc.get("data") or {}
    console.print(f"[bold]{(doc.get('run') or {}).get('name', 'run')} on {data.get('source', '?')} / "
                  f"{data.get('split', '?')} ({doc['n']} images)")
    tables = (headline_table(doc), per_class_table(doc, list(doc["per_class"])),
              decision_rules_table(doc, list(doc["per_class"])))
    for table in (t for t in tables if t is not None):
        shown = rich_table(table.title, table.columns, left=table.columns[:1])
        for row in table.rows:
            shown.add_row(*row)
        console.print(shown)
    ev = doc.get("evaluation") or {}
    if ev.get("temperature"):
        unc = doc.get("uncalibrated") or {}
        console.print(f"temperature {ev['temperature']:.3f} ({ev.get('temperature_source')}): ECE "
                      f"{fmt(unc.get('ece'))} -> {fmt(doc.get('ece'))}")
    if doc.get("referral"):
        r = doc["referral"]
        console.print(f"referral threshold {r['threshold']:.3f} ({r.get('source')}): sensitivity "
                      f"{fmt(r.get('sensitivity'))}, specificity {fmt(r.get('specificity'))}, referral rate "
                      f"{fmt(r.get('referral_rate'))}")
        mel = (r.get("by_class") or {}).get("mel")
        if mel:
            console.print(f"melanomas referred: {mel['referred']} of {mel['n']} ({fmt(mel['rate'])})")
    if doc.get("timing"):
        t = doc["timing"]
        console.print(f"runtime on {t['device']}: {t['ms_per_image_batch1']:.2f} ms/image at batch 1, "
                      f"{t['ms_per_image_batched']:.2f} ms/image at batch {t['batch_size']} (tta {fmt(t['tta'])})")
    print_scope(console, doc.get("scope") or {})
    if doc.get("subgroups"):
        from lesionlab.evaluate.subgroups import summary_text

        console.print(f"subgroups: {summary_text(doc['subgroups'])}")
    if doc.get("robustness"):
        from lesionlab.evaluate.robustness_report import headline_text

        console.print(f"robustness: {headline_text(doc['robustness'])}")
    for key, reason in (doc.get("undefined") or {}).items():
        console.print(f"[yellow]undefined[/yellow] {key}: {reason}")
    for warning in ev.get("warnings") or []:
        console.print(f"[bold red]warning[/bold red]: {warning}")


def print_scope(console: Any, scope: dict[str, Any]) -> None:
    """The out-of-scope gate's table (AUROC, detected share, false rejections), abstention and quality lines."""
    from lesionlab.evaluate.report import fmt

    gate = scope.get("gate")
    if gate:
        table = rich_table(f"out-of-scope gate ({gate['method']}, threshold {gate['threshold']:.4g}): "
                           f"{fmt(gate.get('false_rejection'))} of these images rejected",
                           ("set", "method", "AUROC", "detected", "false rejection"), left=("set", "method"))
        for row in scope.get("ood") or []:
            table.add_row(row["set"], row["method"] + (" *" if row["gate"] else ""), fmt(row["auroc"]),
                          fmt(row["detected"]), fmt(row["false_rejection"]))
        console.print(table)
    unsure = scope.get("uncertainty")
    if unsure:
        console.print(f"uncertain (margin < {unsure['threshold']:.3f}): {fmt(unsure['uncertain_rate'])} of images; "
                      f"accuracy {fmt(unsure['accuracy_uncertain'])} uncertain vs {fmt(unsure['accuracy_certain'])} "
                      "certain")
    quality = scope.get("quality")
    if quality:
        console.print(f"image quality flags: {quality['flagged']} of {quality['n']} images")
    degradation = scope.get("degradation")
    if degradation:
        console.print(f"flagged degraded: {degradation['flagged']} of {scope.get('n')} images (threshold "
                      f"{degradation['threshold']:.3f})")


def cmd_report(args: argparse.Namespace) -> int:
    """Render and print the HTML path."""
    from lesionlab.evaluate.grid_report import render_grid_dir
    from lesionlab.evaluate.report import GRID_RESULTS_FILE, render_run_report

    if (args.path / GRID_RESULTS_FILE).is_file():
        paths = render_grid_dir(args.path, args.out)
    else:
        paths = render_run_report(args.path, args.out)
    print(paths["html"])
    return 0


def _predictions_path(path: Path) -> Path:
    from lesionlab.evaluate.report import PREDICTIONS_FILE

    return path / PREDICTIONS_FILE if path.is_dir() else path


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the paired tests and print each with its sizes and effect size."""

    from lesionlab.evaluate.predictions import read_predictions
    from lesionlab.evaluate.stats import compare_predictions, format_p

    pa, pb = _predictions_path(args.a), _predictions_path(args.b)
    names = (str(args.a), str(args.b))
    if names[0] == names[1]:
        raise UsageError(f"comparing {args.a} with itself")
    results = compare_predictions(read_predictions(pa), read_predictions(pb), names=("A", "B"),
                                  metrics=args.metrics or ("accuracy", "balanced_accuracy"), n_boot=args.bootstrap,
                                  seed=args.seed)
    console = _console()
    console.print(f"A = {names[0]}\nB = {names[1]}")
    columns = ("comparison", "test", "statistic", "p", "n", "effect size")
    table = rich_table("paired tests, A vs B", columns, left=columns)
    for r in results:
        effect = "undefined" if r.effect_size is None else f"{r.effect_size:.4g}"
        if r.ci is not None:
            effect += f" [{r.ci[0]:.4f}, {r.ci[1]:.4f}]"
        table.add_row(r.label, r.test, f"{r.statistic_name} = {r.statistic:.4g}", format_p(r.p_value),
                      ", ".join(f"{k}={v}" for k, v in r.n.items()), f"{r.effect_name} = {effect}")
    console.print(table)
    for r in results:
        print(r)
    if args.json:
        from lesionlab.core.io import atomic_write_json

        atomic_write_json(args.json, {"a": names[0], "b": names[1], "tests": [r.to_dict() for r in results]})
    return 0
