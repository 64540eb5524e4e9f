"""Test-split checks across a grid, and the per-fold split files of k-fold designs.

Comparing conditions is only meaningful on the same test images: before anything runs, every run's test split is
resolved through the data layer and hashed. Seed designs must share one test split; k-fold designs must use one
split per fold (the same for every condition) whose test parts partition the labelled data.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lesionlab.config import ConfigError


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


def _stratified_group_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():  # rare classes with fewer lesions than folds are expected (df, vasc)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            out[held] = k
    return out


def assign_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per row: grouped (no lesion group in two folds), stratified by label as far as groups allow."""
    if folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {folds}")
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ValueError(f"{folds} folds need at least {folds} lesions; the data has {n_groups}")
    return _stratified_group_folds(np.asarray(labels), np.asarray(groups), folds, seed)


def fold_split(table: pd.DataFrame, groups: np.ndarray, fold_of: np.ndarray, fold: int, val_fraction: float,
               seed: int) -> pd.DataFrame:
    """``image_id, lesion_id, split`` for one fold: its test part, and a grouped, stratified val part of the rest.

    The val part is one of ``round(1 / val_fraction)`` stratified group folds of the rest (the data layer realises
    fractions the same way), seeded per fold so that each fold's val set is reproducible.
    """
    test = fold_of == fold
    rest = np.flatnonzero(~test)
    k_val = max(2, round(1.0 / val_fraction))
    val_of = _stratified_group_folds(table["label"].to_numpy()[rest], np.asarray(groups)[rest], k_val,
                                     seed + 1000 * (fold + 1))
    split = np.where(test, "test", "train").astype(object)
    split[rest[val_of == 0]] = "val"
    return pd.DataFrame({"image_id": table["image_id"].astype(str).to_numpy(),
                         "lesion_id": table["lesion_id"].astype(str).to_numpy(), "split": split})


def cv_fold_split(table: pd.DataFrame, groups: np.ndarray, fold_of: np.ndarray, fold: int, val_fraction: float,
                  seed: int, pool: np.ndarray) -> pd.DataFrame:
    """One cross-validation fold over the rows in ``pool`` (train + val); every other row is ``holdout``.

    Within the pool this is :func:`fold_split`: the held-out fold is ``test`` (what the run is scored on), a
    grouped, stratified ``val`` part of the rest picks the epoch, the rest trains. ``fold_of`` is aligned with
    the pool's rows.
    """
    pool = np.asarray(pool, dtype=bool)
    inner = fold_split(table[pool].reset_index(drop=True), np.asarray(groups)[pool], fold_of, fold, val_fraction,
                       seed)
    split = np.full(len(table), "holdout", dtype=object)
    split[pool] = inner["split"].to_numpy()
    return pd.DataFrame({"image_id": table["image_id"].astype(str).to_numpy(),
                         "lesion_id": table["lesion_id"].astype(str).to_numpy(), "split": split})
