"""``lesionlab data ...`` end to end on a small SYNTHETIC HAM10000-layout folder, and on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lesionlab.cli import main


@pytest.fixture(autouse=True)
def _no_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests point at their own data; `source: auto` must not find the shared copy by accident."""
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("COLUMNS", "160")


def test_summary(synthetic_ham: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "summary", "--metadata", str(synthetic_ham), "split=lesion", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "akiec" in out and "total" in out and "rows without image: 0" in out
    assert "missing clinical metadata" in out


def test_split_then_audit_then_cache(synthetic_ham: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    splits = tmp_path / "splits.csv"
    assert main(["data", "split", "--metadata", str(synthetic_ham), "--out", str(splits), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "lesions shared between splits: 0" in out and "split hash" in out
    frame = pd.read_csv(splits)
    assert list(frame.columns) == ["image_id", "lesion_id", "split"] and len(frame) == 120

    report = tmp_path / "audit.json"
    args = ["data", "audit", "--metadata", str(synthetic_ham), "--split", str(splits), "--json", str(report),
            "--no-progress", "--strict"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "VERDICT PASS" in out
    assert json.loads(report.read_text())["status"] == "PASS"

    cache = tmp_path / "cache"
    assert main(["data", "cache", "--metadata", str(synthetic_ham), "--split", str(splits), "--size", "24x32",
                 "--resize", "aspect", f"cache_dir={cache}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "120 images, 24x32 (aspect)" in out and str(cache) in out


def test_kfold_split(synthetic_ham: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_csv = tmp_path / "folds.csv"
    assert main(["data", "split", "--metadata", str(synthetic_ham), "--out", str(out_csv), "--kfold", "3"]) == 0
    assert set(pd.read_csv(out_csv)["fold"]) == {-1, 0, 1, 2}
    assert "images per fold" in capsys.readouterr().out
    assert main(["data", "summary", "--metadata", str(synthetic_ham), "--split", str(out_csv), "--fold", "2",
                 "--no-progress"]) == 0


def test_cache_benchmark(synthetic_ham: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "cache", "--metadata", str(synthetic_ham), "--benchmark", "--no-progress",
                 "split=lesion", f"cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "decode + resize" in out and "read from cache" in out and "faster than decoding" in out


def test_config_file_and_overrides(synthetic_ham: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_config = tmp_path / "run.yaml"
    run_config.write_text(f"name: x\ndata:\n  metadata_csv: {synthetic_ham}\n  split: dermamnist_c\n")
    assert main(["data", "summary", "--config", str(run_config), "data.split=lesion", "--no-progress"]) == 0
    assert "split lesion" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["data", "summary", "--metadata", "missing/HAM10000_metadata.csv"], "HAM10000 metadata CSV not found"),
    (["data", "summary", "splitt=lesion"], "unknown config key 'splitt'; did you mean split"),
    (["data", "audit", "--npz", "nothing.npz"], "npz file not found: nothing.npz"),
])
def test_errors_are_one_clear_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("lesionlab data: error:") and message in err


def test_no_arguments_is_synthetic_and_says_so(capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "summary", "synthetic_n=60", "--no-progress"]) == 0
    assert "SYNTHETIC data (not dermoscopy)" in capsys.readouterr().out


@pytest.mark.realdata
def test_audit_of_the_dermamnist_map_prints_the_published_figures(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(shared_data.parent))
    assert main(["data", "audit", "--split", "dermamnist", "--no-images"]) == 0
    out = capsys.readouterr().out
    for row in ("train-val ", "train-test", "val-test", "all three"):
        assert row in out
    for figure in ("332", "440", "641", "886", "113", "128", "40", "51 (triples)"):
        assert figure in out
    assert "VERDICT FAIL" in out
