"""Fault injection: ``lesionlab train`` SIGKILLed at several points (before the first epoch, mid-epoch, right after
a checkpoint) and re-run each time ends with exactly the weights and history of an uninterrupted run, and leaves no
temporary file behind. Bounded: at most ``MAX_KILLS`` kills, each attempt under a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CONFIG = {"data": {"source": "synthetic", "synthetic_n": 112, "synthetic_size": 32, "image_size": 32},
          "augment": {"enabled": True},
          "model": {"name": "test_efficientnet", "pretrained": False},
          "train": {"mode": "scratch", "epochs": 4, "batch_size": 16, "eval_batch_size": 64, "optimizer": "adamw",
                    "lr": 0.003, "schedule": "onecycle", "sampler": "balanced", "channels_last": "auto"}}
MAX_KILLS = 4
ATTEMPT_TIMEOUT = 120.0


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LESIONLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def _train(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return subprocess.Popen([sys.executable, "-m", "lesionlab.cli", "train", str(run_dir), "--config", str(config),
                             "--no-progress"], env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _epochs_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def _kill_when(proc: subprocess.Popen, run_dir: Path, epochs: int, delay: float) -> bool:
    """SIGKILL once ``epochs`` epochs are on disk, ``delay`` seconds later; False if training ended first."""
    deadline = time.monotonic() + ATTEMPT_TIMEOUT
    while _epochs_done(run_dir) < epochs:
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training made no progress to epoch {epochs} within {ATTEMPT_TIMEOUT:g} s")
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def _history(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_images_per_s")} for r in rows]


def test_sigkill_at_several_points_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    proc = _train(tmp_path, reference)
    assert proc.wait(timeout=ATTEMPT_TIMEOUT) == 0, proc.stderr.read().decode() if proc.stderr else ""

    run_dir = tmp_path / "killed"
    points = [(0, 0.5), (1, 0.0), (2, 0.3), (3, 0.05)][:MAX_KILLS]  # (epochs on disk, then wait this long)
    kills = 0
    for epochs, delay in points:
        proc = _train(tmp_path, run_dir)
        kills += _kill_when(proc, run_dir, epochs, delay)
        if proc.poll() is None:
            proc.wait(timeout=ATTEMPT_TIMEOUT)
    assert kills >= 3, "the kill points were all missed: training ended first"
    proc = _train(tmp_path, run_dir)
    assert proc.wait(timeout=ATTEMPT_TIMEOUT) == 0, proc.stderr.read().decode() if proc.stderr else ""

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["epochs_run"] == 4
    assert info["config"]["train"]["channels_last"] in ("on", "off")  # resolved once, recorded
    assert _history(run_dir) == _history(reference)
    a, b = load_file(str(run_dir / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name == "last.ckpt"]
    assert leftovers == []
