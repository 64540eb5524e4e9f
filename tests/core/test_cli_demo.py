"""The CLI registers every part's commands, and the demo chain runs end to end on the synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesionlab.cli import build_parser, main
from lesionlab.config import load_config
from lesionlab.core.argparsing import parse_args
from lesionlab.core.errors import LesionlabError
from lesionlab.demo import (
    QUICK_HEADS,
    QUICK_REAL_PRESET,
    REAL_PRESET,
    SYNTHETIC_PRESET,
    choose_head,
    choose_preset,
    headline_lines,
    plan_lines,
)

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
    best = json.loads((Path(summary["run_dir"]) / "run.json").read_text())["best"]["epoch"]
    assert f"best epoch {best + 1} of 3 by validation" in out.stdout  # counted from 1, as `lesionlab train` does
    caches = sorted((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(caches) == 1, caches  # the demo's cache step builds the one training and evaluation read


@pytest.mark.parametrize(("candidates", "majority", "chosen"), [
    # the best mean of validation accuracy and balanced accuracy wins
    ([("plain", 0.85, 0.37), ("sqrt", 0.85, 0.56), ("balanced", 0.80, 0.58)], 0.79, "sqrt"),
    # a head below always-the-common-class accuracy is left out, however balanced
    ([("plain", 0.85, 0.40), ("balanced", 0.60, 0.90)], 0.79, "plain"),
    # unless every head is below it
    ([("plain", 0.70, 0.40), ("balanced", 0.60, 0.70)], 0.79, "balanced"),
])
def test_choose_head_balances_accuracy_and_balanced_accuracy(candidates: list[tuple[str, float, float]],
                                                              majority: float, chosen: str) -> None:
    rows = [{"name": n, "val_accuracy": a, "val_balanced_accuracy": b} for n, a, b in candidates]
    assert choose_head(rows, majority) == chosen


def test_choose_head_needs_candidates() -> None:
    with pytest.raises(ValueError, match="no candidate heads"):
        choose_head([], 0.5)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_demo_says_what_it_will_do_and_how_long(native_bf16: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda: native_bf16)
    full = plan_lines(load_config(REPO / REAL_PRESET), REAL_PRESET, quick=False)
    assert "about 15 minutes" in full[0] and "lesionlab demo --quick" in full[-1]
    assert ("trains in float32, about twice as long" in full[0]) is not native_bf16
    assert "with age, sex and site" in full[1]
    quick = plan_lines(load_config(REPO / QUICK_REAL_PRESET), QUICK_REAL_PRESET, quick=True)
    assert "2-3 minutes" in quick[0] and all(name in quick[1] for name in QUICK_HEADS) and "float32" not in quick[0]
    assert "unknown for a custom preset" in plan_lines(load_config(None), Path("mine.yaml"), quick=False)[0]


def test_quick_figures_stand_beside_the_full_preset() -> None:
    cfg = load_config(REPO / QUICK_REAL_PRESET)
    metrics = {"accuracy": 0.8312, "balanced_accuracy": 0.6, "macro_auc": 0.9, "n": 908}
    lines = headline_lines(metrics, cfg, synthetic=False, quick=True)
    assert lines[0].startswith("test accuracy 0.831, balanced accuracy 0.600")
    assert "accuracy 0.900, balanced accuracy 0.760" in lines[1] and "make demo" in lines[1]
    assert "2 cores of an AMD EPYC; another kind of CPU trains another model" in lines[1]
    assert len(headline_lines(metrics, cfg, synthetic=True, quick=True)) == 1  # no comparison on synthetic data
    assert len(headline_lines(metrics, cfg, synthetic=False, quick=False)) == 1


@pytest.mark.slow
def test_quick_demo_compares_heads_on_validation(tmp_path: Path) -> None:
    """--quick on the synthetic set: every candidate head trained on one embedding cache, one chosen and evaluated."""
    env = {"LESIONLAB_SHARED": str(tmp_path / "absent"), "PATH": str(Path(sys.executable).parent),
           "LESIONLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "lesionlab.cli", "demo", "--quick", "--out", str(tmp_path / "demo"),
                          "--no-progress", "train.epochs=3", "data.synthetic_n=140"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "expected duration on 2 CPU cores: about 2 minutes" in out.stdout.splitlines()[0]
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["quick"] is True and [h["name"] for h in summary["heads"]] == list(QUICK_HEADS)
    chosen = [h for h in summary["heads"] if h["chosen"]]
    assert len(chosen) == 1 and summary["run_dir"] == chosen[0]["run_dir"]
    embeddings = {json.loads((Path(h["run_dir"]) / "run.json").read_text())["training"]["embeddings"]["train"]["path"]
                  for h in summary["heads"]}
    assert len(embeddings) == 1  # computed once, shared by every head
    for line in ("figures: test accuracy", "report:", "serve:   lesionlab serve"):
        assert line in out.stdout
