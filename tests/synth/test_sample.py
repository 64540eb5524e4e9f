"""``synth sample``: a HAM10000-layout SYNTHETIC set that every lesionlab command reads and that stays marked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.config import DataConfig
from lesionlab.data import open_source
from lesionlab.synth.codes import CodeRequest
from lesionlab.synth.errors import SynthError
from lesionlab.synth.run import load_synth_run
from lesionlab.synth.sample import METADATA_FILE, sample_to_folder


@pytest.fixture(scope="module")
def sample_set(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "set"
    csv, _ = sample_to_folder(load_synth_run(trained_run), out, 140, balanced=True, seed=3)
    return csv


def test_every_record_is_marked_synthetic(sample_set: Path) -> None:
    frame = pd.read_csv(sample_set)
    assert len(frame) == 140 and set(frame["dx_type"]) == {"synthetic"}
    assert frame["image_id"].str.startswith("SYN-").all() and frame["image_id"].is_unique
    assert (frame["dx"].value_counts() == 20).all()  # balanced over the 7 classes
    assert {"free_0", "free_1", "generator", "seed"} <= set(frame.columns)
    info = json.loads((sample_set.parent / "sample.json").read_text())
    assert info["synthetic"] is True and info["n"] == 140
    assert "NOT dermoscopy" in (sample_set.parent / "README.txt").read_text()
    assert len(list((sample_set.parent / "images").glob("SYN-*.png"))) == 140


def test_the_set_is_a_synthetic_data_source(sample_set: Path) -> None:
    source = open_source(DataConfig(source="ham10000", metadata_csv=sample_set, split="lesion"))
    assert source.synthetic and "SYNTHETIC" in source.describe() and len(source) == 140
    img = np.asarray(source.load_image(0))
    assert img.shape == (16, 16, 3)


def test_data_summary_reads_it(sample_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "summary", "--source", "ham10000", "--metadata", str(sample_set), "--split", "lesion",
                 "--no-progress"])
    assert code == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def test_a_run_trained_on_it_says_synthetic_in_its_model_card(sample_set: Path, tmp_path: Path) -> None:
    """Train the smoke classifier on the sampled set: evaluating it is refused unless allowed, and then run.json,
    metrics and model card say SYNTHETIC."""
    repo = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "cls"
    assert main(["train", str(run_dir), "--config", str(repo / "configs" / "smoke.yaml"),
                 "--no-progress", "data.source=ham10000", f"data.metadata_csv={sample_set}", "data.split=lesion",
                 "data.image_size=32", "train.epochs=2"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["data"]["synthetic"] is True and "SYNTHETIC" in info["data"]["source"]
    assert main(["evaluate", str(run_dir), "--split", "test", "--no-progress"]) == 1  # refused: synthetic training
    assert not (run_dir / "eval-test").exists()
    assert main(["evaluate", str(run_dir), "--split", "test", "--no-progress", "--allow-synthetic"]) == 0
    card = json.loads((run_dir / "eval-test" / "model_card.json").read_text())
    assert "SYNTHETIC" in card["model"]["training_data"]
    assert card["data"]["synthetic"] is True
    assert "SYNTHETIC" in (run_dir / "eval-test" / "report.md").read_text()
    # nor may it judge a generator as the "independent" real-trained classifier
    from lesionlab.runs import RunError
    from lesionlab.synth.codes import labels_from_table
    from lesionlab.synth.evaluation import classifier_scores

    table = pd.DataFrame({"image_id": list("abcd"), "label": [0, 1, 2, 3], "sex": "male", "site": "back",
                          "age": 50.0})
    with pytest.raises(RunError, match="independent classifier"):
        classifier_scores(run_dir, np.zeros((4, 16, 16, 3), np.uint8), labels_from_table(table, 0), 100, 0)


def test_requests_shape_the_codes(trained_run: Path, tmp_path: Path) -> None:
    run = load_synth_run(trained_run)
    csv, _ = sample_to_folder(run, tmp_path / "mel", 12, dx="mel",
                              request=CodeRequest(dx="mel", sex="female", age=60, free=(0.5, -0.5)), seed=1)
    frame = pd.read_csv(csv)
    assert set(frame["dx"]) == {"mel"} and set(frame["sex"]) == {"female"} and set(frame["age"]) == {60.0}
    assert np.allclose(frame["free_0"], 0.5) and np.allclose(frame["free_1"], -0.5)


def test_same_seed_same_images_and_no_silent_overwrite(trained_run: Path, tmp_path: Path) -> None:
    run = load_synth_run(trained_run)
    a, _ = sample_to_folder(run, tmp_path / "a", 10, seed=5)
    b, _ = sample_to_folder(run, tmp_path / "b", 10, seed=5)
    ids = pd.read_csv(a)["image_id"]
    assert ids.tolist() == pd.read_csv(b)["image_id"].tolist()
    for i in ids:
        assert (a.parent / "images" / f"{i}.png").read_bytes() == (b.parent / "images" / f"{i}.png").read_bytes()
    with pytest.raises(SynthError, match="already holds a sample set"):
        sample_to_folder(run, tmp_path / "a", 10, seed=5)
    sample_to_folder(run, tmp_path / "a", 10, seed=6, overwrite=True)
    assert (tmp_path / "a" / METADATA_FILE).is_file()


def test_cli_sample_and_traverse(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["synth", "sample", str(trained_run), "--n", "14", "--balanced", "--out", str(out)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(pd.read_csv(out / METADATA_FILE)) == 14
    assert main(["synth", "sample", str(trained_run), "--n", "3", "--class", "zzz", "--out", str(tmp_path / "x")]) == 1
    assert "unknown diagnosis code" in capsys.readouterr().err
    assert main(["synth", "traverse", str(trained_run), "--out", str(tmp_path / "trav"), "--rows", "2"]) == 0
    page = (tmp_path / "trav" / "traverse.html").read_text()
    for code in ("class", "sex", "site", "age", "free_0", "free_1"):
        assert f'data-testid="traverse-{code}"' in page
        assert (tmp_path / "trav" / f"traverse-{code}.png").is_file()
    assert "SYNTHETIC" in page


def test_unfinished_or_missing_runs_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "sample", str(tmp_path / "nope"), "--n", "2"]) == 1
    assert "not a synthesis run" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "synth.json").write_text(json.dumps({"kind": "lesionlab-synth", "status": "training"}))
    assert main(["synth", "traverse", str(tmp_path / "half")]) == 1
    assert "not finished" in capsys.readouterr().err
