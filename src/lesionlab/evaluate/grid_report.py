"""The grid report: a table of runs and the tests between conditions -> the same HTML + Markdown as a run report.

:func:`grid_report` is a pure function from data to a :class:`~lesionlab.evaluate.report.Document`;
:func:`render_grid_dir` and :func:`render_grid_report` add the file IO.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionlab.evaluate.figures import grid_figure, png_data_uri
from lesionlab.evaluate.report import GRID_RESULTS_FILE, Document, Plot, ReportError, Table, fmt, write_report
from lesionlab.evaluate.stats import TestResult, format_p

#: Top-level scalar keys of metrics.json: never condition labels, even when a CSV round trip makes them integers.
METRIC_KEYS = frozenset({"n", "accuracy", "error_rate", "balanced_accuracy", "macro_f1", "macro_auc", "macro_ap",
                         "macro_gmean", "ece", "ece_bins", "nll", "brier"})


def _group_columns(rows: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Condition labels: columns that are neither ids, repeats, metrics nor dotted metric leaves."""
    skip = {"run_id", "run", "seed", "fold", "path", *metrics, *METRIC_KEYS}
    return [c for c in rows.columns if c not in skip and "." not in c and not pd.api.types.is_float_dtype(rows[c])]


def tests_table(tests: Sequence[TestResult]) -> Table:
    """One row per test: what was compared, the test, statistic, p (and Holm p), sizes and effect size."""
    rows = []
    for t in tests:
        holm = t.detail.get("p_holm")
        rows.append([t.label or "-", t.test, f"{t.statistic_name} = {t.statistic:.4g}", format_p(t.p_value),
                     "" if holm is None else format_p(holm), ", ".join(f"{k}={v}" for k, v in t.n.items()),
                     f"{t.effect_name} = {fmt(t.effect_size)}"
                     + (f" [{t.ci[0]:.3f}, {t.ci[1]:.3f}]" if t.ci is not None else "")])
    return Table("Tests between conditions", "table-tests",
                 ["comparison", "test", "statistic", "p", "p (Holm)", "n", "effect size"], rows,
                 "Two-sided tests; Holm adjustment within the family of tests shown when given.")


def grid_report(rows: pd.DataFrame, tests: Sequence[TestResult], title: str = "Experiment grid",
                metrics: Sequence[str] | None = None, group_by: Sequence[str] | None = None,
                tables: dict[str, pd.DataFrame] | None = None, notes: Sequence[str] = ()) -> Document:
    """The grid report's content (pure): mean +- sd per condition, each run, the tests, and extra tables.

    ``rows``: one row per run with label columns (model, image_size, ...) and metric columns (flattened
    metrics.json). ``group_by`` defaults to the label columns (text-valued, not ``run_id``/``seed``/``fold``).
    ``tables``: already formatted tables (e.g. the experiments aggregator's mean +- sd layouts) shown as given.
    """
    if rows.empty:
        raise ReportError("no runs to report")
    metrics = [m for m in (metrics or ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]) if m in rows]
    if not metrics:
        raise ReportError(f"none of the metrics is a column of the runs table (columns: {list(rows.columns)})")
    groups = list(group_by) if group_by is not None else _group_columns(rows, metrics)
    missing = [g for g in groups if g not in rows.columns]
    if missing:
        raise ReportError(f"group_by columns {missing} not in the runs table")
    summary_rows = []
    grouped = rows.groupby(groups, sort=False) if groups else [((), rows)]
    for key, sub in grouped:
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key]
        for m in metrics:
            vals = pd.to_numeric(sub[m], errors="coerce").dropna()
            if vals.empty:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{vals.iloc[0]:.3f} (n=1)")
            else:
                cells.append(f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f} (n={len(vals)})")
        summary_rows.append(cells)
    out_tables = [Table("Mean ± sd per condition", "table-summary", [*groups, *metrics], summary_rows,
                        "Sample standard deviation (ddof 1) over the runs of each condition; undefined values are "
                        "left out of n.")]
    for i, (name, frame) in enumerate((tables or {}).items()):
        frame = frame.reset_index()
        out_tables.append(Table(name, f"table-extra-{i}", [str(c) for c in frame.columns],
                                [[fmt(v) for v in r] for r in frame.itertuples(index=False)]))
    if tests:
        out_tables.append(tests_table(tests))
    id_cols = [c for c in ("run_id", "run") if c in rows.columns]
    run_cols = [*id_cols, *groups, *[c for c in ("seed", "fold") if c in rows.columns]]
    out_tables.append(Table("Runs", "table-runs", [*run_cols, *metrics],
                            [[fmt(r[c]) for c in run_cols] + [fmt(_float(r[m])) for m in metrics]
                             for _, r in rows.iterrows()]))
    plots = [Plot(f"{m} per condition", f"fig-grid-{m}", png_data_uri(grid_figure(rows, m, groups)),
                  f"{m} of every run per condition") for m in metrics[:2]]
    return Document(title=title, subtitle=f"{len(rows)} runs, {len(summary_rows)} conditions", kind="grid",
                    plots=plots, tables=out_tables, notes=list(notes))


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def render_grid_dir(path: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Report of an aggregated grid directory (``results.csv``, optional ``tests.json`` and ``tables/*.csv``)."""
    path = Path(path)
    results = path / GRID_RESULTS_FILE
    try:
        rows = pd.read_csv(results)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportError(f"{results}: not a readable CSV ({err})") from None
    tests: list[TestResult] = []
    tests_file = path / "tests.json"
    if tests_file.is_file():
        try:
            tests = [TestResult.from_dict(t) for t in json.loads(tests_file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ReportError(f"{tests_file}: cannot read saved tests ({err})") from None
    tables = {p.stem.split("_", 1)[-1].replace("_", " "): pd.read_csv(p, index_col=0)
              for p in sorted((path / "tables").glob("*.csv"))}
    return render_grid_report(rows, tests, out_dir or path, title=f"Experiment grid: {path.name}", tables=tables)


def render_grid_report(rows: pd.DataFrame, tests: Sequence[TestResult], out_dir: str | Path,
                       title: str = "Experiment grid", **kwargs: Any) -> dict[str, Path]:
    """Render a grid report (see :func:`grid_report` for ``kwargs``) into ``out_dir``."""
    return write_report(grid_report(rows, tests, title=title, **kwargs), out_dir)
