"""Data-parallel training: two gloo processes on CPU launched by torchrun, on a tiny SYNTHETIC config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lesionlab.runs import INFO_FILE, load_run

OVERRIDES = ["data.source=synthetic", "data.synthetic_n=140", "data.image_size=32", "augment.enabled=false",
             "model.name=test_efficientnet", "train.mode=scratch", "train.epochs=2", "train.batch_size=8",
             "train.optimizer=adamw", "train.lr=0.003", "train.channels_last=off"]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_one_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LESIONLAB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lesionlab.train.ddp", str(run_dir), *OVERRIDES, "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((run_dir / INFO_FILE).read_text())
    assert info["status"] == "complete"
    assert info["training"]["world_size"] == 2
    rows = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    # DistributedSampler: each rank trains on its half of the training set (batches of 8 per rank)
    per_rank = info["data"]["n_train"] // 2
    assert all(r["train_steps"] == per_rank // 8 for r in rows)
    assert all(r["train_samples"] == 2 * 8 * (per_rank // 8) for r in rows)
    assert load_run(run_dir).predict_proba(__import__("torch").zeros(1, 3, 32, 32)).shape == (1, 7)
    assert done.stdout.count("best epoch") == 1  # only rank 0 prints the summary
