"""``lesionlab train`` from the command line, and every shipped config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lesionlab.cli import main
from lesionlab.config import load_config
from lesionlab.core.manifest import file_manifest
from lesionlab.runs import INFO_FILE, TRANSIENT_FILES, load_run

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_train_smoke_config_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "smoke"
    rc = main(["train", str(run_dir), "--config", str(REPO / "configs" / "smoke.yaml"), "train.epochs=3",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "best epoch" in out and str(run_dir) in out and "balanced_accuracy" in out
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["data"]["synthetic"] is True
    saved = load_config(run_dir / "config.yaml")
    assert saved.train.epochs == 3 and saved.train.mode == "frozen"
    # --resume with only the run directory reads the saved config; the run is complete, so nothing is retrained
    assert main(["train", str(run_dir), "--resume", "--no-progress"]) == 0
    # the old spelling still works for one release, and says what replaces it
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert "--run-dir is deprecated" in capsys.readouterr().err


def test_a_run_saved_before_smoothing_weights_existed_resumes_as_it_began(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    assert main(["train", str(run_dir), "--config", str(REPO / "configs" / "smoke.yaml"), "train.epochs=1",
                 "train.label_smoothing=0.1", "train.smoothing_weights=class", "--no-progress"]) == 0
    # what a run directory written before the option existed holds: no smoothing_weights key anywhere
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"].pop("smoothing_weights") == "class"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    info = json.loads((run_dir / "run.json").read_text())
    del info["config"]["train"]["smoothing_weights"]
    info["files"] = file_manifest(run_dir, exclude=(INFO_FILE, *TRANSIENT_FILES))
    (run_dir / "run.json").write_text(json.dumps(info))
    assert main(["train", str(run_dir), "--resume", "--no-progress"]) == 0  # torch's weighting, not refused
    assert load_run(run_dir).config.train.smoothing_weights == "class"  # and a loaded run says so
    assert main(["train", str(run_dir), "--resume", "train.smoothing_weights=target", "--no-progress"]) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["train.lrr=1"], "unknown config key 'train.lrr'; did you mean lr"),
    (["train.epochs"], "not of the form key=value"),
    (["--resume"], "--resume without --config needs the run directory"),
    (["runs/a", "runs/b"], "one run directory at most"),
])
def test_cli_errors_are_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err
