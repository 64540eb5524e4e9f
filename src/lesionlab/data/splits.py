"""Train/val/test splits: lesionlab's own lesion-grouped splits, split CSV files, and the published maps.

A split is a mapping ``image_id -> train | val | test``. lesionlab's own splits (:func:`lesion_split`,
:func:`kfold_split`) keep every lesion - and every pair of images listed as known duplicates - inside one split,
stratified by class with scikit-learn's ``StratifiedGroupKFold`` and deterministic by seed. Fractions are realised
as one fold of ``k = round(1 / fraction)`` folds, so 0.2 -> exactly 1/5 and val 0.1 of the whole -> 1/8 of the rest.

A split CSV (:func:`write_split_csv` / :func:`read_split_csv`) records ``image_id, lesion_id, split`` (plus
``fold`` for k-fold files) and is validated on reading: no image twice, no lesion in two splits, no empty split.

The published maps are applied as published: DermaMNIST (``dermamnist_split_info.csv``) shares lesions between its
splits, which is allowed so that the leakage can be audited and studied, with a loud warning;
DermaMNIST-C (``dermamnist_c_splits.csv``) is lesion-disjoint.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from lesionlab.classes import CLASS_CODES
from lesionlab.core.io import atomic_write
from lesionlab.data.images import DataError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Rows a split file keeps out of the run altogether (cross-validation files hold the real test split out so).
HOLDOUT = "holdout"
PUBLISHED_SPLITS: dict[str, str] = {"dermamnist": "dermamnist_split_info.csv",
                                    "dermamnist_c": "dermamnist_c_splits.csv"}
KNOWN_DUPLICATES_FILE = "newly_discovered_duplicates.csv"
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "split")


def _line(position: int) -> int:
    """CSV line number of a 0-based data row (line 1 is the header)."""
    return int(position) + 2


def read_csv_columns(path: Path, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings, with errors naming the file and any missing column (with a near-match hint)."""
    import difflib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in required:
        if column not in frame.columns:
            close = difflib.get_close_matches(column, list(frame.columns), n=1)
            hint = f" (is {close[0]!r} a renamed {column!r}?)" if close else ""
            raise DataError(f"{path}: missing column {column!r}{hint}; the file has columns {list(frame.columns)}")
    return frame.apply(lambda col: col.str.strip())


def lesion_groups(table: pd.DataFrame, linked_pairs: Iterable[tuple[str, str]] = ()) -> np.ndarray:
    """One group number per row: rows share a group when they share a lesion or are a linked (duplicate) pair."""
    codes, _ = pd.factorize(table["lesion_id"].astype(str))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    pos = pd.Series(codes, index=table["image_id"].astype(str).to_numpy())
    pairs = [(pos[a], pos[b]) for a, b in linked_pairs if a in pos.index and b in pos.index]
    if not pairs:
        return codes
    rows, cols = np.array(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_groups, n_groups))
    _, merged = connected_components(graph, directed=False)
    return merged[codes]


def group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index ``0..k-1`` per row: no group (lesion) in two folds, stratified by label as far as groups allow.

    scikit-learn's ``StratifiedGroupKFold`` shuffled by ``seed``; every lesionlab split and fold is made here.
    """
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"{k} folds need at least {k} lesions; the data has {n_groups}")
    out = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Rare classes with fewer groups than folds are expected (df, vasc in small sets); the folds stay valid.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        try:
            for j, (_, held) in enumerate(folds.split(np.zeros(len(labels)), np.asarray(labels), np.asarray(groups))):
                out[held] = j
        except ValueError as err:  # e.g. every class smaller than k
            raise DataError(f"cannot make {k} stratified lesion-grouped folds of {len(labels)} images: {err}") from err
    return out


def _hold_out(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one stratified group fold of size ~``fraction``."""
    k = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"cannot hold out {fraction:g} of the data: only {n_groups} lesion groups for {k} folds")
    try:
        return group_folds(labels, groups, k, seed) == 0
    except DataError as err:  # say which data and fraction
        raise DataError(f"cannot hold out {fraction:g} of {len(labels)} images ({k} stratified folds): "
                        f"{err.__cause__ or err}") from err


def lesion_split(table: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 linked_pairs: Iterable[tuple[str, str]] = ()) -> pd.Series:
    """lesionlab's split: lesion-grouped, class-stratified, seeded; returns ``split`` aligned with ``table``."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                         "with a sum below 1")
    labels = table["label"].to_numpy()
    groups = lesion_groups(table, linked_pairs)
    split = np.full(len(table), "train", dtype=object)
    test = _hold_out(labels, groups, test_fraction, seed)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = _hold_out(labels[rest], groups[rest], val_fraction / (1.0 - test_fraction), seed + 1)
    split[rest[val]] = "val"
    return pd.Series(split, index=table.index, name="split")


def kfold_split(table: pd.DataFrame, k: int, test_fraction: float = 0.2, seed: int = 0,
                linked_pairs: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """Held-out test set plus ``k`` lesion-grouped stratified folds of the rest.

    Returns ``image_id, lesion_id, split, fold``: ``fold`` is 0..k-1 (-1 for test) and ``split`` shows fold 0 as
    validation, so the frame is also an ordinary split; :func:`read_split_csv` with ``fold=j`` selects another.
    """
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    labels = table["label"].to_numpy()
    groups = lesion_groups(table, linked_pairs)
    test = _hold_out(labels, groups, test_fraction, seed)
    rest = np.flatnonzero(~test)
    if len(np.unique(groups[rest])) < k:
        raise DataError(f"cannot make {k} folds: only {len(np.unique(groups[rest]))} lesion groups outside test")
    fold = np.full(len(table), -1, dtype=np.int64)
    fold[rest] = group_folds(labels[rest], groups[rest], k, seed + 1)
    split = np.where(fold == -1, "test", np.where(fold == 0, "val", "train"))
    return pd.DataFrame({"image_id": table["image_id"].to_numpy(), "lesion_id": table["lesion_id"].to_numpy(),
                         "split": split, "fold": fold})


def fold_split(table: pd.DataFrame, groups: np.ndarray, fold_of: np.ndarray, fold: int, val_fraction: float,
               seed: int) -> pd.DataFrame:
    """``image_id, lesion_id, split`` for one fold of :func:`group_folds`: that fold is the test part, and one of
    ``round(1 / val_fraction)`` group folds of the rest (seeded per fold) the validation part."""
    test = fold_of == fold
    rest = np.flatnonzero(~test)
    k_val = max(2, round(1.0 / val_fraction))
    val_of = group_folds(table["label"].to_numpy()[rest], np.asarray(groups)[rest], k_val, seed + 1000 * (fold + 1))
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
    split = np.full(len(table), HOLDOUT, dtype=object)
    split[pool] = inner["split"].to_numpy()
    return pd.DataFrame({"image_id": table["image_id"].astype(str).to_numpy(),
                         "lesion_id": table["lesion_id"].astype(str).to_numpy(), "split": split})


def split_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The split CSV content of a table that carries a ``split`` column (and ``fold`` if present)."""
    columns = [*SPLIT_COLUMNS, "fold"] if "fold" in table.columns else list(SPLIT_COLUMNS)
    return table.loc[table["split"].astype(str) != "", columns].reset_index(drop=True)


def write_split_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a split CSV atomically, after the same checks as reading it."""
    check_split_frame(frame, str(path))
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def check_split_frame(frame: pd.DataFrame, where: str, allow_shared_lesions: bool = False) -> None:
    """Validate a split assignment: known split names, unique images, lesion-disjoint, no empty split.

    ``holdout`` rows belong to no split of the run (no training, validation or testing); they are allowed too.
    """
    split = frame["split"].astype(str)
    bad = ~split.isin((*SPLITS, HOLDOUT))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: row {_line(i)}: split {split.iloc[i]!r} is not one of {', '.join(SPLITS)} "
                        f"(or {HOLDOUT})")
    dup = frame["image_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = frame["image_id"].iloc[int(np.flatnonzero(dup)[0])]
        rows = [_line(i) for i in np.flatnonzero((frame["image_id"] == first).to_numpy())]
        raise DataError(f"{where}: image {first} appears more than once (rows {', '.join(map(str, rows))})")
    if not allow_shared_lesions and "lesion_id" in frame.columns:
        per_lesion = frame.groupby("lesion_id", sort=False)["split"].nunique()
        shared = per_lesion[per_lesion > 1]
        if len(shared):
            lesion = shared.index[0]
            positions = np.flatnonzero((frame["lesion_id"] == lesion).to_numpy())
            parts = [f"{frame['split'].iloc[i]} (row {_line(i)})" for i in positions]
            raise DataError(f"{where}: lesion {lesion} is in more than one split: {', '.join(parts)}; a split file "
                            f"must keep each lesion in one split ({len(shared)} lesions affected)")
    empty = [name for name in SPLITS if not (split == name).any()]
    if empty:
        raise DataError(f"{where}: split {', '.join(empty)} is empty")


def read_split_csv(path: str | Path, fold: int | None = None) -> pd.DataFrame:
    """Read and validate a split CSV; with ``fold`` (k-fold files) that fold becomes validation."""
    frame = read_csv_columns(Path(path), SPLIT_COLUMNS, "split file")
    if fold is not None:
        if "fold" not in frame.columns:
            raise DataError(f"{path}: fold {fold} requested but the file has no 'fold' column (not a k-fold file)")
        folds = pd.to_numeric(frame["fold"], errors="coerce")
        if folds.empty:
            raise DataError(f"{path}: no data rows")
        bad = folds.isna() | ~np.isfinite(folds) | (folds != folds.round())
        if bad.any():
            raise DataError(f"{path}: row {_line(int(np.flatnonzero(bad.to_numpy())[0]))}: "
                            "fold is not an integer")
        k = int(folds.max()) + 1
        if not 0 <= fold < k:
            raise DataError(f"{path}: fold {fold} requested, the file has folds 0..{k - 1}")
        frame["fold"] = folds.astype(int)
        kept = frame["split"].isin(["test", HOLDOUT])
        frame["split"] = np.where(kept, frame["split"], np.where(frame["fold"] == fold, "val", "train"))
    check_split_frame(frame, str(path))
    return frame


def read_dermamnist_split(path: str | Path) -> pd.DataFrame:
    """The published DermaMNIST map (``split,index,image_id``) -> ``image_id, split`` (lesions may be shared)."""
    frame = read_csv_columns(Path(path), ("split", "index", "image_id"), "DermaMNIST split map")
    check_split_frame(frame, str(path), allow_shared_lesions=True)
    return frame[["image_id", "split", "index"]]


def read_dermamnist_c_split(path: str | Path) -> pd.DataFrame:
    """The DermaMNIST-C split (HAM10000 metadata + ``split``) -> ``image_id, lesion_id, split``, lesion-disjoint."""
    frame = read_csv_columns(Path(path), SPLIT_COLUMNS, "DermaMNIST-C split file")
    check_split_frame(frame, str(path))
    return frame[list(SPLIT_COLUMNS)]


def read_known_duplicates(path: str | Path) -> list[tuple[str, str]]:
    """Known duplicate image pairs (``from_img,to_img`` file names) -> list of (image_id, image_id)."""
    frame = read_csv_columns(Path(path), ("from_img", "to_img"), "known-duplicates file")
    return [(Path(a).stem, Path(b).stem) for a, b in zip(frame["from_img"], frame["to_img"], strict=True)]


def apply_split(table: pd.DataFrame, assignment: pd.DataFrame, where: str, require_all: bool = True) -> pd.DataFrame:
    """Copy of ``table`` with ``split`` (and ``fold``) from an assignment keyed by ``image_id``.

    Rows the assignment does not mention get ``""``; with ``require_all`` that is an error naming the images.
    Where the assignment records lesion ids they must agree with the table's.
    """
    assign = assignment.set_index("image_id")
    out = table.copy()
    out["split"] = out["image_id"].map(assign["split"]).fillna("").astype(str)
    if "fold" in assign.columns:
        out["fold"] = out["image_id"].map(pd.to_numeric(assign["fold"])).fillna(-1).astype(int)
    if "lesion_id" in assign.columns:
        theirs = out["image_id"].map(assign["lesion_id"])
        differ = theirs.notna() & (theirs.astype(str) != out["lesion_id"].astype(str))
        if differ.any():
            i = int(np.flatnonzero(differ.to_numpy())[0])
            raise DataError(f"{where}: image {out['image_id'].iloc[i]} has lesion {theirs.iloc[i]} there but "
                            f"{out['lesion_id'].iloc[i]} in the data ({int(differ.sum())} images disagree)")
    if require_all:
        missing = out["split"] == ""
        if missing.any():
            examples = ", ".join(out.loc[missing, "image_id"].head(5))
            raise DataError(f"{where}: {int(missing.sum())} of {len(out)} images have no split there (e.g. {examples})")
    return out


def shared_lesion_counts(table: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Lesions shared by each pair of splits (for the warning on published maps; the audit has the details)."""
    lesions = {name: set(table.loc[table["split"] == name, "lesion_id"]) for name in SPLITS}
    return {(a, b): len(lesions[a] & lesions[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}


def split_hash(table: pd.DataFrame) -> str:
    """sha256 of the sorted ``image_id -> split`` mapping; runs store it to name the exact split they used."""
    rows = table.loc[table["split"].astype(str) != "", ["image_id", "split"]].astype(str)
    lines = sorted(f"{i}\t{s}\n" for i, s in zip(rows["image_id"], rows["split"], strict=True))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def class_split_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows, in class order) and split (columns) with totals; unsplit rows under ``-``."""
    split = table["split"].replace("", "-")
    counts = pd.crosstab(pd.Categorical(table["dx"], categories=list(CLASS_CODES)), split, dropna=False)
    order = [s for s in (*SPLITS, HOLDOUT, "-") if s in counts.columns]
    counts = counts.reindex(columns=order, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    counts.index.name, counts.columns.name = "class", "split"
    return counts.astype(int)
