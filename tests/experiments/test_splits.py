"""Test-split agreement across a grid and k-fold split files, through the data layer (synthetic source)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import expand
from lesionlab.experiments.runner import prepare_grid
from lesionlab.experiments.splits import (
    SplitMismatchError,
    check_fold_partition,
    check_same_test,
    check_test_splits,
    ids_hash,
    write_fold_splits,
)

BASE = {"data": {"source": "synthetic", "synthetic_n": 140, "split": "lesion"}}
AXES = {"resolution": {"32": {"data.image_size": 32}, "24x32": {"data.image_size": [24, 32],
                                                               "data.resize": "aspect"}},
        "clinical": {"off": {"model.fusion": "none"}, "on": {"model.fusion": "concat"}}}


def grid(tmp_path: Path, **extra: object) -> Path:
    data = {"name": "splits", "base": BASE, "axes": AXES, "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_seed_grid_shares_one_test_split(tmp_path: Path) -> None:
    cfg, base = load_grid(grid(tmp_path, repeat={"seeds": [0, 1]}))
    plan = expand(cfg, base)
    hashes = prepare_grid(cfg, plan, grid_path=tmp_path / "grid.yaml")
    assert len(hashes) == 8 and len(set(hashes.values())) == 1
    assert (cfg.output_dir / "plan.csv").is_file() and (cfg.output_dir / "grid.yaml").is_file()


def test_runs_on_different_test_splits_are_refused_by_name(tmp_path: Path) -> None:
    axes = {**AXES, "split": {"s0": {"data.split_seed": 0}, "s1": {"data.split_seed": 1}}}
    cfg, base = load_grid(grid(tmp_path, axes=axes))
    plan = expand(cfg, base)
    with pytest.raises(SplitMismatchError) as err:
        check_test_splits(cfg, plan)
    message = str(err.value)
    assert "disagree on the test split" in message
    assert any(r.run_id in message for r in plan if r.labels["split"] == "s0")
    assert any(r.run_id in message for r in plan if r.labels["split"] == "s1")


def test_kfold_grid_writes_partitioning_fold_files(tmp_path: Path) -> None:
    cfg, base = load_grid(grid(tmp_path, repeat={"folds": 3, "fold_seed": 2}))
    plan = expand(cfg, base)
    paths = write_fold_splits(cfg, plan)
    assert [p.name for p in paths] == [f"fold{k}-of3-seed2.csv" for k in range(3)]
    frames = [pd.read_csv(p, dtype=str) for p in paths]
    tests = [set(f.loc[f.split == "test", "image_id"]) for f in frames]
    assert not (tests[0] & tests[1]) and not (tests[1] & tests[2]) and len(set.union(*tests)) == 140
    for f in frames:
        assert set(f.split) == {"train", "val", "test"}
        assert f.groupby("lesion_id").split.nunique().max() == 1  # lesion-grouped
    hashes = check_test_splits(cfg, plan)
    assert len(set(hashes.values())) == 3
    for run in plan:  # the runs of one fold share its test split
        assert hashes[run.run_id] == ids_hash(tests[run.fold])
    # a second preparation finds identical files; a tampered file is an error naming it
    assert write_fold_splits(cfg, plan) == paths
    frames[0].loc[frames[0].index[frames[0].split == "train"][0], "split"] = "val"
    frames[0].to_csv(paths[0], index=False)
    with pytest.raises(SplitMismatchError, match=paths[0].name):
        write_fold_splits(cfg, plan)


def test_kfold_grid_needs_one_data_source(tmp_path: Path) -> None:
    axes = {**AXES, "data": {"a": {"data.synthetic_seed": 0}, "b": {"data.synthetic_seed": 1}}}
    cfg, base = load_grid(grid(tmp_path, axes=axes, repeat={"folds": 2}))
    with pytest.raises(SplitMismatchError, match="read different data"):
        write_fold_splits(cfg, expand(cfg, base))


def test_partition_and_agreement_checks_name_the_problem() -> None:
    check_same_test({"a": "h1", "b": "h1"})
    with pytest.raises(SplitMismatchError, match=r"\[a, b\] \(test split h1, 10 test images\) vs \[c\]"):
        check_same_test({"a": "h1", "b": "h1", "c": "h2"}, {"a": 10, "b": 10, "c": 12})
    check_fold_partition({0: ["x", "y"], 1: ["z"]}, ["x", "y", "z"])
    with pytest.raises(SplitMismatchError, match="image y is in the test part of fold 0 and fold 1"):
        check_fold_partition({0: ["x", "y"], 1: ["y", "z"]}, ["x", "y", "z"])
    with pytest.raises(SplitMismatchError, match="1 images in no test fold"):
        check_fold_partition({0: ["x"], 1: ["z"]}, ["x", "y", "z"])
