"""Test splits across a grid: the k-fold split files, and the check that every condition is tested on the same images.

Comparing conditions is only meaningful on the same test images: before anything runs, every run's test split is
resolved through the data layer (the folds themselves come from :func:`lesionlab.data.splits.group_folds`) and
hashed. Seed designs must share one test split; k-fold designs must use one split per fold (the same for every
condition) whose test parts partition the labelled data.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesionlab.config import EXECUTION_ONLY, ConfigError, DataConfig
from lesionlab.data.sources import open_source, open_unsplit
from lesionlab.data.splits import cv_fold_split, fold_split, group_folds, lesion_groups, read_split_csv, write_split_csv
from lesionlab.experiments.grid import ExperimentConfig
from lesionlab.experiments.plan import PlannedRun, fold_split_path


class SplitMismatchError(ConfigError):
    """Runs of one grid that would be tested on different images; the message names the runs."""


def ids_hash(image_ids: Iterable[str]) -> str:
    """Order-free hash of a set of image ids (the identity of a test split)."""
    blob = "\n".join(sorted(map(str, image_ids)))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _names(run_ids: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(run_ids[:limit])
    return shown + (f" and {len(run_ids) - limit} more" if len(run_ids) > limit else "")


def check_same_test(test_hashes: Mapping[str, str], sizes: Mapping[str, int] | None = None) -> None:
    """Raise :class:`SplitMismatchError` unless every run (run id -> test hash) has the same test split."""
    groups: dict[str, list[str]] = defaultdict(list)
    for run_id, digest in test_hashes.items():
        groups[digest].append(run_id)
    if len(groups) <= 1:
        return
    parts = []
    for digest, runs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        n = f", {sizes[runs[0]]} test images" if sizes else ""
        parts.append(f"[{_names(runs)}] (test split {digest}{n})")
    raise SplitMismatchError("runs of this grid disagree on the test split, so their results cannot be compared: "
                             + " vs ".join(parts) + "; make every axis level use the same data source and split")


def check_fold_partition(fold_tests: Mapping[int, Sequence[str]], all_ids: Sequence[str]) -> None:
    """Raise unless the folds' test sets are disjoint and together cover every labelled image exactly once."""
    seen: dict[str, int] = {}
    for fold, ids in sorted(fold_tests.items()):
        for image_id in ids:
            if image_id in seen:
                raise SplitMismatchError(f"image {image_id} is in the test part of fold {seen[image_id]} and fold "
                                         f"{fold}; k-fold test sets must be disjoint")
            seen[image_id] = fold
    missing = sorted(set(all_ids) - set(seen))
    extra = sorted(set(seen) - set(all_ids))
    if missing or extra:
        raise SplitMismatchError(f"the folds' test sets do not partition the data: {len(missing)} images in no test "
                                 f"fold (e.g. {missing[:3]}), {len(extra)} test images not in the data "
                                 f"(e.g. {extra[:3]})")


log = logging.getLogger(__name__)

#: Data settings that change the pixels a run sees (or where they are cached) but not which images are in which split.
PIXEL_ONLY = ("image_size", "resize", "synthetic_size", "convert_mode", "colour_constancy", "colour_constancy_power",
              *(key for *section, key in EXECUTION_ONLY if section == ["data"]))


def split_key(data: DataConfig, drop_split: bool = False) -> str:
    """Identity of a run's split membership: its data config without the pixel-only settings."""
    dump = data.model_dump(mode="json")
    for key in PIXEL_ONLY + (("split", "split_file", "split_fold") if drop_split else ()):
        dump.pop(key, None)
    return repr(sorted(dump.items()))


def _by_key(plan: Sequence[PlannedRun], drop_split: bool) -> dict[str, list[PlannedRun]]:
    groups: dict[str, list[PlannedRun]] = defaultdict(list)
    for run in plan:
        groups[split_key(run.config.data, drop_split)].append(run)
    return groups


def _fold_source_config(plan: Sequence[PlannedRun]) -> DataConfig:
    """The one data config a k-fold grid splits; runs that read different data cannot share folds.

    Cross-validation on train + val (``repeat.within: train_val``) splits the base split's train + val, so there
    the split itself must agree too.
    """
    if plan and plan[0].cv_data is not None:
        cv_groups: dict[str, list[PlannedRun]] = defaultdict(list)
        for run in plan:
            cv_groups[split_key(run.cv_data)].append(run)
        if len(cv_groups) > 1:
            names = [f"{runs[0].run_id} ({len(runs)} runs)" for runs in cv_groups.values()]
            raise SplitMismatchError("cross-validation on train + val needs every run on the same data and base "
                                     f"split (only pixel settings may differ); these differ: {', '.join(names)}")
        return plan[0].cv_data
    groups = _by_key(plan, drop_split=True)
    if len(groups) > 1:
        names = [f"{runs[0].run_id} ({len(runs)} runs)" for runs in groups.values()]
        raise SplitMismatchError("a k-fold grid needs every run on the same data (only pixel settings such as "
                                 f"image_size may differ), but these runs read different data: {', '.join(names)}")
    return plan[0].config.data


def _fold_frames(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> tuple[str, list[pd.DataFrame]]:
    """The split table of every fold: over all labelled data, or (``within: train_val``) over the base split's
    train + val with its test split held out (``holdout``)."""
    rep = cfg.repeat
    cv = rep.within == "train_val"
    source = (open_source if cv else open_unsplit)(_fold_source_config(plan))
    table = source.table.reset_index(drop=True)
    groups = lesion_groups(table, source.linked_pairs)
    pool = table["split"].isin(["train", "val"]).to_numpy() if cv else np.ones(len(table), dtype=bool)
    if not pool.any():
        raise SplitMismatchError(f"{source.name}: the base split has no train or val images to cross-validate")
    fold_of = group_folds(table["label"].to_numpy()[pool], groups[pool], rep.folds, rep.fold_seed)
    frames = [cv_fold_split(table, groups, fold_of, k, rep.val_fraction, rep.fold_seed, pool) if cv
              else fold_split(table, groups, fold_of, k, rep.val_fraction, rep.fold_seed) for k in range(rep.folds)]
    return source.name, frames


def write_fold_splits(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> list[Path]:
    """Write one split CSV per fold (test = that fold; lesion-grouped), unless identical ones are already there.

    An existing file with a different assignment is an error, since finished runs may have trained on it.
    """
    rep = cfg.repeat
    if rep.folds is None or not plan:
        return []
    name, frames = _fold_frames(cfg, plan)
    paths = []
    for k, frame in enumerate(frames):
        path = fold_split_path(cfg.output_dir, k, rep.folds, rep.fold_seed, rep.within)
        if path.is_file():
            old = read_split_csv(path)
            same = old[["image_id", "split"]].sort_values("image_id").reset_index(drop=True).equals(
                frame[["image_id", "split"]].astype(str).sort_values("image_id").reset_index(drop=True))
            if not same:
                raise SplitMismatchError(f"{path}: exists with a different fold assignment than the data now gives "
                                         f"({name}); the data changed since the grid's runs were made. Use a "
                                         "new output_dir (or repeat.fold_seed) rather than mixing old and new runs")
        else:
            write_split_csv(frame, path)
        paths.append(path)
    log.info("k-fold split files for %s (%d images, %d folds): %s", name, len(frames[0]), rep.folds, paths[0].parent)
    return paths


def split_ids(data: DataConfig, split: str = "test") -> list[str]:
    """The image ids of one split of a data config, resolved by the data layer exactly as training will."""
    table = open_source(data).table
    return table.loc[table["split"] == split, "image_id"].astype(str).tolist()


def _fold_pool_ids(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> list[str]:
    """The images the folds' test parts must partition: all labelled data, or (``within: train_val``) the base
    split's train + val (its test split stays out of every fold)."""
    if cfg.repeat.within == "train_val":
        table = open_source(_fold_source_config(plan)).table
        return table.loc[table["split"].isin(["train", "val"]), "image_id"].astype(str).tolist()
    return open_unsplit(_fold_source_config(plan)).table["image_id"].astype(str).tolist()


def check_test_splits(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> dict[str, str]:
    """Check that the grid's conditions are tested on the same images; returns run id -> test-split hash.

    Seed designs: every run must have the same test split. k-fold designs: every run of a fold the same test split,
    and the folds' test sets must partition the data. Each distinct data config is opened once.
    """
    split = cfg.evaluate.split
    hashes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    ids_of_key: dict[str, list[str]] = {}
    for key, runs in _by_key(plan, drop_split=False).items():
        ids = split_ids(runs[0].config.data, split)
        if not ids:
            raise SplitMismatchError(f"run {runs[0].run_id}: its {split} split is empty")
        ids_of_key[key] = ids
        digest = ids_hash(ids)
        for run in runs:
            hashes[run.run_id] = digest
            sizes[run.run_id] = len(ids)
    if cfg.repeat.kind == "fold" and cfg.repeat.levels:
        by_fold: dict[int, list[PlannedRun]] = defaultdict(list)
        for run in plan:
            by_fold[int(run.fold)].append(run)
        fold_tests: dict[int, list[str]] = {}
        for fold, runs in sorted(by_fold.items()):
            check_same_test({r.run_id: hashes[r.run_id] for r in runs}, sizes)
            fold_tests[fold] = ids_of_key[split_key(runs[0].config.data)]
        check_fold_partition(fold_tests, _fold_pool_ids(cfg, plan))
    else:
        check_same_test(hashes, sizes)
    return hashes
