"""``lesionlab experiment`` end to end with the real train and evaluate commands on a tiny synthetic grid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionlab.cli import main

REPO = Path(__file__).resolve().parents[2]
GRIDS = sorted((REPO / "configs" / "grids").glob("*.yaml"))


def tiny_grid(tmp_path: Path) -> Path:
    grid = {
        "name": "tiny",
        "base": {
            "data": {"source": "synthetic", "synthetic_n": 84, "split": "lesion", "image_size": 32},
            "model": {"name": "test_efficientnet", "pretrained": False},
            "augment": {"enabled": False},
            "train": {"mode": "scratch", "epochs": 1, "batch_size": 32, "device": "cpu", "patience": None},
        },
        "axes": {"clinical": {"off": {"model.fusion": "none"}, "on": {"model.fusion": "concat"}}},
        "repeat": {"seeds": [0]},
        "compare": ["clinical"],
        "workers": 2,
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.mark.slow
def test_tiny_grid_trains_evaluates_resumes_and_aggregates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = tiny_grid(tmp_path)
    assert main(["experiment", str(grid), "--no-progress"]) == 0
    out = tmp_path / "out"
    status = json.loads((out / "status.json").read_text())
    assert [s["status"] for s in status.values()] == ["ok", "ok"], status
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["clinical"]) == ["off", "on"]
    assert results["accuracy"].between(0, 1).all() and "per_class.mel.tpr" in results.columns
    for run_id in results["run_id"]:
        run_dir = out / "runs" / run_id
        assert (run_dir / "model.safetensors").is_file() and (run_dir / "eval" / "metrics.json").is_file()
        assert "step 2/2" in (run_dir / "experiment.log").read_text()
    assert (out / "tables.md").is_file() and (out / "report.html").is_file()
    capsys.readouterr()
    # resume: everything is finished, nothing runs again
    assert main(["experiment", str(grid), "--no-progress"]) == 0
    assert "2 finished, 0 to do" in capsys.readouterr().out
    assert main(["experiment", str(grid), "--aggregate-only"]) == 0
    assert "2 of 2 runs aggregated" in capsys.readouterr().out


def test_dry_run_and_cluster_files_write_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = tiny_grid(tmp_path)
    assert main(["experiment", str(grid), "--dry-run"]) == 0
    assert "2 runs, 0 finished, 2 to do" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert main(["experiment", str(grid), "--slurm", str(tmp_path / "tiny.sh")]) == 0
    assert "#SBATCH --array=0-1" in (tmp_path / "tiny.sh").read_text()
    assert len((tmp_path / "tiny.commands.txt").read_text().splitlines()) == 2
    assert main(["experiment", str(grid), "repeat.seeds=[0,1]", "--commands", str(tmp_path / "c.txt")]) == 0
    assert len((tmp_path / "c.txt").read_text().splitlines()) == 4
    assert not (tmp_path / "out" / "runs").exists()


def test_bad_grid_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\naxes:\n  clinical:\n    'off': {model.fusoin: none}\n")
    assert main(["experiment", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "model.fusoin" in err and "did you mean fusion" in err


@pytest.mark.parametrize("grid", GRIDS, ids=[g.stem for g in GRIDS])
def test_shipped_grids_expand(grid: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["experiment", str(grid), "--dry-run"]) == 0
    assert "runs, " in capsys.readouterr().out
