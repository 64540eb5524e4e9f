"""``lesionlab demo``: the main job end to end, on real data when present, else on the built-in SYNTHETIC set.

data summary -> leakage audit -> split file -> decode-once cache -> train a CPU preset -> evaluate on the test split
(temperature and referral threshold fitted on validation) -> one self-contained HTML report -> the HAM10000 study's
35 + 35 reader contest (its study definition, created on that run by the reader-study platform) with SIMULATED
readers, and its reader-study report. Every step calls the same functions as its own command; this module only
chains them and says which data it used, what it will do and about how long it takes.

``--quick`` trains no backbone: an ImageNet backbone's embeddings are computed once, and a few heads that differ only
in how they weight the rare classes are trained on them; the one with the best balance of validation accuracy and
balanced accuracy (:func:`choose_head`; the test split is never looked at) is evaluated.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.config import RunConfig, load_config
from lesionlab.core.errors import MissingFileError
from lesionlab.core.io import atomic_write_json

# Presets, relative to the repository root (where `make demo` runs). On real data the best CPU preset: the image plus
# the patient's age, sex and lesion site (docs/BENCHMARKS.md).
REAL_PRESET = Path("configs/cpu-lite0-64-clinical.yaml")
QUICK_REAL_PRESET = Path("configs/quick-lite0-clinical.yaml")
SYNTHETIC_PRESET = Path("configs/smoke.yaml")

#: About how long each preset's demo takes on 2 CPU cores, measured on a fresh clone (docs/BENCHMARKS.md, "make demo").
EXPECTED_DURATION: dict[Path, str] = {REAL_PRESET: "about 15 minutes", QUICK_REAL_PRESET: "2-3 minutes",
                                      SYNTHETIC_PRESET: "about 2 minutes"}

#: What the full preset reaches on the shared data's test split (docs/BENCHMARKS.md, "Training presets"): the figures
#: the quick path prints its own beside.
FULL_PRESET_RESULT: dict[str, Any] = {"config": str(REAL_PRESET), "split": "dermamnist_c", "accuracy": 0.900,
                                      "balanced_accuracy": 0.760, "macro_auc": 0.979, "duration": "about 15 minutes",
                                      "command": "make demo", "cpu": "AMD EPYC"}

#: The heads the quick path trains on the same cached embeddings: they differ only in how the loss weights the rare
#: classes, the one setting that moves a frozen model between accuracy and balanced accuracy.
QUICK_HEADS: dict[str, dict[str, Any]] = {
    "unweighted": {"class_weights": "none"},
    "sqrt-weighted": {"class_weights": "sqrt"},
    "balanced-weighted": {"class_weights": "balanced"},
}


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


def plan_lines(cfg: RunConfig, preset: Path, quick: bool) -> list[str]:
    """What the demo will do and about how long it takes, said before any work starts."""
    train = (f"embed every image once with the frozen ImageNet {cfg.model.name} backbone, train {len(QUICK_HEADS)} "
             f"heads on the embeddings ({', '.join(QUICK_HEADS)}) and keep the one with the best balance of "
             "validation accuracy and balanced accuracy" if quick and cfg.train.mode == "frozen" else
             f"train {cfg.model.name} ({cfg.train.mode}, {cfg.train.epochs} epochs"
             f"{', with age, sex and site' if cfg.model.fusion != 'none' else ''})")
    duration = EXPECTED_DURATION.get(preset, "unknown for a custom preset")
    if preset in EXPECTED_DURATION and cfg.train.mode != "frozen" and cfg.train.bf16 == "on":
        from lesionlab.train.precision import cpu_has_native_bf16

        if not cpu_has_native_bf16():  # measured with bf16; emulated it is slower than float32, which runs instead
            duration += (" with native bf16; this CPU has none, so it trains in float32, about twice as long "
                         "(34 minutes on an AVX2-only CPU: docs/BENCHMARKS.md, 'make demo on real data')")
    lines = [f"lesionlab demo: preset {preset}; expected duration on 2 CPU cores: {duration}",
             "steps: data summary, leakage audit, split file, decode-once image cache, "
             f"{train}, evaluation on the test split (calibrated on validation) and its report, a reader study "
             "with SIMULATED readers"]
    if preset == REAL_PRESET:
        lines.append("for a first look in 2-3 minutes: lesionlab demo --quick (frozen backbone, lower figures)")
    return lines


def choose_head(candidates: list[dict[str, Any]], majority_rate: float) -> str:
    """The candidate with the highest mean of validation accuracy and balanced accuracy.

    Candidates whose validation accuracy falls below ``majority_rate`` (what always answering the most common class
    scores) are left out unless every one does: such a head buys balanced accuracy by misclassifying the common
    class, the first impression the quick path must not give. Each candidate is ``{"name", "val_accuracy",
    "val_balanced_accuracy"}``; only validation figures are ever passed here.
    """
    if not candidates:
        raise ValueError("no candidate heads to choose from")
    sensible = [c for c in candidates if c["val_accuracy"] >= majority_rate] or candidates
    best = max(sensible, key=lambda c: (c["val_accuracy"] + c["val_balanced_accuracy"]) / 2)
    return str(best["name"])


def train_quick_heads(cfg: RunConfig, out: Path, table: Any, progress: bool, console: Any) -> tuple[Path, list[dict]]:
    """Train :data:`QUICK_HEADS` on one set of cached embeddings and return the chosen run and the candidates."""
    from lesionlab.core.argparsing import rich_table
    from lesionlab.runs import read_info
    from lesionlab.train import fit

    candidates = []
    for name, update in QUICK_HEADS.items():
        head_cfg = cfg.model_copy(update={"name": f"{cfg.name}-{name}", "train": cfg.train.model_copy(update=update)})
        run_dir = fit(head_cfg, run_dir=out / "heads" / name, progress=progress)
        best = read_info(run_dir).get("best") or {}
        candidates.append({"name": name, "run_dir": str(run_dir), "epoch": best.get("epoch"),
                           "val_accuracy": float(best.get("val_accuracy") or 0.0),
                           "val_balanced_accuracy": float(best.get("val_balanced_accuracy") or 0.0)})
    labels = table.loc[table["split"] == "val", "label"]
    majority = float(labels.value_counts(normalize=True).max()) if len(labels) else 0.0
    chosen = choose_head(candidates, majority)
    shown = rich_table("heads on the same embeddings (validation split)",
                       ["head", "accuracy", "balanced accuracy", "mean", "chosen"], left=["head", "chosen"])
    for c in candidates:
        c["chosen"] = c["name"] == chosen
        mean = (c["val_accuracy"] + c["val_balanced_accuracy"]) / 2
        shown.add_row(c["name"], f"{c['val_accuracy']:.3f}", f"{c['val_balanced_accuracy']:.3f}", f"{mean:.3f}",
                      "<- chosen" if c["chosen"] else "")
    console.print(shown)
    console.print(f"always answering the most common class would score accuracy {majority:.3f} on validation; heads "
                  "below it are chosen only when all are")
    return Path(next(c["run_dir"] for c in candidates if c["chosen"])), candidates


def headline_lines(metrics: dict[str, Any], cfg: RunConfig, synthetic: bool, quick: bool) -> list[str]:
    """The closing figures; the quick path's beside what the full preset reaches on the same test split."""
    acc, bal, auc = (metrics.get(k) for k in ("accuracy", "balanced_accuracy", "macro_auc"))

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"test accuracy {f(acc)}, balanced accuracy {f(bal)}, macro AUC {f(auc)} ({metrics.get('n')} images)"]
    if quick and not synthetic and str(cfg.data.split) == FULL_PRESET_RESULT["split"]:
        ref = FULL_PRESET_RESULT
        lines.append(f"the full preset on the same test split: accuracy {ref['accuracy']:.3f}, balanced accuracy "
                     f"{ref['balanced_accuracy']:.3f}, macro AUC {ref['macro_auc']:.3f} ({ref['command']}, "
                     f"{ref['duration']} on 2 cores of an {ref['cpu']}; another kind of CPU trains another model from "
                     "the same seed; docs/BENCHMARKS.md)")
    return lines


def run_demo(cfg: RunConfig, out: Path, progress: bool = True, console: Any = None, quick: bool = False
             ) -> dict[str, Any]:
    """Chain the steps; returns the paths and headline figures. Re-running reuses a finished run.

    ``quick`` with a frozen-backbone preset trains :data:`QUICK_HEADS` and keeps the one :func:`choose_head` picks.
    """
    from lesionlab.core.console import make_console
    from lesionlab.data.audit import audit_split
    from lesionlab.data.commands import _counts_table, _header, render_audit
    from lesionlab.data.sources import open_source
    from lesionlab.data.splits import split_frame, split_hash, write_split_csv
    from lesionlab.evaluate.commands import print_metrics
    from lesionlab.evaluate.evaluation import evaluate_run
    from lesionlab.evaluate.report import render_run_report
    from lesionlab.runs import read_info
    from lesionlab.train import fit
    from lesionlab.train.plans import training_image_cache

    console = console or make_console(highlight=False)
    started = time.perf_counter()
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
    train_rows = np.flatnonzero(source.table["split"].astype(str).to_numpy() == "train")
    images, _ = training_image_cache(source, cfg, train_rows, progress)  # the very cache training reads
    console.print(f"{images.shape[0]:,} images cached at {images.shape[1]}x{images.shape[2]}")
    timings["cache_s"] = time.perf_counter() - start

    heads = quick and cfg.train.mode == "frozen"
    start = step(f"5/7 train ({cfg.name}: {cfg.model.name}, {cfg.train.mode}"
                 f"{f', {len(QUICK_HEADS)} heads on cached embeddings' if heads else ''}, "
                 f"up to {cfg.train.epochs} epochs)")
    # A complete run is reused and a killed one resumes from its last checkpoint (the engine decides).
    candidates: list[dict[str, Any]] = []
    if heads:
        run_dir, candidates = train_quick_heads(cfg, out, source.table, progress, console)
    else:
        run_dir = fit(cfg, run_dir=out / "run", progress=progress)
    best = read_info(run_dir).get("best") or {}
    epoch = best.get("epoch")  # run.json counts from 0; the console, like `lesionlab train`, from 1
    console.print(f"run: {run_dir}; best epoch {'?' if epoch is None else int(epoch) + 1} of {cfg.train.epochs} by "
                  f"validation {cfg.train.monitor}")
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
    m = result.metrics
    timings["total_s"] = time.perf_counter() - started
    console.rule(f"[bold]done in {timings['total_s'] / 60:.1f} minutes")
    console.print(f"data:    {kind}")
    for line in headline_lines(m, cfg, bool(source.synthetic), quick):
        console.print(f"figures: {line}")
    console.print(f"report:  {report['html']}")
    console.print(f"study:   {study['report']} (SIMULATED readers, not people); the study: {study['study']}")
    console.print(f"serve:   lesionlab serve {run_dir}{' --allow-synthetic' if source.synthetic else ''}   (then open http://127.0.0.1:8000/)")
    return {"synthetic": bool(source.synthetic), "quick": quick, "run_dir": str(run_dir),
            "report": str(report["html"]), "accuracy": m.get("accuracy"),
            "balanced_accuracy": m.get("balanced_accuracy"), "macro_auc": m.get("macro_auc"),
            "heads": candidates, "reference": FULL_PRESET_RESULT if quick else None,
            "study_report": study["report"], "timings": timings}


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
    args.out = args.out or Path("outputs/demo-quick" if args.quick else "outputs/demo")
    cfg, path = resolve_config(args.config, args.overrides, args.quick)
    for line in plan_lines(cfg, path, args.quick):
        print(line, flush=True)
    summary = run_demo(cfg, args.out, progress=not args.no_progress, quick=args.quick)
    atomic_write_json(args.out / "demo.json", summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lesionlab demo``."""
    p = sub.add_parser("demo", help="the main job end to end: data, audit, split, cache, train, evaluate, report",
                       description=__doc__)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.epochs=2")
    p.add_argument("--config", type=Path, help=f"preset (default: {REAL_PRESET} on real data, "
                                               f"{SYNTHETIC_PRESET} on the synthetic set)")
    p.add_argument("--quick", action="store_true",
                   help=f"2-3 minutes: on real data {QUICK_REAL_PRESET} (frozen backbone, embeddings computed "
                        f"once, {len(QUICK_HEADS)} heads compared on validation); output in outputs/demo-quick")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/demo, or outputs/demo-quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
