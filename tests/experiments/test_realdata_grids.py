"""The CPU-sized study grids against the real shared HAM10000 data: folds, test splits (no training here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import expand
from lesionlab.experiments.runner import prepare_grid

GRIDS = Path(__file__).resolve().parents[2] / "configs" / "grids"


@pytest.mark.realdata
def test_ham10000_cpu_grid_folds_partition_the_real_data(shared_data: Path, tmp_path: Path) -> None:
    cfg, base = load_grid(GRIDS / "ham10000-cpu.yaml", [f"output_dir={tmp_path}"])
    plan = expand(cfg, base)
    assert len(plan) == 2 * 2 * 2 * 3
    hashes = prepare_grid(cfg, plan)
    assert len(set(hashes.values())) == 3
    folds = [pd.read_csv(p, dtype=str) for p in sorted((tmp_path / "splits").glob("fold*.csv"))]
    assert len(folds) == 3 and all(len(f) == 5984 for f in folds)
    tests = [set(f.loc[f.split == "test", "image_id"]) for f in folds]
    assert sum(len(t) for t in tests) == 5984 and len(set.union(*tests)) == 5984
    meta = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv").set_index("image_id")
    overall = (meta.loc[folds[0]["image_id"], "dx"] == "mel").mean()  # 491 / 5984 = 0.082
    for t in tests:  # stratified: each test fold has the whole set's melanoma share
        assert abs((meta.loc[sorted(t), "dx"] == "mel").mean() - overall) < 0.01


@pytest.mark.realdata
def test_dermamnist_cpu_grid_shares_the_dermamnist_c_test_set(shared_data: Path, tmp_path: Path) -> None:
    cfg, base = load_grid(GRIDS / "dermamnist-cpu.yaml", [f"output_dir={tmp_path}"])
    plan = expand(cfg, base)
    assert len(plan) == 2 * 4 * 2 * 3
    effv4 = next(r for r in plan if r.labels["head"] == "effv4")
    assert effv4.config_file_dict()["model"]["head_preset"] == "effv4"
    assert "class_weights" not in effv4.config_file_dict()["train"]  # left to the preset
    hashes = prepare_grid(cfg, plan)
    assert len(set(hashes.values())) == 1
