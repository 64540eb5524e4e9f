"""Splits: lesion-disjoint, stratified, deterministic; split CSVs validated; published maps applied as published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.config import DataConfig
from lesionlab.data import (
    DataError,
    kfold_split,
    lesion_split,
    open_source,
    open_synthetic,
    read_split_csv,
    split_frame,
    split_hash,
    write_split_csv,
)
from lesionlab.data.splits import fold_split, group_folds, lesion_groups


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """A 700-image synthetic table: imbalanced classes, lesions with up to 3 images."""
    return open_synthetic(n=700, seed=1, size=16).table


def _lesion_disjoint(table: pd.DataFrame, split: pd.Series | np.ndarray) -> bool:
    return bool((pd.Series(np.asarray(split)).groupby(table["lesion_id"].to_numpy()).nunique() == 1).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("val", "test"), [(0.1, 0.2), (0.15, 0.15), (0.2, 0.25)])
def test_lesion_split_is_disjoint_and_stratified(table: pd.DataFrame, seed: int, val: float, test: float) -> None:
    split = lesion_split(table, val, test, seed)
    assert table["lesion_id"].groupby(table["lesion_id"]).size().max() > 1  # grouping is really exercised
    assert _lesion_disjoint(table, split)
    shares = split.value_counts(normalize=True)
    k_test = round(1 / test)
    assert shares["test"] == pytest.approx(1 / k_test, abs=0.03)
    assert shares["val"] == pytest.approx((1 - 1 / k_test) / round((1 - 1 / k_test) / val), abs=0.03)
    # stratification: every class's share in test within 8 points of the overall test share (classes >= 30 images)
    per_class = pd.crosstab(table["dx"], split, normalize="index")
    big = table["dx"].value_counts()[lambda s: s >= 30].index
    assert (per_class.loc[big, "test"] - shares["test"]).abs().max() < 0.08
    assert (pd.crosstab(table["dx"], split)["train"] > 0).all()  # every class is trained on


def test_lesion_split_is_deterministic_by_seed(table: pd.DataFrame) -> None:
    a, b, c = lesion_split(table, seed=5), lesion_split(table, seed=5), lesion_split(table, seed=6)
    assert a.equals(b)
    assert not a.equals(c)
    assert split_hash(table.assign(split=a)) == split_hash(table.assign(split=b))
    assert split_hash(table.assign(split=a)) != split_hash(table.assign(split=c))


def test_split_hash_ignores_row_order(table: pd.DataFrame) -> None:
    t = table.assign(split=lesion_split(table))
    assert split_hash(t) == split_hash(t.sample(frac=1.0, random_state=0))
    moved = t.copy()
    moved.loc[moved.index[0], "split"] = "test" if moved["split"].iloc[0] != "test" else "train"
    assert split_hash(moved) != split_hash(t)


def test_linked_pairs_stay_together(table: pd.DataFrame) -> None:
    ids = table["image_id"].tolist()
    pairs = [(ids[i], ids[i + 350]) for i in range(0, 300, 10)]
    groups = lesion_groups(table, pairs)
    pos = {k: i for i, k in enumerate(ids)}
    assert all(groups[pos[a]] == groups[pos[b]] for a, b in pairs)
    split = pd.Series(lesion_split(table, linked_pairs=pairs).to_numpy(), index=ids)
    assert all(split[a] == split[b] for a, b in pairs)


def test_kfold(table: pd.DataFrame, tmp_path: Path) -> None:
    frame = kfold_split(table, 5, test_fraction=0.2, seed=0)
    assert set(frame["fold"]) == {-1, 0, 1, 2, 3, 4}
    assert (frame.loc[frame["fold"] == -1, "split"] == "test").all()
    assert _lesion_disjoint(table, frame["fold"])  # every lesion in one fold
    sizes = frame[frame["fold"] >= 0].groupby("fold").size()
    assert sizes.max() - sizes.min() < 0.1 * sizes.mean()
    path = write_split_csv(frame, tmp_path / "folds.csv")
    for fold in range(5):
        read = read_split_csv(path, fold=fold)
        assert set(read.loc[read["split"] == "val", "image_id"]) == set(frame.loc[frame["fold"] == fold, "image_id"])
        assert (read.loc[frame["split"] == "test", "split"] == "test").all()
    with pytest.raises(DataError, match=r"fold 5 requested, the file has folds 0\.\.4"):
        read_split_csv(path, fold=5)
    assert kfold_split(table, 5, seed=0).equals(frame)


def test_split_csv_round_trip(table: pd.DataFrame, tmp_path: Path) -> None:
    t = table.assign(split=lesion_split(table))
    path = write_split_csv(split_frame(t), tmp_path / "splits.csv")
    assert list(pd.read_csv(path).columns) == ["image_id", "lesion_id", "split"]
    back = read_split_csv(path)
    assert dict(zip(back["image_id"], back["split"], strict=True)) == dict(zip(t["image_id"], t["split"], strict=True))


def _write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame(rows, columns=["image_id", "lesion_id", "split"]).to_csv(path, index=False)
    return path


GOOD = [("a", "L1", "train"), ("b", "L1", "train"), ("c", "L2", "val"), ("d", "L3", "test")]


@pytest.mark.parametrize(("rows", "message"), [
    ([*GOOD, ("e", "L1", "test")],
     r"lesion L1 is in more than one split: train \(row 2\), train \(row 3\), test \(row 6\)"),
    ([r for r in GOOD if r[2] != "val"], r"split val is empty"),
    ([*GOOD, ("e", "L4", "unused")], r"row 6: split 'unused' is not one of train, val, test \(or holdout\)"),
    ([*GOOD, ("e", "L1", "holdout")], r"lesion L1 is in more than one split"),
    ([*GOOD, ("a", "L1", "train")], r"image a appears more than once \(rows 2, 6\)"),
])
def test_bad_split_csv(tmp_path: Path, rows: list[tuple[str, str, str]], message: str) -> None:
    path = _write(tmp_path / "bad_split.csv", rows)
    with pytest.raises(DataError, match=r"bad_split\.csv: " + message):
        read_split_csv(path)


def test_holdout_rows_belong_to_no_split(tmp_path: Path) -> None:
    """Cross-validation files keep the real test split out of a run as ``holdout``."""
    back = read_split_csv(_write(tmp_path / "cv.csv", [*GOOD, ("e", "L4", "holdout"), ("f", "L4", "holdout")]))
    assert back.loc[back["split"] == "holdout", "image_id"].tolist() == ["e", "f"]
    assert sorted(back.loc[back["split"].isin(["train", "val", "test"]), "image_id"]) == ["a", "b", "c", "d"]


def test_split_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("image,lesion_id,split\na,L1,train\n")
    with pytest.raises(DataError, match=r"s\.csv: missing column 'image_id'"):
        read_split_csv(path)


def test_write_refuses_a_leaky_split(tmp_path: Path) -> None:
    frame = pd.DataFrame([*GOOD, ("e", "L2", "test")], columns=["image_id", "lesion_id", "split"])
    with pytest.raises(DataError, match="lesion L2 is in more than one split"):
        write_split_csv(frame, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_split_csv_applied_through_config(synthetic_ham: Path, tmp_path: Path) -> None:
    fresh = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion", split_seed=4))
    path = write_split_csv(split_frame(fresh.table), tmp_path / "mine.csv")
    again = open_source(DataConfig(metadata_csv=synthetic_ham, split=str(path)))
    assert again.table["split"].equals(fresh.table["split"])
    assert split_hash(again.table) == split_hash(fresh.table)


def test_split_csv_that_misses_images_or_disagrees_on_lesions(synthetic_ham: Path, tmp_path: Path) -> None:
    fresh = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion"))
    frame = split_frame(fresh.table)
    partial = write_split_csv(frame.iloc[3:], tmp_path / "partial.csv")
    with pytest.raises(DataError, match=r"partial\.csv: 3 of 120 images have no split there"):
        open_source(DataConfig(metadata_csv=synthetic_ham, split=str(partial)))
    wrong = frame.copy()
    wrong.loc[0, "lesion_id"] = "SYNL_99999"
    path = write_split_csv(wrong, tmp_path / "wrong.csv")
    with pytest.raises(DataError, match=r"wrong\.csv: image SYN_00000 has lesion SYNL_99999 there"):
        open_source(DataConfig(metadata_csv=synthetic_ham, split=str(path)))


def test_published_maps_from_files_next_to_the_metadata(ham_copy: Path) -> None:
    """DermaMNIST-C style (lesion-disjoint) and DermaMNIST style (shares lesions, allowed with a warning) files."""
    meta = pd.read_csv(ham_copy)
    lesions = meta["lesion_id"].unique()
    choice = dict(zip(lesions, np.resize(["train", "train", "val", "test"], len(lesions)), strict=True))
    meta.assign(split=meta["lesion_id"].map(choice)).to_csv(ham_copy.parent / "dermamnist_c_splits.csv", index=False)
    source = open_source(DataConfig(metadata_csv=ham_copy))
    assert source.split_name.startswith("dermamnist_c") and _lesion_disjoint(source.table, source.table["split"])
    leaky = meta[["image_id"]].assign(split=np.resize(["train", "val", "test"], len(meta)), index=range(len(meta)))
    leaky[["split", "index", "image_id"]].to_csv(ham_copy.parent / "dermamnist_split_info.csv", index=False)
    source = open_source(DataConfig(metadata_csv=ham_copy, split="dermamnist"))
    assert not _lesion_disjoint(source.table, source.table["split"])
    assert any(n.startswith("WARNING: the published DermaMNIST split shares lesions") for n in source.notes)


def test_empty_split_after_applying(ham_copy: Path) -> None:
    meta = pd.read_csv(ham_copy)
    meta.assign(split=np.where(meta.index < 60, "train", "test")).to_csv(
        ham_copy.parent / "dermamnist_c_splits.csv", index=False)
    with pytest.raises(DataError, match=r"dermamnist_c_splits\.csv: split val is empty"):
        open_source(DataConfig(metadata_csv=ham_copy))


@pytest.mark.realdata
def test_published_maps_on_shared_data(shared_data: Path) -> None:
    base = DataConfig(metadata_csv=shared_data / "ham10000" / "HAM10000_metadata.csv",
                      image_dirs=[shared_data / "ham10000-64" / "images"])
    c = open_source(base.model_copy(update={"split": "dermamnist_c"}))
    assert c.metadata["split"].value_counts().to_dict() == {"train": 8215, "test": 1227, "val": 573}
    d = open_source(base.model_copy(update={"split": "dermamnist"}))
    assert d.metadata["split"].value_counts().to_dict() == {"train": 7007, "test": 2005, "val": 1003}


def test_too_small_for_the_fractions_is_a_clear_error() -> None:
    tiny = open_synthetic(n=14, seed=0, size=16).table  # 2 images per class
    with pytest.raises(DataError, match=r"cannot hold out 0\.25 of \d+ images \(4 stratified folds\)"):
        lesion_split(tiny, val_fraction=0.25, test_fraction=0.25)


def test_fold_assignment_is_grouped_and_stratified() -> None:
    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(300), 2)  # two images per lesion
    labels = np.repeat(rng.integers(0, 3, 300), 2)
    fold_of = group_folds(labels, lesions, 5, seed=0)
    assert set(fold_of) == {0, 1, 2, 3, 4}
    assert all(len(set(fold_of[lesions == g])) == 1 for g in range(300))
    for k in range(5):  # each class spread over the folds
        assert abs((labels[fold_of == k] == 0).mean() - (labels == 0).mean()) < 0.08
    table = pd.DataFrame({"image_id": [f"i{i}" for i in range(600)], "lesion_id": lesions.astype(str),
                          "label": labels})
    split = fold_split(table, lesions, fold_of, 1, 0.1, seed=0)
    assert (split.split == "test").sum() == (fold_of == 1).sum()
    assert 0.05 < (split.split == "val").mean() < 0.15
    with pytest.raises(ValueError, match="at least 3 lesions"):
        group_folds(labels[:4], lesions[:4], 3, seed=0)
