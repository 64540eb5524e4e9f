"""Choosing settings by cross-validation, then scoring the test split once: the documented way to pick a recipe.

A grid with ``repeat: {folds: K, within: train_val}`` and a ``select`` section runs every condition (combination
of axis levels) on K lesion-grouped, class-stratified folds of the base split's *train + val* images; the base
split's test images are ``holdout`` in every fold file, so no run reads them. Each fold run is scored on its
held-out fold; its own validation part (carved from the other folds) picks the epoch, so the fold score is not
inflated by that choice.

:func:`select` ranks the conditions by the mean fold score (``select.metric``, ± sample sd over the folds). Only
conditions with every fold finished and the metric defined on every fold take part; a tie goes to the condition
listed first in the grid. When the runner-up is within one sd of the winner, the selection says so: the folds do
not separate them.

:func:`final_run` is the chosen condition trained once more, on the base split itself (its train, its val for the
epoch), and evaluated on the test split: the one test score of the experiment. :func:`check_test_once` refuses to
score the test split for a *different* choice later (a changed grid, another metric) unless asked to, since
re-choosing after seeing a test score turns the test split into a selection set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lesionlab.config import ConfigError, RunConfig, apply_overrides, build_config
from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import atomic_write_json, atomic_write_text, read_json
from lesionlab.experiments.aggregate import Tables, markdown_table
from lesionlab.experiments.grid import ExperimentConfig, override_strings
from lesionlab.experiments.plan import EVAL_DIR, PlannedRun, _merge_levels, _slug, config_hash

SELECTION_FILE = "selection.json"
SELECTION_MARKDOWN = "selection.md"
FINAL_DIR = "final"


class SelectionError(LesionlabError, ValueError):
    """A selection input (a final run's metrics) that cannot be read; the message names the file."""


class TestRescoreError(LesionlabError, ValueError):
    """The test split was already scored for another choice of settings; the message names that run."""

    __test__ = False  # not a pytest test class


@dataclass
class Selection:
    """The cross-validation ranking and the choice (``chosen`` is None until some condition is complete)."""

    metric: str
    mode: str
    table: pd.DataFrame  # one row per condition: axes..., mean, sd, n, folds, complete, rank
    chosen: dict[str, str] | None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every condition has every fold: the choice can no longer change as runs finish."""
        return bool(len(self.table)) and bool(self.table["complete"].all())


def select(results: pd.DataFrame, cfg: ExperimentConfig) -> Selection:
    """Rank the grid's conditions by their mean cross-validation score (pure; see the module docstring)."""
    if cfg.select is None:
        raise ConfigError(f"grid {cfg.name}: no select section")
    spec = cfg.select
    axes = cfg.axis_names
    folds = int(cfg.repeat.folds or 0)
    order = [dict(zip(axes, combo, strict=True)) for combo in _combos(cfg)]
    rows = []
    notes: list[str] = []
    if not results.empty and spec.metric not in results.columns:
        raise ConfigError(f"select.metric '{spec.metric}' is not in the runs' metrics (e.g. "
                          f"{', '.join(c for c in results.columns if '.' not in c)[:200]})")
    for labels in order:
        mask = pd.Series(True, index=results.index)
        for axis, level in labels.items():
            mask &= results[axis].astype(str) == level if axis in results else False
        values = pd.to_numeric(results.loc[mask, spec.metric], errors="coerce") if len(results) else pd.Series([])
        done = int(mask.sum()) if len(results) else 0
        defined = values.dropna()
        complete = done == folds and len(defined) == folds
        if done == folds and len(defined) < folds:
            notes.append(f"{_name(labels)}: {spec.metric} undefined on {folds - len(defined)} fold(s); left out")
        rows.append({**labels, "mean": float(defined.mean()) if len(defined) else math.nan,
                     "sd": float(defined.std(ddof=1)) if len(defined) > 1 else math.nan,
                     "n": len(defined), "folds": folds, "complete": complete})
    table = pd.DataFrame(rows)
    eligible = table[table["complete"]]
    chosen = None
    table["rank"] = pd.NA
    if len(eligible):
        ascending = spec.mode == "min"
        ranked = eligible.sort_values("mean", ascending=ascending, kind="stable")  # stable: grid order breaks ties
        for rank, idx in enumerate(ranked.index, start=1):
            table.loc[idx, "rank"] = rank
        best = ranked.iloc[0]
        chosen = {a: str(best[a]) for a in axes}
        if len(ranked) > 1:
            second = ranked.iloc[1]
            gap = abs(best["mean"] - second["mean"])
            if math.isfinite(best["sd"]) and gap < best["sd"]:
                notes.append(f"the runner-up {_name({a: second[a] for a in axes})} is within one sd of the chosen "
                             f"condition ({spec.metric} {second['mean']:.4f} vs {best['mean']:.4f}, sd "
                             f"{best['sd']:.4f}): the folds do not separate them")
    missing = int((~table["complete"]).sum())
    if missing:
        notes.append(f"{missing} of {len(table)} conditions do not have all {folds} folds finished yet; the choice "
                     "may change as they finish")
    return Selection(spec.metric, spec.mode, table, chosen, notes)


def _combos(cfg: ExperimentConfig) -> list[tuple[str, ...]]:
    return list(itertools.product(*[list(levels) for levels in cfg.axes.values()])) or [()]


def _name(labels: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items()) or "the base config"


def final_run(cfg: ExperimentConfig, base: dict[str, Any], chosen: dict[str, str], where: str = "grid"
              ) -> PlannedRun:
    """The chosen condition as one run on the base split (no fold), under ``<output_dir>/final/``."""
    chosen_levels = [(axis, level, cfg.axes[axis][level]) for axis, level in chosen.items()]
    overrides = _merge_levels(chosen_levels, where)
    raw = apply_overrides(base, override_strings(overrides), where=f"{where}: final run {chosen}")
    run_cfg: RunConfig = build_config(RunConfig, raw, where=f"{where}: final run {chosen}")
    digest = config_hash(run_cfg)
    run_id = "final-" + "-".join(_slug(v) for v in chosen.values()) + f"-{digest}" if chosen else f"final-{digest}"
    run_cfg = run_cfg.model_copy(update={"name": run_id, "output_dir": cfg.output_dir / FINAL_DIR})
    return PlannedRun(run_id, overrides, dict(chosen), run_cfg, None, raw)


def scored_finals(output_dir: Path) -> list[Path]:
    """Final runs of this grid whose test split has been scored (they have an evaluation)."""
    root = Path(output_dir) / FINAL_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / EVAL_DIR / "metrics.json").is_file())


def check_test_once(output_dir: Path, final: PlannedRun, allow_rescore: bool = False) -> list[str]:
    """Refuse to score the test split for ``final`` when another choice's final run has scored it already.

    Returns notes (what was scored before, when ``allow_rescore`` lets it through).
    """
    others = [p for p in scored_finals(output_dir) if p.name != final.run_id]
    if not others:
        return []
    names = ", ".join(p.name for p in others)
    if not allow_rescore:
        raise TestRescoreError(f"the test split was already scored for another choice ({names} in "
                               f"{Path(output_dir) / FINAL_DIR}); scoring {final.run_id} as well would make the test "
                               "score part of the choice. Keep the first result, or pass --allow-rescore to score "
                               "it anyway (it is recorded in selection.json)")
    return [f"the test split had already been scored for {names}; {final.run_id} was scored as well "
            "(--allow-rescore): the test figures are no longer an untouched estimate"]


def final_metrics(final: PlannedRun) -> dict[str, Any] | None:
    """The final run's test metrics (None until it is evaluated)."""
    path = final.eval_dir / "metrics.json"
    return read_json(path, SelectionError) if path.is_file() else None


def formatted_table(sel: Selection, axes: Sequence[str], decimals: int = 4) -> pd.DataFrame:
    """The ranking as printable strings (mean ± sd (n/folds)), best first, incomplete conditions last."""
    rows = []
    table = sel.table.copy()
    table["_order"] = table["rank"].fillna(10 ** 6).astype(float)
    for _, r in table.sort_values("_order", kind="stable").iterrows():
        cell = ("-" if r["n"] == 0 else f"{r['mean']:.{decimals}f}" + (
            f" ± {r['sd']:.{decimals}f}" if r["n"] > 1 else "") + f" ({r['n']}/{r['folds']} folds)")
        rows.append({"rank": "" if pd.isna(r["rank"]) else str(int(r["rank"])),
                     "condition": _name({a: r[a] for a in axes}), f"CV {sel.metric}": cell,
                     "chosen": "yes" if sel.chosen and all(str(r[a]) == sel.chosen[a] for a in axes) else ""})
    return pd.DataFrame(rows).set_index("rank") if rows else pd.DataFrame()


def selection_record(sel: Selection, cfg: ExperimentConfig, final: PlannedRun | None,
                     notes: Sequence[str] = ()) -> dict[str, Any]:
    """``selection.json``: the ranking, the choice, and the final run with its one test score once it exists."""
    metrics = final_metrics(final) if final is not None else None
    test = None
    if metrics is not None:
        keep = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
        test = {k: metrics.get(k) for k in keep}
        test["ci"] = {k: v for k, v in (metrics.get("ci") or {}).items() if k in keep}
        test["mel_recall"] = ((metrics.get("per_class") or {}).get("mel") or {}).get("tpr")
        if metrics.get(sel.metric) is not None:
            test[sel.metric] = metrics.get(sel.metric)
        if metrics.get("robustness"):
            test["robustness_mean_relative_drop"] = metrics["robustness"].get("mean_relative_drop")
    return {
        "grid": cfg.name, "metric": sel.metric, "mode": sel.mode, "folds": cfg.repeat.folds,
        "fold_seed": cfg.repeat.fold_seed, "cross_validation": "lesion-grouped, class-stratified folds of the base "
        "split's train + val; its test split held out of every fold",
        "conditions": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                       for r in sel.table.astype(object).where(sel.table.notna(), None).to_dict("records")],
        "chosen": sel.chosen, "complete": sel.complete,
        "final": None if final is None else {"run_id": final.run_id, "run_dir": str(final.run_dir),
                                             "overrides": final.overrides, "test": test,
                                             "status": "scored" if test else "not run yet"},
        "notes": [*sel.notes, *notes],
    }


def selection_markdown(record: dict[str, Any], table: pd.DataFrame) -> str:
    """``selection.md``: the ranking and the one test score, readable."""
    parts = [f"# Selection by cross-validation: grid `{record['grid']}`", "",
             f"{record['folds']} folds ({record['cross_validation']}), fold seed {record['fold_seed']}; conditions "
             f"ranked by the mean {record['metric']} over the folds ({record['mode']}).", ""]
    if not table.empty:
        parts += [markdown_table(table, "Ranking"), ""]
    final = record.get("final")
    if record.get("chosen") is None:
        parts.append("No condition has all its folds yet.")
    elif final and final.get("test"):
        t = final["test"]
        parts += [f"Chosen: {_name(record['chosen'])}. Final run `{final['run_id']}` (trained on the base split), "
                  f"**test** (scored once): accuracy {_fmt(t.get('accuracy'))}, balanced accuracy "
                  f"{_fmt(t.get('balanced_accuracy'))}, macro AUC {_fmt(t.get('macro_auc'))}, melanoma recall "
                  f"{_fmt(t.get('mel_recall'))} ({t.get('n')} images).", ""]
    else:
        parts += [f"Chosen: {_name(record['chosen'])}; the final run has not been trained and scored yet.", ""]
    if record.get("notes"):
        parts += ["## Notes", "", *[f"- {n}" for n in record["notes"]], ""]
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def write_selection(record: dict[str, Any], table: pd.DataFrame, output_dir: Path) -> list[Path]:
    """Write ``selection.json`` and ``selection.md`` into the grid's output dir."""
    return [atomic_write_json(Path(output_dir) / SELECTION_FILE, record),
            atomic_write_text(Path(output_dir) / SELECTION_MARKDOWN, selection_markdown(record, table))]


def write_selection_tables(cfg: ExperimentConfig, results: pd.DataFrame, base: dict[str, Any] | None,
                           tables: Tables) -> list[Path]:
    """Rank the conditions by their CV score into ``tables`` and write selection.json / selection.md.

    ``base``, the grid's base config, names the final run (so its test score is read once it exists).
    """
    sel = select(results, cfg)
    final = final_run(cfg, base, sel.chosen) if sel.chosen is not None and base is not None else None
    table = formatted_table(sel, cfg.axis_names)
    if not table.empty:
        tables.tables[f"selection by {cfg.repeat.folds}-fold cross-validation on train + val ({sel.metric})"] = table
    tables.notes.extend(sel.notes)
    record = selection_record(sel, cfg, final)
    if final is not None and (record["final"] or {}).get("test"):
        t = record["final"]["test"]
        tables.notes.append(f"final run {final.run_id} (chosen by CV, trained on the base split), test scored once: "
                            f"accuracy {_fmt(t.get('accuracy'))}, balanced accuracy {_fmt(t.get('balanced_accuracy'))}")
    return write_selection(record, table, cfg.output_dir)
