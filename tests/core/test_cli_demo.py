"""The CLI registers every part's commands, and the demo chain runs end to end on the synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesionlab.cli import build_parser, main
from lesionlab.core.argparsing import parse_args
from lesionlab.core.errors import LesionlabError
from lesionlab.demo import QUICK_REAL_PRESET, REAL_PRESET, SYNTHETIC_PRESET, choose_preset

REPO = Path(__file__).resolve().parents[2]


def test_every_command_is_registered() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"data", "models", "train", "evaluate", "report", "compare", "experiment", "serve", "export", "predict",
            "demo"} <= set(sub.choices)


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "<command>" in capsys.readouterr().out


def test_project_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert main(["train", "--config", missing]) == 1
    assert "lesionlab train: error: config file not found" in capsys.readouterr().err
    for argv in (["--debug", "train", "--config", missing], ["train", "--config", missing, "--debug"]):
        with pytest.raises(LesionlabError, match="config file not found"):
            main(argv)


def test_anything_else_is_a_bug_and_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: object) -> int:
        raise ZeroDivisionError("a bug, not a user's mistake")

    monkeypatch.setattr("lesionlab.evaluate.commands.cmd_compare", broken)
    parser = build_parser()
    args = parser.parse_args(["compare", "a", "b"])
    assert args.func is broken
    with pytest.raises(ZeroDivisionError):
        main(["compare", "a", "b"])


def test_every_command_accepts_debug_and_overrides_after_options() -> None:
    parser = build_parser()
    for argv in (["models", "--debug"], ["data", "summary", "--debug"], ["experiment", "g.yaml", "--debug"],
                 ["serve", "r", "--debug"]):
        assert parser.parse_args(argv).debug is True
    args = parse_args(parser, ["evaluate", "RUN", "--calibrate", "split=lesion", "--bootstrap", "10", "source=npz"])
    assert args.overrides == ["split=lesion", "source=npz"] and args.calibrate
    with pytest.raises(SystemExit):
        parse_args(parser, ["evaluate", "RUN", "--no-such-option"])


@pytest.mark.parametrize(("argv", "dest", "value", "old"), [
    (["evaluate", "RUN", "--set", "split=lesion"], "old_overrides", ["split=lesion"], "--set"),
    (["train", "--run-dir", "runs/a"], "old_run_dir", Path("runs/a"), "--run-dir"),
    (["serve-bench", "load", "--run", "runs/a"], "old_run", "runs/a", "--run"),
    (["export", "RUN", "--out", "m.onnx"], "out", "m.onnx", "--out"),
])
def test_old_spellings_still_work_and_say_what_replaces_them(argv: list[str], dest: str, value: object, old: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert getattr(build_parser().parse_args(argv), dest) == value
    assert f"{old} is deprecated and will be removed in the next release; use" in capsys.readouterr().err


@pytest.mark.parametrize(("real", "quick", "preset"), [
    (True, False, REAL_PRESET), (True, True, QUICK_REAL_PRESET),
    (False, False, SYNTHETIC_PRESET), (False, True, SYNTHETIC_PRESET),
])
def test_demo_preset_choice(real: bool, quick: bool, preset: Path) -> None:
    assert choose_preset(real, quick) == preset
    assert (REPO / preset).is_file()


@pytest.mark.slow
def test_demo_on_synthetic_data_end_to_end(tmp_path: Path) -> None:
    """No shared data -> the synthetic set, said so; a run, metrics and an HTML report come out."""
    env = {"LESIONLAB_SHARED": str(tmp_path / "absent"), "PATH": str(Path(sys.executable).parent),
           "LESIONLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "lesionlab.cli", "demo", "--out", str(tmp_path / "demo"),
                          "--no-progress", "train.epochs=3", "data.synthetic_n=140"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SYNTHETIC" in out.stdout
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["synthetic"] is True
    assert Path(summary["report"]).is_file() and (Path(summary["run_dir"]) / "run.json").is_file()
    assert Path(summary["study_report"]).is_file() and "SIMULATED readers" in out.stdout
    assert 0.0 <= summary["balanced_accuracy"] <= 1.0
