"""``lesionlab demo``: the main job end to end, on real data when present, else on the built-in SYNTHETIC set.

data summary -> leakage audit -> split file -> decode-once cache -> train a CPU preset -> evaluate on the test split
(temperature and referral threshold fitted on validation) -> one self-contained HTML report -> the HAM10000 study's
35 + 35 reader contest (its study definition, created on that run by the reader-study platform) with SIMULATED
readers, and its reader-study report. Every step calls the same functions as its own command; this module only
chains them and says which data it used.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from lesionlab.config import RunConfig, load_config
from lesionlab.core.errors import MissingFileError
from lesionlab.core.io import atomic_write_json

# Presets, relative to the repository root (where `make demo` runs). On real data the best CPU preset: the image plus
# the patient's age, sex and lesion site (docs/BENCHMARKS.md).
REAL_PRESET = Path("configs/cpu-lite0-64-clinical.yaml")
QUICK_REAL_PRESET = Path("configs/frozen-simple-64.yaml")
SYNTHETIC_PRESET = Path("configs/smoke.yaml")


def choose_preset(real_data: bool, quick: bool) -> Path:
    """The preset for the data found: CPU fine-tune with clinical data on real data (``quick``: the frozen path), else
    the smoke one."""
    if not real_data:
        return SYNTHETIC_PRESET
    return QUICK_REAL_PRESET if quick else REAL_PRESET


def resolve_config(config: Path | None, overrides: list[str], quick: bool) -> tuple[RunConfig, Path]:
    """Load the chosen preset; ``source: auto`` data stays real-when-present via the data layer."""
    from lesionlab.data.sources import shared_ham10000

    real = shared_ham10000() is not None
    path = config or choose_preset(real, quick)
    if not path.is_file():
        raise MissingFileError(f"demo preset {path} not found: run `lesionlab demo` from the repository root, "
                                "or pass --config")
    return load_config(path, overrides), path


def run_demo(cfg: RunConfig, out: Path, progress: bool = True, console: Any = None) -> dict[str, Any]:
    """Chain the steps; returns the paths and headline figures. Re-running reuses a finished run."""
    from rich.console import Console

    from lesionlab.data.audit import audit_split
    from lesionlab.data.cache import cached_images
    from lesionlab.data.commands import _counts_table, _header, render_audit
    from lesionlab.data.sources import open_source
    from lesionlab.data.splits import split_frame, split_hash, write_split_csv
    from lesionlab.evaluate.commands import print_metrics
    from lesionlab.evaluate.evaluation import evaluate_run
    from lesionlab.evaluate.report import render_run_report
    from lesionlab.runs import read_info
    from lesionlab.train import fit

    console = console or Console(highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(title: str) -> float:
        console.rule(f"[bold]{title}")
        return time.perf_counter()

    start = step("1/7 data")
    source = open_source(cfg.data)
    _header(console, source)
    console.print(_counts_table(source.table, "images by class and split"))
    timings["data_s"] = time.perf_counter() - start

    start = step("2/7 leakage audit")
    audit = audit_split(source, progress=progress)
    render_audit(console, audit)
    atomic_write_json(out / "audit.json", audit.to_dict())
    timings["audit_s"] = time.perf_counter() - start

    start = step("3/7 split file")
    split_csv = write_split_csv(split_frame(source.table), out / "split.csv")
    console.print(f"split {source.split_name or cfg.data.split} written to {split_csv}; "
                  f"hash {split_hash(source.table)[:16]}")
    timings["split_s"] = time.perf_counter() - start

    start = step("4/7 decode-once cache")
    images = cached_images(source, cfg.data.image_size, cfg.data.resize, cache_dir=cfg.data.cache_dir,
                           progress=progress)
    console.print(f"{images.shape[0]:,} images cached at {images.shape[1]}x{images.shape[2]}")
    timings["cache_s"] = time.perf_counter() - start

    start = step(f"5/7 train ({cfg.name}: {cfg.model.name}, {cfg.train.mode}, {cfg.train.epochs} epochs)")
    # A complete run is reused and a killed one resumes from its last checkpoint (the engine decides).
    run_dir = fit(cfg, run_dir=out / "run", progress=progress)
    best = read_info(run_dir).get("best") or {}
    console.print(f"run: {run_dir}; best epoch {best.get('epoch')} by validation {cfg.train.monitor}")
    timings["train_s"] = time.perf_counter() - start

    start = step("6/7 evaluate on the test split (calibrated on validation) and report")
    # the demo says so loudly when it ran on the synthetic set; its report then carries the warning too
    result = evaluate_run(run_dir, split="test", calibrate=True, out_dir=out / "eval-test", timing_images=16,
                          progress=progress, allow_synthetic=source.synthetic)
    print_metrics(result.metrics)
    report = render_run_report(result.out_dir)
    timings["evaluate_s"] = time.perf_counter() - start

    start = step("7/7 reader study with SIMULATED readers (HAM10000 contest 2) and its report")
    study = demo_study(run_dir, cfg, source, out / "study")
    console.print(study["summary"])
    timings["study_s"] = time.perf_counter() - start

    kind = "SYNTHETIC data (not dermoscopy; numbers mean nothing clinically)" if source.synthetic else \
        f"real data: {source.name}"
    console.rule("[bold]done")
    console.print(f"data:   {kind}")
    console.print(f"report: {report['html']}")
    console.print(f"serve:  lesionlab serve {run_dir}{' --allow-synthetic' if source.synthetic else ''}")
    console.print(f"study:  {study['report']} (SIMULATED readers, not people); the study itself: {study['study']} "
                  f"(lesionlab study invite|serve {study['study']})")
    m = result.metrics
    return {"synthetic": bool(source.synthetic), "run_dir": str(run_dir), "report": str(report["html"]),
            "accuracy": m.get("accuracy"), "balanced_accuracy": m.get("balanced_accuracy"),
            "macro_auc": m.get("macro_auc"), "study_report": study["report"], "timings": timings}


def demo_study(run_dir: Path, cfg: RunConfig, source: Any, out: Path) -> dict[str, Any]:
    """The HAM10000 study's 35 + 35 contest with SIMULATED readers, through the reader-study platform: its study
    definition (``configs/studies/ham10000-gp-35x2.yaml``) on this run and this data's test split (fewer cases per
    class where the split is small) -> ``lesionlab study create`` -> simulated readers on the frozen study -> report.
    """
    import shutil

    from lesionlab.config import read_yaml
    from lesionlab.study.create import MANIFEST, create_study
    from lesionlab.study.definition import definition_from_dict
    from lesionlab.study.simulated_contests import CONTESTS, contest_summary, run_contest

    contest = CONTESTS["ham10000-35x35"]
    path = Path(contest.definition)
    if not path.is_file():
        raise MissingFileError(f"study definition {path} not found: run `lesionlab demo` from the repository root")
    data = read_yaml(path)
    definition = definition_from_dict(data, where=str(path))
    test = source.table[source.table["split"] == "test"]
    sets = len(definition.case_sets())
    per_class = {c: min(n, int((test["dx"] == c).sum()) // sets) for c, n in definition.cases.counts().items()}
    data["model"] = {**data["model"], "run": str(run_dir)}
    # the run's own data and test split: the study's cases were never seen in training or model selection
    data["cases"] = {**data["cases"], "data": cfg.data.model_dump(mode="json"), "splits": ["test"],
                     "per_class": per_class}
    definition = definition_from_dict(data, where=f"{path} (on this run and its test split)")
    folder = out / "platform"
    if (folder / MANIFEST).is_file():  # the demo's own study from an earlier run: made afresh for this run
        shutil.rmtree(folder)
    create_study(definition, folder)
    result = run_contest(contest.key, out, study=folder, n_boot=500)
    return {"report": str(result.paths["report_html"]), "summary": contest_summary(result), "study": str(folder)}


def cmd_demo(args: argparse.Namespace) -> int:
    """Entry point of ``lesionlab demo``."""
    cfg, path = resolve_config(args.config, args.overrides, args.quick)
    print(f"lesionlab demo: preset {path}")
    summary = run_demo(cfg, args.out, progress=not args.no_progress)
    atomic_write_json(args.out / "demo.json", summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lesionlab demo``."""
    p = sub.add_parser("demo", help="the main job end to end: data, audit, split, cache, train, evaluate, report",
                       description=__doc__)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.epochs=2")
    p.add_argument("--config", type=Path, help=f"preset (default: {REAL_PRESET} on real data, "
                                               f"{SYNTHETIC_PRESET} on the synthetic set)")
    p.add_argument("--quick", action="store_true", help=f"on real data use {QUICK_REAL_PRESET} (minutes, frozen)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
