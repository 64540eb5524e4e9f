"""Aggregation: finished runs' metrics -> one results table, the studies' mean +- sd tables and the tests.

* ``results.csv``: one row per finished run (run id, its labels, every scalar metric of its metrics.json).
* ``summary.csv``: mean, sd and n of every reported metric per condition (all axes, over seeds or folds).
* mean +- sd tables laid out as the grid's ``report`` says (the HAM10000 study's Tables 2 and 3: models as rows,
  resolution x clinical data as columns; the DermaMNIST study's head x class-weight table), per-class TPR, TNR
  and G-mean supplementary tables, and Mann-Whitney U tests between the levels of each ``compare`` axis within
  every combination of the other axes (Holm-adjusted within each axis's family of tests).

Everything here is a pure function of the DataFrame except :func:`collect` (reads metrics) and
:func:`write_outputs` (writes files).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionlab.classes import CLASS_CODES
from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from lesionlab.evaluate.report import Table
from lesionlab.evaluate.stats import TestResult, compare_groups
from lesionlab.experiments.grid import ExperimentConfig
from lesionlab.experiments.plan import PlannedRun

SUPPLEMENTARY = {"tpr": "TPR (sensitivity)", "tnr": "TNR (specificity)", "gmean": "G-mean"}


class AggregationError(LesionlabError, ValueError):
    """A metrics file that cannot be read or lacks a metric the grid reports; names the file or metric."""


@dataclass
class Tables:
    """What aggregation produces, before it is written: the frames, titled tables and tests."""

    results: pd.DataFrame
    summary: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # title -> formatted mean +- sd table
    tests: list[TestResult] = field(default_factory=list)
    tests_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar numeric leaves of a metrics dict as dotted columns (``per_class.mel.tpr``); ``None`` becomes NaN.

    Lists (confusion matrices, class lists) and strings are not table columns and are left out.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) or value is None:
            out[name] = float("nan") if value is None else float(value)
    return out


def read_metrics(path: Path) -> dict[str, Any]:
    """One run's metrics.json, with an error naming the file when it is not a JSON object."""
    data = read_json(path, AggregationError)
    if not isinstance(data, dict):
        raise AggregationError(f"{path}: expected a JSON object of metrics")
    return data


def collect(plan: Sequence[PlannedRun]) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished run of the plan (labels as columns, then metrics); unfinished runs are listed."""
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for run in plan:
        if not run.is_finished:
            missing.append(run.run_id)
            continue
        metrics = flatten_metrics(read_metrics(run.eval_dir / "metrics.json"))
        if "accuracy" in metrics and "error_rate" not in metrics:
            metrics["error_rate"] = 1.0 - metrics["accuracy"]
        for name in run.extra_evals:
            metrics.update(flatten_metrics(read_metrics(run.extra_eval_dir(name) / "metrics.json"), f"{name}."))
        rows.append({"run_id": run.run_id, **run.labels, **metrics})
    return pd.DataFrame(rows), missing


def _fmt(mean: float, sd: float, n: int, decimals: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if n == 1 or math.isnan(sd):
        return f"{mean:.{decimals}f} (n=1)"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def summarize(results: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample sd (ddof 1) and n of each metric per combination of ``axes``, long format.

    Undefined values (NaN, e.g. a class's TPR on a fold without that class) are left out of that cell's n.
    """
    records = []
    grouped = results.groupby(list(axes), sort=False) if axes else [((), results)]
    for key, sub in grouped:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            values = sub[metric].dropna().to_numpy(dtype=float) if metric in sub else np.array([])
            records.append({**dict(zip(axes, key, strict=True)), "metric": metric, "n": int(values.size),
                            "mean": float(values.mean()) if values.size else float("nan"),
                            "sd": float(values.std(ddof=1)) if values.size > 1 else float("nan")})
    return pd.DataFrame(records)


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """Levels in the grid file's order (not alphabetical), so tables read as the grid was written."""
    rank = {v: i for i, v in enumerate(order)}
    return sorted(values, key=lambda v: rank.get(v, len(rank)))


def mean_sd_table(summary: pd.DataFrame, rows: Sequence[str], columns: Sequence[str], metric: str,
                  level_order: dict[str, list[str]], decimals: int = 3) -> pd.DataFrame:
    """A ``rows`` x ``columns`` table of formatted ``mean ± sd`` cells for one metric (strings, ready to print)."""
    sub = summary[summary["metric"] == metric]
    row_keys = list(itertools.product(*[_ordered(sub[r].unique(), level_order[r]) for r in rows])) or [()]
    col_keys = list(itertools.product(*[_ordered(sub[c].unique(), level_order[c]) for c in columns])) or [()]
    cells: dict[str, list[str]] = {}
    for ck in col_keys:
        col_name = " / ".join(ck) if ck else metric
        column = []
        for rk in row_keys:
            mask = np.ones(len(sub), dtype=bool)
            for name, value in zip([*rows, *columns], [*rk, *ck], strict=True):
                mask &= (sub[name] == value).to_numpy()
            hit = sub[mask]
            column.append("-" if hit.empty else _fmt(hit["mean"].iloc[0], hit["sd"].iloc[0], int(hit["n"].iloc[0]),
                                                     decimals))
        cells[col_name] = column
    index = pd.Index([" / ".join(rk) for rk in row_keys] if rows else [metric], name=" / ".join(rows) or "metric")
    return pd.DataFrame(cells, index=index)


def _layout(cfg: ExperimentConfig) -> tuple[list[str], list[str], list[str]]:
    axes = cfg.axis_names
    pages = list(cfg.report.pages)
    rows = list(cfg.report.rows) or [a for a in axes if a not in pages][:1]
    columns = list(cfg.report.columns) or [a for a in axes if a not in rows and a not in pages]
    return rows, columns, pages


def compare_tests(results: pd.DataFrame, cfg: ExperimentConfig) -> tuple[list[TestResult], list[str]]:
    """Mann-Whitney U between levels of each ``compare`` axis, within each combination of the other axes.

    Each axis's tests form one family for the Holm adjustment (see :func:`lesionlab.evaluate.stats.compare_groups`).
    """
    out: list[TestResult] = []
    notes: list[str] = []
    for spec in cfg.compare:
        if results.empty:
            break
        if spec.metric not in results.columns:
            raise AggregationError(f"compare metric '{spec.metric}' is not in the runs' metrics "
                                   f"(e.g. {', '.join(c for c in results.columns if '.' not in c)[:200]})")
        pairs = spec.pairs or list(itertools.combinations(cfg.axes[spec.axis], 2))
        within = [a for a in cfg.axis_names if a != spec.axis]
        out += compare_groups(results, spec.metric, spec.axis, within, pairs=pairs, notes=notes)
    return out, notes


def tests_frame(tests: Sequence[TestResult]) -> pd.DataFrame:
    """The tests as one flat table (one row per test) for CSV and printing."""
    rows = []
    for t in tests:
        (name_a, n_a), (name_b, n_b) = list(t.n.items())
        within = ", ".join(f"{k}={v}" for k, v in t.detail["within"].items())
        rows.append({"metric": t.detail["metric"], "axis": t.detail["axis"], "a": name_a, "b": name_b,
                     "within": within, "n_a": n_a, "n_b": n_b,
                     "mean_a": t.detail["mean"][name_a], "mean_b": t.detail["mean"][name_b],
                     "U": t.statistic, "p": t.p_value, "p_holm": t.detail["p_holm"],
                     "rank_biserial_r": t.effect_size})
    return pd.DataFrame(rows)


def aggregate(results: pd.DataFrame, cfg: ExperimentConfig) -> Tables:
    """Build every table and test of a grid from its results frame (pure)."""
    axes = cfg.axis_names
    order = {a: list(levels) for a, levels in cfg.axes.items()}
    if results.empty:
        return Tables(results, pd.DataFrame(), notes=["no finished runs yet"])
    missing = [m for m in cfg.report.metrics if m not in results.columns]
    if missing:
        raise AggregationError(f"report.metrics {missing} not found in the runs' metrics.json "
                               f"(available: {', '.join(c for c in results.columns if '.' not in c)})")
    per_class = [f"per_class.{c}.{m}" for m in SUPPLEMENTARY for c in CLASS_CODES if f"per_class.{c}.{m}" in results]
    summary = summarize(results, axes, [*cfg.report.metrics, *per_class])
    tables: dict[str, pd.DataFrame] = {}
    rows, columns, pages = _layout(cfg)
    page_keys = list(itertools.product(*[order[p] for p in pages])) or [()]
    for pk in page_keys:
        page = summary
        for name, value in zip(pages, pk, strict=True):
            page = page[page[name] == value]
        if page.empty:
            continue
        suffix = f" ({', '.join(f'{n}={v}' for n, v in zip(pages, pk, strict=True))})" if pages else ""
        for metric in cfg.report.metrics:
            tables[f"{metric}{suffix}"] = mean_sd_table(page, rows, columns, metric, order, cfg.report.decimals)
    for m, title in SUPPLEMENTARY.items():
        cols = [f"per_class.{c}.{m}" for c in CLASS_CODES if f"per_class.{c}.{m}" in results]
        if not cols:
            continue
        frame = pd.concat({c.split(".")[1]: mean_sd_table(summary, axes, [], c, order, cfg.report.decimals)
                           .iloc[:, 0] for c in cols}, axis=1)
        tables[f"supplementary: per-class {title}"] = frame
    tests, notes = compare_tests(results, cfg)
    return Tables(results, summary, tables, tests, tests_frame(tests), notes)


def markdown_table(frame: pd.DataFrame, title: str) -> str:
    """A titled pandas frame as Markdown (index as the first column), in the reports' own table format."""
    return Table(title, "", [frame.index.name or "", *map(str, frame.columns)],
                 [[str(idx), *(str(v) for v in row.tolist())] for idx, row in frame.iterrows()]).markdown()


def tables_markdown(cfg: ExperimentConfig, tables: Tables, n_planned: int) -> str:
    """Every table and test of the grid as one Markdown document (``tables.md``)."""
    n_done = len(tables.results)
    parts = [f"# Experiment grid `{cfg.name}`", "", cfg.description.strip(), "",
             f"{n_done} of {n_planned} runs finished. Cells: mean ± sd over "
             f"{cfg.repeat.kind}s (sample sd, ddof 1).", ""]
    for title, frame in tables.tables.items():
        parts += [markdown_table(frame, title), ""]
    if not tables.tests_table.empty:
        parts += [markdown_table(tables.tests_table.round(4).set_index("metric"), "Mann-Whitney U tests"), ""]
    if tables.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in tables.notes], ""]
    return "\n".join(parts)


def write_outputs(tables: Tables, cfg: ExperimentConfig, out_dir: Path, n_planned: int) -> list[Path]:
    """Write results.csv, summary.csv, tables/*.csv, tests.csv/json and tables.md (atomically); returns the paths."""
    def csv(frame: pd.DataFrame, index: bool = False) -> Callable[[Path], None]:
        return lambda tmp: frame.to_csv(tmp, index=index)

    outputs = {"results.csv": csv(tables.results)}
    if not tables.summary.empty:
        outputs["summary.csv"] = csv(tables.summary)
    for i, (title, frame) in enumerate(tables.tables.items()):
        slug = "".join(ch if ch.isalnum() else "_" for ch in title).strip("_")
        outputs[f"tables/{i:02d}_{slug}.csv"] = csv(frame, index=True)
    outputs["tests.csv"] = csv(tables.tests_table)
    written = [atomic_write(out_dir / name, write) for name, write in outputs.items()]
    written.append(atomic_write_json(out_dir / "tests.json", [t.to_dict() for t in tables.tests]))
    written.append(atomic_write_text(out_dir / "tables.md", tables_markdown(cfg, tables, n_planned)))
    return written
