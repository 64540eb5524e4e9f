"""Grid expansion: a pure function from a validated grid to the list of runs, each with a stable id.

A run's id is a readable label path plus a hash of its resolved training config, so editing the grid or the base
config gives the changed runs new ids (never mixing stale results in), while re-running the same grid finds the
runs that already finished and skips them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionlab.config import ConfigError, RunConfig, apply_overrides, build_config, computation_dict
from lesionlab.experiments.grid import ExperimentConfig, flatten, override_strings

RUNS_DIR = "runs"
CONFIGS_DIR = "configs"
SPLITS_DIR = "splits"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a grid: its id, the overrides on the base config, its labels (axis -> level) and full config."""

    run_id: str
    overrides: dict[str, Any]
    labels: dict[str, str]
    config: RunConfig = field(repr=False)
    fold: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # base + overrides only: what the config file says
    cv_data: Any = field(default=None, repr=False)  # cross-validation on train+val: the data config the folds split
    extra_evals: tuple[str, ...] = ()  # names of the grid's extra evaluations (evaluate.extra_evaluations)

    def config_file_dict(self) -> dict[str, Any]:
        """The run's config file content: the keys the grid sets, plus its name and output dir.

        Not the fully resolved config: settings the grid leaves alone stay unset, so that the trainer can still
        tell them from explicit ones (a head preset refuses to override an explicitly set head, for example).
        """
        return {**self.raw, "name": self.config.name, "output_dir": str(self.config.output_dir)}

    @property
    def run_dir(self) -> Path:
        """Where training writes the run (``<output_dir>/runs/<run_id>``)."""
        return self.config.output_dir / self.config.name

    @property
    def eval_dir(self) -> Path:
        """Where evaluation writes predictions.csv and metrics.json."""
        return self.run_dir / EVAL_DIR

    def extra_eval_dir(self, name: str) -> Path:
        """Where the extra evaluation ``name`` writes (``eval-<name>``)."""
        return self.run_dir / f"{EVAL_DIR}-{name}"

    @property
    def is_trained(self) -> bool:
        """Training completed: run.json exists and says so (it is also written, as "training", after each epoch)."""
        path = self.run_dir / "run.json"
        if not path.is_file():
            return False
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # half-written by a killed trainer: not trained, train again
            return False
        return isinstance(info, dict) and info.get("status") == "complete"

    @property
    def is_finished(self) -> bool:
        """Finished means trained (run.json, complete) and evaluated (metrics.json, also of every extra evaluation);
        anything less is run again."""
        evals = [self.eval_dir, *(self.extra_eval_dir(n) for n in self.extra_evals)]
        return all((d / "metrics.json").is_file() for d in evals) and self.is_trained


def fold_split_path(output_dir: Path, fold: int, folds: int, fold_seed: int, within: str = "all") -> Path:
    """The split CSV of one fold, written before the grid runs (see :mod:`lesionlab.experiments.splits`).

    Cross-validation files (``within="train_val"``) are named ``cv-fold...``: their ``test`` is the held-out fold
    and the real test split is ``holdout``.
    """
    prefix = "cv-" if within == "train_val" else ""
    return output_dir / SPLITS_DIR / f"{prefix}fold{fold}-of{folds}-seed{fold_seed}.csv"


def config_path(output_dir: Path, run_id: str) -> Path:
    """Where the resolved config of a run is written, so each run is one self-contained command."""
    return output_dir / CONFIGS_DIR / f"{run_id}.yaml"


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.")
    return slug or "x"


def config_hash(cfg: RunConfig, fold_token: str | None = None) -> str:
    """Hash of what a run computes: the resolved config without the execution-only settings (name, output dir,
    cache, device, workers: :data:`lesionlab.config.EXECUTION_ONLY`), so a grid moved to a GPU machine or another
    cache still finds its finished runs.

    For k-fold runs the split path (which lives under the output dir) is replaced by a token naming the fold, so
    the id does not depend on where the grid writes its outputs.
    """
    data = computation_dict(cfg)
    if fold_token is not None:
        data["data"]["split"] = fold_token
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _merge_levels(chosen: list[tuple[str, str, dict[str, Any]]], where: str) -> dict[str, Any]:
    """Union of the chosen levels' overrides; two axes setting one key differently is a grid error."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for axis, level, overrides in chosen:
        for key, value in flatten(overrides).items():
            if key in merged and merged[key] != value:
                raise ConfigError(f"{where}: axes.{owner[key]} and axes.{axis}.{level} both set '{key}' "
                                  f"({merged[key]!r} vs {value!r}); an axis must own each key it sets")
            merged[key] = value
            owner[key] = f"{axis}.{level}"
    return merged


def expand(cfg: ExperimentConfig, base: dict[str, Any], where: str = "grid") -> list[PlannedRun]:
    """All runs of a grid, in axis order then repeat order. Pure: reads and writes nothing."""
    axes = [[(axis, level, ov) for level, ov in levels.items()] for axis, levels in cfg.axes.items()]
    repeat = cfg.repeat
    repeats: list[int | None] = list(repeat.levels) or [None]
    runs_root = cfg.output_dir / RUNS_DIR
    plan: list[PlannedRun] = []
    seen: dict[str, dict[str, str]] = {}
    for combo in itertools.product(*axes):
        level_overrides = _merge_levels(list(combo), where)
        for rep in repeats:
            overrides = dict(level_overrides)
            labels = {axis: level for axis, level, _ in combo}
            fold_token = None
            cv_data = None
            if rep is not None and repeat.kind == "seed":
                overrides["train.seed"] = rep
                labels["seed"] = str(rep)
            elif rep is not None:
                if "data.split" in overrides:
                    raise ConfigError(f"{where}: an axis sets data.split, but repeat.folds gives each fold its own "
                                      "split; remove one of the two")
                if repeat.within == "train_val":
                    before = apply_overrides(base, override_strings(overrides), where=f"{where}: run {labels}")
                    cv_data = build_config(RunConfig, before, where=f"{where}: run {labels}").data
                overrides["data.split"] = str(fold_split_path(cfg.output_dir, rep, repeat.folds, repeat.fold_seed,
                                                              repeat.within))
                labels["fold"] = str(rep)
                fold_token = f"fold {rep}/{repeat.folds} seed {repeat.fold_seed} val {repeat.val_fraction}"
                if repeat.within == "train_val":
                    fold_token += f" within train_val of {cv_data.split}"
            raw = apply_overrides(base, override_strings(overrides), where=f"{where}: run {labels}")
            run_cfg: RunConfig = build_config(RunConfig, raw, where=f"{where}: run {labels}")
            digest = config_hash(run_cfg, fold_token)
            run_id = "-".join(_slug(labels[k]) for k in labels) + f"-{digest}" if labels else f"run-{digest}"
            if digest in seen:
                raise ConfigError(f"{where}: runs {seen[digest]} and {labels} resolve to the same config "
                                  f"(hash {digest}); two axis levels set identical values")
            seen[digest] = labels
            run_cfg = run_cfg.model_copy(update={"name": run_id, "output_dir": runs_root})
            plan.append(PlannedRun(run_id, overrides, labels, run_cfg, rep if repeat.kind == "fold" else None, raw,
                                   cv_data, tuple(e.name for e in cfg.evaluate.extra_evaluations
                                                  if e.applies(labels))))
    return plan
