"""The grid file: which runs an experiment consists of, how to evaluate them and which tables and tests to report.

A grid is a base :class:`~lesionlab.config.RunConfig` plus named axes of override sets; the product of the axes,
repeated over seeds or lesion-grouped folds, is the list of runs. Every key is checked, at every depth, so that a
typo in a 160-run GPU grid is caught before the first run rather than silently training the wrong thing.

A grid file may extend a partial grid (``extends: FILE``; a protocol: base config, folds, evaluations, report) and add
its own axes, so that a family of cross-validation grids states its shared protocol once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lesionlab.config import (
    ConfigError,
    RunConfig,
    Strict,
    apply_overrides,
    build_config,
    near_matches,
    read_extending_yaml,
)

#: Label columns the repeat dimension adds next to the axes; axis names may not reuse them.
REPEAT_LABELS = ("seed", "fold")


class RepeatSpec(Strict):
    """How each condition is repeated: over training seeds (fixed test split) or over lesion-grouped folds."""

    seeds: list[int] | None = None
    folds: int | None = Field(default=None, ge=2)
    fold_seed: int = 0  # shuffles lesions into folds; changing it changes every fold's run id
    val_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)  # of each fold's training part, lesion-grouped
    # "all": the folds partition all labelled data (each image tested once). "train_val": cross-validation on the
    # base split's train + val only; its test split is held out of every fold (split "holdout") for `select`.
    within: Literal["all", "train_val"] = "all"

    @model_validator(mode="after")
    def _one_kind(self) -> RepeatSpec:
        if self.seeds is not None and self.folds is not None:
            raise ValueError("give either repeat.seeds or repeat.folds, not both")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("repeat.seeds must be a non-empty list of distinct integers")
        return self

    @property
    def kind(self) -> Literal["seed", "fold"]:
        """``fold`` when the test split changes per repeat, ``seed`` otherwise."""
        return "fold" if self.folds is not None else "seed"

    @property
    def levels(self) -> list[int]:
        """The seeds, or the fold indices 0..k-1 (a grid without ``repeat`` runs once, with the base seed)."""
        if self.folds is not None:
            return list(range(self.folds))
        return list(self.seeds) if self.seeds is not None else []


class ExtraEvaluation(Strict):
    """One more evaluation of every run, into ``eval-<name>/``: other test-time views, the corrupted test split...

    Its metrics join the grid's results as ``<name>.<metric>`` (e.g. ``d8.balanced_accuracy``), for tables,
    tests and ``select``. It is scored without bootstrap, timing, audit or report.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    args: list[str] = Field(default_factory=list)  # passed to evaluate verbatim, e.g. [--tta-views, dihedral]
    where: dict[str, list[str]] = Field(default_factory=dict)  # only runs with these axis levels (empty: every run)

    @field_validator("where", mode="before")
    @classmethod
    def _string_levels(cls, v: Any) -> Any:
        # YAML reads levels such as 28 or on as int/bool; labels are strings
        if isinstance(v, dict):
            return {str(k): [str(x) for x in (lv if isinstance(lv, list) else [lv])] for k, lv in v.items()}
        return v

    def applies(self, labels: dict[str, str]) -> bool:
        """Whether a run with these labels gets this evaluation."""
        return all(labels.get(axis) in levels for axis, levels in self.where.items())


class EvaluateSpec(Strict):
    """Arguments of ``lesionlab evaluate`` for every run of the grid (None: the evaluator's own default)."""

    split: Literal["val", "test"] = "test"
    tta: bool | None = None
    bootstrap: int | None = Field(default=0, ge=0)  # per-run CIs; the grid's spread comes from seeds/folds instead
    timing_images: int | None = Field(default=0, ge=0)  # per-run latency timing; off: it is noise in a busy grid
    report: bool = False  # per-run HTML/Markdown report (the grid report is written either way)
    device: str | None = None  # e.g. cuda on GPU machines (the evaluator defaults to cpu)
    batch_size: int | None = Field(default=None, ge=1)
    extra_args: list[str] = Field(default_factory=list)  # passed to evaluate verbatim
    extra_evaluations: list[ExtraEvaluation] = Field(default_factory=list)


class SelectSpec(Strict):
    """Choose settings by the mean cross-validation score, then score the test split once with the choice.

    Needs ``repeat.folds`` with ``repeat.within: train_val``: the folds cover the base split's train + val, so the
    choice never sees the test split. ``final``: train the chosen condition on the base split (its own train and
    val) and evaluate it on the test split; ``final_evaluate_args`` go to that one evaluation only (for example
    ``["--corruptions", "all"]``).
    """

    metric: str = "balanced_accuracy"
    mode: Literal["max", "min"] = "max"
    final: bool = True
    final_evaluate_args: list[str] = Field(default_factory=list)


class ReportSpec(Strict):
    """Layout of the mean +- sd tables: one table per level combination of ``pages``, ``rows`` x ``columns``."""

    rows: list[str] = Field(default_factory=list)  # default: the first axis
    columns: list[str] = Field(default_factory=list)  # default: the remaining axes not used as rows or pages
    pages: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "error_rate"])
    decimals: int = Field(default=3, ge=0, le=6)


class CompareSpec(Strict):
    """Mann-Whitney U tests between the levels of one axis, separately within each combination of the others."""

    axis: str
    pairs: list[tuple[str, str]] | None = None  # default: every pair of the axis's levels
    metric: str = "accuracy"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"axis": v} if isinstance(v, str) else v


class SlurmSpec(Strict):
    """``#SBATCH`` lines of the array script written by ``--slurm``."""

    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gres: str | None = None
    max_parallel: int | None = Field(default=None, ge=1)  # the array's %N throttle
    extra: list[str] = Field(default_factory=list)  # further lines, written as "#SBATCH <line>"
    setup: list[str] = Field(default_factory=list)  # shell lines run first, e.g. "source .venv/bin/activate"


class ExperimentConfig(Strict):
    """One grid file, validated. Paths in ``base_config`` are relative to the grid file itself."""

    name: str
    description: str = ""
    base_config: Path | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    repeat: RepeatSpec = RepeatSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    report: ReportSpec = ReportSpec()
    compare: list[CompareSpec] = Field(default_factory=list)
    select: SelectSpec | None = None
    workers: int = Field(default=1, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)  # default: usable cores // workers
    output_dir: Path = Path("runs/grids")
    slurm: SlurmSpec = SlurmSpec()

    @field_validator("axes", mode="before")
    @classmethod
    def _axes_levels(cls, v: Any) -> Any:
        # YAML reads unquoted levels such as on/off/28 as bool/int; labels are strings everywhere downstream.
        if isinstance(v, dict):
            out = {}
            for axis, levels in v.items():
                if isinstance(levels, dict):
                    levels = {_level_name(k): ({} if val is None else val) for k, val in levels.items()}
                out[str(axis)] = levels
            return out
        return v

    @property
    def axis_names(self) -> list[str]:
        """Axis names in file order, which is also the order of labels in run ids and tables."""
        return list(self.axes)

    @property
    def label_names(self) -> list[str]:
        """Every label column of a run: the axes, then ``seed`` or ``fold`` when the grid repeats."""
        return self.axis_names + ([self.repeat.kind] if self.repeat.levels else [])


def _level_name(key: Any) -> str:
    if isinstance(key, bool):
        return "on" if key else "off"
    return str(key)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``: axis levels may be written either way."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """Dotted overrides as ``key=value`` strings (values in JSON, which is YAML) for :func:`apply_overrides`."""
    import json

    return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]


def base_dict(cfg: ExperimentConfig, grid_path: Path | None) -> dict[str, Any]:
    """The grid's base run config as a raw dict: ``base_config`` file (if any) with ``base`` applied on top."""
    data: dict[str, Any] = {}
    if cfg.base_config is not None:
        path = cfg.base_config
        if not path.is_absolute() and grid_path is not None:
            path = grid_path.parent / path
        data = read_extending_yaml(path)
    return apply_overrides(data, override_strings(flatten(cfg.base)), where=f"{grid_path or 'grid'}: base")


def validate_grid(cfg: ExperimentConfig, where: str, base: dict[str, Any]) -> None:
    """Cross-field checks: axis names, report/compare references, and every axis level against RunConfig."""
    names = cfg.axis_names
    for axis, levels in cfg.axes.items():
        if axis in REPEAT_LABELS:
            raise ConfigError(f"{where}: axis name '{axis}' is reserved for the repeat dimension; rename the axis")
        if not levels:
            raise ConfigError(f"{where}: axes.{axis} has no levels")
        for level, overrides in levels.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"{where}: axes.{axis}.{level} must be a mapping of config keys to values")
            merged = apply_overrides(base, override_strings(flatten(overrides)), where=f"{where}: axes.{axis}.{level}")
            build_config(RunConfig, merged, where=f"{where}: axes.{axis}.{level}")
    for extra in cfg.evaluate.extra_evaluations:
        for axis, levels in extra.where.items():
            unknown = [lv for lv in levels if lv not in cfg.axes.get(axis, {})]
            if axis not in cfg.axes or unknown:
                raise ConfigError(f"{where}: evaluate.extra_evaluations {extra.name}: where {axis}: "
                                  f"{unknown or levels} names no level of an axis of this grid")
    rep = cfg.repeat
    if rep.within == "train_val" and rep.folds is None:
        raise ConfigError(f"{where}: repeat.within: train_val needs repeat.folds (cross-validation folds)")
    if rep.within == "train_val" and cfg.evaluate.split != "test":
        raise ConfigError(f"{where}: with repeat.within: train_val each run is scored on its held-out fold, which "
                          "its split file calls 'test'; set evaluate.split: test (the real test split is held out)")
    if cfg.select is not None and not (rep.folds is not None and rep.within == "train_val"):
        raise ConfigError(f"{where}: select chooses by cross-validation on train + val; it needs repeat.folds with "
                          "repeat.within: train_val (choosing on the test split, or on folds that include it, "
                          "would make the test score part of the choice)")
    known = [*names, *REPEAT_LABELS]
    for field in ("rows", "columns", "pages"):
        for axis in getattr(cfg.report, field):
            if axis not in names:
                raise ConfigError(f"{where}: report.{field} names unknown axis '{axis}'{near_matches(axis, known)}")
    for i, spec in enumerate(cfg.compare):
        if spec.axis not in names:
            raise ConfigError(f"{where}: compare[{i}].axis: unknown axis '{spec.axis}'{near_matches(spec.axis, names)}")
        for a, b in spec.pairs or []:
            for level in (a, b):
                if level not in cfg.axes[spec.axis]:
                    raise ConfigError(f"{where}: compare[{i}].pairs: '{level}' is not a level of axis "
                                      f"'{spec.axis}'{near_matches(level, list(cfg.axes[spec.axis]))}")


def _keep_order(new: Any, original: Any) -> Any:
    """``new`` with its mapping keys in ``original``'s order (then new keys): axis order is meaningful here, and
    :func:`apply_overrides` round-trips through a key-sorting YAML dump."""
    if not (isinstance(new, dict) and isinstance(original, dict)):
        return new
    keys = [k for k in original if k in new] + [k for k in new if k not in original]
    return {k: _keep_order(new[k], original.get(k)) for k in keys}


def _rebase_base_config(inherited: dict[str, Any], parent_path: Path, path: Path) -> dict[str, Any]:
    """An inherited relative ``base_config``, rewritten to name the file its own grid file meant."""
    base_config = inherited.get("base_config")
    if isinstance(base_config, str) and not Path(base_config).is_absolute():
        inherited = {**inherited, "base_config": os.path.relpath(parent_path.parent / base_config, path.parent)}
    return inherited


def read_grid_file(path: str | Path) -> dict[str, Any]:
    """A grid file's raw mapping with its ``extends`` chain merged underneath (the file's own keys win).

    ``extends`` names one file, relative to the extending file; it may extend another in turn. An inherited
    relative ``base_config`` is rebased so that it still names the file its own grid file meant.
    """
    return read_extending_yaml(path, _rebase_base_config)


def load_grid(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Read, check and validate a grid file; returns the config and its resolved base run-config dict.

    ``overrides`` are ``key=value`` strings on the grid itself (``workers=2``, ``repeat.seeds=[0]``).
    """
    path = Path(path)
    raw = read_grid_file(path)
    data = _keep_order(apply_overrides(raw, overrides or [], where=f"{path} (overrides)"), raw)
    cfg: ExperimentConfig = build_config(ExperimentConfig, data, where=str(path), unknown="unknown key")
    base = base_dict(cfg, path)
    build_config(RunConfig, base, where=f"{path}: base")
    validate_grid(cfg, str(path), base)
    return cfg, base
