"""Choosing settings by cross-validation on train + val, then scoring the test split once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lesionlab.cli import main
from lesionlab.config import ConfigError
from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import expand
from lesionlab.experiments.runner import prepare_grid
from lesionlab.experiments.selection import (
    TestRescoreError,
    check_test_once,
    final_run,
    formatted_table,
    select,
    selection_record,
)

BASE = {"data": {"source": "synthetic", "synthetic_n": 140, "split": "lesion", "image_size": 32}}
AXES = {"lr": {"small": {"train.lr": 0.001}, "large": {"train.lr": 0.01}},
        "clinical": {"off": {"model.fusion": "none"}, "on": {"model.fusion": "concat"}}}
CV = {"folds": 3, "within": "train_val", "fold_seed": 1}


def grid(tmp_path: Path, **extra: object) -> Path:
    data = {"name": "cv", "base": BASE, "axes": AXES, "repeat": CV, "select": {"metric": "balanced_accuracy"},
            "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"repeat": {"seeds": [0, 1]}}, "select chooses by cross-validation on train \\+ val"),
    ({"repeat": {"folds": 3}}, "select chooses by cross-validation on train \\+ val"),
    ({"repeat": {"within": "train_val"}, "select": None}, "needs repeat.folds"),
    ({"evaluate": {"split": "val"}}, "set evaluate.split: test"),
])
def test_selection_needs_cross_validation_on_train_val(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_grid(grid(tmp_path, **change))


def test_cv_folds_cover_train_val_and_hold_the_test_split_out(tmp_path: Path) -> None:
    from lesionlab.data import open_source

    cfg, base = load_grid(grid(tmp_path))
    plan = expand(cfg, base)
    assert len(plan) == 4 * 3 and all(r.cv_data.split == "lesion" for r in plan)
    assert all(Path(r.config.data.split).name.startswith("cv-fold") for r in plan)
    hashes = prepare_grid(cfg, plan, grid_path=tmp_path / "grid.yaml")
    assert len(set(hashes.values())) == 3  # one scored fold per fold index, shared by every condition
    table = open_source(plan[0].cv_data).table
    real_test = set(table.loc[table["split"] == "test", "image_id"])
    pool = set(table.loc[table["split"].isin(["train", "val"]), "image_id"])
    scored = []
    for k in range(3):
        fold = next(r for r in plan if r.fold == k)
        split = open_source(fold.config.data).table
        assert set(split.loc[split["split"] == "holdout", "image_id"]) == real_test
        assert (split["split"] == "val").any()
        fold_test = set(split.loc[split["split"] == "test", "image_id"])
        assert fold_test <= pool
        scored.append(fold_test)
    assert set().union(*scored) == pool and sum(map(len, scored)) == len(pool)  # a partition of train + val


def _results(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (lr, clinical), scores in values.items():
        for fold, v in enumerate(scores):
            rows.append({"run_id": f"{lr}-{clinical}-{fold}", "lr": lr, "clinical": clinical, "fold": str(fold),
                         "balanced_accuracy": v})
    return pd.DataFrame(rows)


def test_select_ranks_complete_conditions_by_mean_cv_score(tmp_path: Path) -> None:
    cfg, _ = load_grid(grid(tmp_path))
    results = _results({("small", "off"): [0.60, 0.62, 0.64], ("small", "on"): [0.70, 0.71, 0.72],
                        ("large", "off"): [0.90, 0.91], ("large", "on"): [0.50, 0.90, 0.95]})
    sel = select(results, cfg)
    assert sel.chosen == {"lr": "large", "clinical": "on"}  # 0.783 mean beats 0.71; large/off lacks a fold
    assert not sel.complete
    ranks = sel.table.set_index(["lr", "clinical"])["rank"]
    assert ranks[("large", "on")] == 1 and ranks[("small", "on")] == 2 and pd.isna(ranks[("large", "off")])
    assert any("within one sd" in n for n in sel.notes) and any("do not have all 3 folds" in n for n in sel.notes)
    row = sel.table.set_index(["lr", "clinical"]).loc[("small", "on")]
    assert row["mean"] == pytest.approx(0.71) and row["sd"] == pytest.approx(np.std([0.70, 0.71, 0.72], ddof=1))
    table = formatted_table(sel, cfg.axis_names)
    assert table.iloc[0]["chosen"] == "yes" and "(3/3 folds)" in table.iloc[0]["CV balanced_accuracy"]
    tie = select(_results({k: [0.8, 0.8, 0.8] for k in [("small", "off"), ("small", "on"), ("large", "off"),
                                                           ("large", "on")]}), cfg)
    assert tie.complete and tie.chosen == {"lr": "small", "clinical": "off"}  # ties: first in the grid
    assert select(pd.DataFrame(), cfg).chosen is None


def test_final_run_is_the_choice_on_the_base_split_and_the_test_is_scored_once(tmp_path: Path) -> None:
    cfg, base = load_grid(grid(tmp_path))
    final = final_run(cfg, base, {"lr": "large", "clinical": "on"})
    assert final.run_id.startswith("final-large-on-") and final.config.data.split == "lesion"
    assert final.config.train.lr == 0.01 and final.config.model.fusion == "concat"
    assert final.run_dir.parent == cfg.output_dir / "final" and final.fold is None
    assert check_test_once(cfg.output_dir, final) == []
    other = final_run(cfg, base, {"lr": "small", "clinical": "on"})
    (other.eval_dir).mkdir(parents=True)
    (other.eval_dir / "metrics.json").write_text(json.dumps({"n": 28, "accuracy": 0.5, "balanced_accuracy": 0.4}))
    with pytest.raises(TestRescoreError, match=other.run_id):
        check_test_once(cfg.output_dir, final)
    assert "no longer an untouched estimate" in check_test_once(cfg.output_dir, final, allow_rescore=True)[0]
    assert check_test_once(cfg.output_dir, other) == []  # re-reading the same choice's score is fine
    sel = select(_results({k: [0.8, 0.8, 0.8] for k in [("small", "off"), ("small", "on"), ("large", "off"),
                                                           ("large", "on")]}), cfg)
    record = selection_record(sel, cfg, other)
    assert record["final"]["test"]["balanced_accuracy"] == 0.4 and record["complete"]


@pytest.mark.slow
def test_cross_validation_selection_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = grid(tmp_path, axes={"clinical": AXES["clinical"]}, repeat={**CV, "folds": 2}, workers=2,
                base={**BASE, "model": {"name": "test_efficientnet", "pretrained": False},
                      "augment": {"enabled": False},
                      "train": {"mode": "scratch", "epochs": 1, "batch_size": 32, "device": "cpu",
                                "patience": None}})
    assert main(["experiment", str(path), "--no-progress"]) == 0
    out = tmp_path / "out"
    record = json.loads((out / "selection.json").read_text())
    assert record["complete"] and record["chosen"]["clinical"] in ("off", "on")
    final = record["final"]
    assert final["status"] == "scored" and final["test"]["n"] > 0
    final_dir = Path(final["run_dir"])
    assert final_dir.parent == out / "final" and (final_dir / "eval" / "metrics.json").is_file()
    info = json.loads((final_dir / "run.json").read_text())
    assert info["config"]["data"]["split"] == "lesion"  # trained on the base split, not a fold
    assert "selection by 2-fold cross-validation" in (out / "tables.md").read_text()
    assert "scored once" in (out / "selection.md").read_text()
    capsys.readouterr()
    assert main(["experiment", str(path), "--no-progress"]) == 0  # all done: nothing trains again
    assert "4 finished, 0 to do" in capsys.readouterr().out
    assert json.loads((out / "selection.json").read_text())["final"]["test"] == final["test"]
