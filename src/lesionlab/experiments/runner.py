"""The grid workflow: prepare (plan files, splits, checks) -> run jobs locally or write them for a cluster -> aggregate.

Planned runs become ``lesionlab train`` + ``lesionlab evaluate`` jobs. Each run's config (the base plus the grid's
overrides) is written to ``<output_dir>/configs/<run_id>.yaml`` first, so every run is one self-contained command
line, identical whether the local scheduler or a Slurm array task runs it. Status is kept in
``<output_dir>/status.json`` (updated as each run ends); "finished" is still decided from the files themselves
(run.json and eval metrics.json), so a killed grid resumes correctly even if the status file is stale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lesionlab.core.io import atomic_write, atomic_write_text, read_json
from lesionlab.experiments.aggregate import Tables, aggregate, collect, write_outputs
from lesionlab.experiments.execute import Job, JobResult, run_jobs, shell_command, slurm_script, thread_env
from lesionlab.experiments.grid import EvaluateSpec, ExperimentConfig
from lesionlab.experiments.plan import PlannedRun, config_path
from lesionlab.experiments.selection import write_selection_tables

#: How the local scheduler calls lesionlab: the same interpreter (and so the same environment) as this process.
LOCAL_EXE: tuple[str, ...] = (sys.executable, "-m", "lesionlab.cli")
#: How written command files call it: whatever ``lesionlab`` is on the cluster's PATH.
SHELL_EXE: tuple[str, ...] = ("lesionlab",)


def log_path(run: PlannedRun) -> Path:
    """The run's scheduler log (both steps' output), inside its run directory."""
    return run.run_dir / "experiment.log"


def write_run_configs(plan: Sequence[PlannedRun], output_dir: Path) -> None:
    """Write every run's config file (the one the train step reads; see :meth:`PlannedRun.config_file_dict`)."""
    for run in plan:
        path = config_path(output_dir, run.run_id)
        text = yaml.safe_dump(run.config_file_dict(), sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)


def run_steps(run: PlannedRun, output_dir: Path, evaluate: EvaluateSpec,
              exe: Sequence[str] = LOCAL_EXE, skip_trained: bool = True) -> tuple[tuple[str, ...], ...]:
    """The argv steps of one run: train (left out when training completed and ``skip_trained``), then evaluate.

    An interrupted training run is simply started again: the trainer resumes from its checkpoint.
    """
    steps: list[tuple[str, ...]] = []
    if not (skip_trained and run.is_trained):
        steps.append((*exe, "train", "--config", str(config_path(output_dir, run.run_id)), str(run.run_dir)))
    ev = [*exe, "evaluate", str(run.run_dir), "--split", evaluate.split, "--out", str(run.eval_dir)]
    if evaluate.tta is not None:
        ev.append("--tta" if evaluate.tta else "--no-tta")
    for flag, value in (("--bootstrap", evaluate.bootstrap), ("--timing-images", evaluate.timing_images),
                        ("--device", evaluate.device), ("--batch-size", evaluate.batch_size)):
        if value is not None:
            ev += [flag, str(value)]
    if not evaluate.report:
        ev.append("--no-report")
    if run.config.data.source in ("synthetic", "auto"):
        # a grid on the synthetic set measures the software; its reports carry the synthetic-data warning
        ev.append("--allow-synthetic")
    steps.append((*ev, *evaluate.extra_args))
    for extra in (e for e in evaluate.extra_evaluations if e.name in run.extra_evals):
        device = ["--device", evaluate.device] if evaluate.device else []
        steps.append((*exe, "evaluate", str(run.run_dir), "--split", evaluate.split, "--out",
                      str(run.extra_eval_dir(extra.name)), "--bootstrap", "0", "--timing-images", "0", "--audit",
                      "none", "--no-report", "--no-progress", *device, *extra.args))
    return tuple(steps)


def pending_runs(plan: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The runs still to do (not trained and evaluated), in plan order."""
    return [run for run in plan if not run.is_finished]


def read_status(output_dir: Path) -> dict[str, Any]:
    """The grid's status.json (empty before the first run); an unreadable file is an error naming it."""
    path = output_dir / "status.json"
    if not path.is_file():
        return {}
    return read_json(path, hint="; delete it to rebuild the status from the run directories")


def execute_local(plan: Sequence[PlannedRun], cfg: ExperimentConfig, workers: int | None = None,
                  threads: int | None = None, progress: bool = True,
                  exe: Sequence[str] = LOCAL_EXE) -> list[JobResult]:
    """Run every unfinished run of ``plan`` with local workers; failures are recorded in status.json, not raised."""
    output_dir = cfg.output_dir
    todo = pending_runs(plan)
    write_run_configs(plan, output_dir)
    by_id = {run.run_id: run for run in todo}
    step_names: dict[str, tuple[str, ...]] = {}
    jobs = []
    for run in todo:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        steps = run_steps(run, output_dir, cfg.evaluate, exe)
        names = ("evaluate", *(f"evaluate {name}" for name in run.extra_evals))
        step_names[run.run_id] = (("train",) if len(steps) > len(names) else ()) + names
        jobs.append(Job(run.run_id, steps, log_path(run)))
    status = read_status(output_dir)

    def record(result: JobResult) -> None:
        run = by_id[result.job_id]
        failed = None if result.failed_step is None else step_names[result.job_id][result.failed_step]
        status[result.job_id] = {
            "status": "ok" if result.ok else "failed", "returncode": result.returncode, "failed_step": failed,
            "seconds": round(result.seconds, 1), "log": str(result.log), "labels": run.labels,
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(output_dir / "status.json", json.dumps(status, indent=2))

    return run_jobs(jobs, workers or cfg.workers, threads or cfg.threads_per_worker, progress, record,
                    desc=f"grid {cfg.name}")


def write_commands(plan: Sequence[PlannedRun], cfg: ExperimentConfig, path: Path,
                   threads: int | None = None) -> int:
    """Write one shell line per unfinished run (for any scheduler); returns how many lines were written."""
    todo = pending_runs(plan)
    write_run_configs(plan, cfg.output_dir)
    env = thread_env(threads) if threads else None
    lines = [shell_command(run_steps(run, cfg.output_dir, cfg.evaluate, SHELL_EXE), env) for run in todo]
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return len(lines)


def write_slurm(plan: Sequence[PlannedRun], cfg: ExperimentConfig, script: Path) -> tuple[Path, int]:
    """Write ``script`` (a Slurm array) and its commands file beside it; returns (commands file, task count)."""
    commands = script.with_name(f"{script.stem}.commands.txt")
    s = cfg.slurm
    n = write_commands(plan, cfg, commands, threads=s.cpus_per_task)
    (cfg.output_dir / "logs").mkdir(parents=True, exist_ok=True)
    sbatch = {"partition": s.partition, "time": s.time, "cpus_per_task": s.cpus_per_task, "mem": s.mem,
              "gres": s.gres}
    atomic_write_text(script, slurm_script(cfg.name, commands, n, cfg.output_dir / "logs", sbatch, s.extra,
                                           s.setup, s.max_parallel))
    script.chmod(0o755)
    return commands, n


def write_plan(cfg: ExperimentConfig, plan: Sequence[PlannedRun], grid_path: Path | None = None) -> None:
    """Record the resolved grid and its run list in the output dir (``grid.yaml``, ``plan.csv``)."""
    header = f"# resolved from {grid_path}\n" if grid_path else ""
    atomic_write_text(cfg.output_dir / "grid.yaml",
                      header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    rows = pd.DataFrame([{"run_id": r.run_id, **r.labels, "run_dir": str(r.run_dir)} for r in plan])
    atomic_write(cfg.output_dir / "plan.csv", lambda tmp: rows.to_csv(tmp, index=False))


def prepare_grid(cfg: ExperimentConfig, plan: Sequence[PlannedRun], grid_path: Path | None = None) -> dict[str, str]:
    """Everything before the first run: plan files, k-fold split files, and the test-split agreement check.

    Returns run id -> hash of its test image ids (one hash for seed designs, one per fold for k-fold designs).
    """
    from lesionlab.experiments.splits import check_test_splits, write_fold_splits

    write_plan(cfg, plan, grid_path)
    if cfg.repeat.kind == "fold" and cfg.repeat.levels:
        write_fold_splits(cfg, plan)
    return check_test_splits(cfg, plan)


def aggregate_grid(cfg: ExperimentConfig, plan: Sequence[PlannedRun], base: dict[str, Any] | None = None
                   ) -> tuple[Tables, list[Path]]:
    """Collect finished runs, build the tables and tests, write them (and the HTML/Markdown grid report).

    With a ``select`` section the cross-validation ranking is added (``selection.json``/``.md``; ``base``, the
    grid's base config, names the final run and reads its test score once it exists).
    """
    results, missing = collect(plan)
    tables = aggregate(results, cfg)
    if missing:
        tables.notes.append(f"{len(missing)} of {len(plan)} runs not finished yet (left out): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    paths = write_selection_tables(cfg, results, base, tables) if cfg.select is not None else []
    paths += write_outputs(tables, cfg, cfg.output_dir, len(plan))
    if not results.empty:
        from lesionlab.evaluate.grid_report import render_grid_report

        metrics = list(dict.fromkeys([*cfg.report.metrics, "balanced_accuracy", "macro_auc"]))
        report = render_grid_report(results, tables.tests, cfg.output_dir, title=f"Experiment grid {cfg.name}",
                                    metrics=metrics, group_by=cfg.axis_names, tables=tables.tables,
                                    notes=tables.notes)
        paths += list(report.values())
    return tables, paths
