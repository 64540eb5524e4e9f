"""Test-split checks across a grid (pure functions on image ids; the folds themselves come from the data layer).

Comparing conditions is only meaningful on the same test images: before anything runs, every run's test split is
resolved through the data layer and hashed. Seed designs must share one test split; k-fold designs must use one
split per fold (the same for every condition) whose test parts partition the labelled data.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

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
