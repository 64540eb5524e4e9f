"""The grid workflow in a few calls: load -> expand -> prepare (splits, checks) -> execute -> aggregate.

``lesionlab experiment`` is a thin wrapper over these; notebooks-free scripts can call them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from lesionlab.experiments.aggregate import Tables, aggregate, collect, write_outputs
from lesionlab.experiments.grid import ExperimentConfig
from lesionlab.experiments.plan import PlannedRun


def write_plan(cfg: ExperimentConfig, plan: Sequence[PlannedRun], grid_path: Path | None = None) -> None:
    """Record the resolved grid and its run list in the output dir (``grid.yaml``, ``plan.csv``)."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    header = f"# resolved from {grid_path}\n" if grid_path else ""
    (out / "grid.yaml").write_text(header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    rows = [{"run_id": r.run_id, **r.labels, "run_dir": str(r.run_dir)} for r in plan]
    pd.DataFrame(rows).to_csv(out / "plan.csv", index=False)


def prepare_grid(cfg: ExperimentConfig, plan: Sequence[PlannedRun], grid_path: Path | None = None) -> dict[str, str]:
    """Everything before the first run: plan files, k-fold split files, and the test-split agreement check.

    Returns run id -> hash of its test image ids (one hash for seed designs, one per fold for k-fold designs).
    """
    from lesionlab.experiments.splits import check_test_splits, write_fold_splits

    write_plan(cfg, plan, grid_path)
    if cfg.repeat.kind == "fold" and cfg.repeat.levels:
        write_fold_splits(cfg, plan)
    return check_test_splits(cfg, plan)


def aggregate_grid(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> tuple[Tables, list[Path]]:
    """Collect finished runs, build the tables and tests, write them (and the HTML/Markdown grid report)."""
    results, missing = collect(plan)
    tables = aggregate(results, cfg)
    if missing:
        tables.notes.append(f"{len(missing)} of {len(plan)} runs not finished yet (left out): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    paths = write_outputs(tables, cfg, cfg.output_dir, len(plan))
    if not results.empty:
        from lesionlab.evaluate.grid_report import render_grid_report

        metrics = list(dict.fromkeys([*cfg.report.metrics, "balanced_accuracy", "macro_auc"]))
        report = render_grid_report(results, tables.tests, cfg.output_dir, title=f"Experiment grid {cfg.name}",
                                    metrics=metrics, group_by=cfg.axis_names, tables=tables.tables,
                                    notes=tables.notes)
        paths += list(report.values())
    return tables, paths
