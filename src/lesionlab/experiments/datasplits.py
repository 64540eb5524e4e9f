"""The grid's split work through the data layer: k-fold split files, and the test-split agreement check.

Kept apart from :mod:`lesionlab.experiments.splits` (pure checks on ids) because this opens the data sources.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lesionlab.config import EXECUTION_ONLY, DataConfig
from lesionlab.experiments.grid import ExperimentConfig
from lesionlab.experiments.plan import PlannedRun, fold_split_path
from lesionlab.experiments.splits import SplitMismatchError, check_fold_partition, check_same_test, ids_hash

log = logging.getLogger(__name__)

#: Data settings that change the pixels a run sees (or where they are cached) but not which images are in which split.
PIXEL_ONLY = ("image_size", "resize", "synthetic_size", "convert_mode",
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
    """The one data config a k-fold grid splits; runs that read different data cannot share folds."""
    groups = _by_key(plan, drop_split=True)
    if len(groups) > 1:
        names = [f"{runs[0].run_id} ({len(runs)} runs)" for runs in groups.values()]
        raise SplitMismatchError("a k-fold grid needs every run on the same data (only pixel settings such as "
                                 f"image_size may differ), but these runs read different data: {', '.join(names)}")
    return plan[0].config.data


def write_fold_splits(cfg: ExperimentConfig, plan: Sequence[PlannedRun]) -> list[Path]:
    """Write one split CSV per fold (test = that fold; lesion-grouped), unless identical ones are already there.

    An existing file with a different assignment is an error, since finished runs may have trained on it.
    """
    from lesionlab.data import open_unsplit, write_split_csv
    from lesionlab.data.splits import fold_split, group_folds, lesion_groups, read_split_csv

    rep = cfg.repeat
    if rep.folds is None or not plan:
        return []
    source = open_unsplit(_fold_source_config(plan))
    table = source.table.reset_index(drop=True)
    groups = lesion_groups(table, source.linked_pairs)
    fold_of = group_folds(table["label"].to_numpy(), groups, rep.folds, rep.fold_seed)
    paths = []
    for k in range(rep.folds):
        frame = fold_split(table, groups, fold_of, k, rep.val_fraction, rep.fold_seed)
        path = fold_split_path(cfg.output_dir, k, rep.folds, rep.fold_seed)
        if path.is_file():
            old = read_split_csv(path)
            same = old[["image_id", "split"]].sort_values("image_id").reset_index(drop=True).equals(
                frame[["image_id", "split"]].astype(str).sort_values("image_id").reset_index(drop=True))
            if not same:
                raise SplitMismatchError(f"{path}: exists with a different fold assignment than the data now gives "
                                         f"({source.name}); the data changed since the grid's runs were made. Use a "
                                         "new output_dir (or repeat.fold_seed) rather than mixing old and new runs")
        else:
            write_split_csv(frame, path)
        paths.append(path)
    log.info("k-fold split files for %s (%d images, %d folds): %s", source.name, len(table), rep.folds,
             paths[0].parent)
    return paths


def split_ids(data: DataConfig, split: str = "test") -> list[str]:
    """The image ids of one split of a data config, resolved by the data layer exactly as training will."""
    from lesionlab.data import open_source

    table = open_source(data).table
    return table.loc[table["split"] == split, "image_id"].astype(str).tolist()


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
        from lesionlab.data import open_unsplit

        everything = open_unsplit(_fold_source_config(plan)).table["image_id"].astype(str).tolist()
        check_fold_partition(fold_tests, everything)
    else:
        check_same_test(hashes, sizes)
    return hashes
