"""The synthesis path on the real shared HAM10000 data (skipped with a message when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lesionlab.synth.config import load_synth_config
from lesionlab.synth.evaluation import evaluate_synth
from lesionlab.synth.run import load_synth_run
from lesionlab.synth.sample import sample_to_folder
from lesionlab.synth.training import train_synth

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("synth-real")
    cfg = load_synth_config(REPO / "configs" / "synth" / "cpu-32.yaml", [
        f"output_dir={tmp}", "model.resolution=16", "model.fmap_base=256", "model.fmap_max=64",
        "train.fade_kimg=0.5", "train.stable_kimg=0.5", "train.batch_size=32",
        f"data.metadata_csv={shared_data / 'ham10000' / 'HAM10000_metadata.csv'}",
        f"data.image_dirs=[{shared_data / 'ham10000-64' / 'images'}]"])
    return train_synth(cfg, run_dir=tmp / "run", progress=False)


def test_trains_on_the_real_training_split(real_run: Path) -> None:
    info = json.loads((real_run / "synth.json").read_text())
    assert info["data"]["synthetic"] is False and info["data"]["n_train"] == 4624
    assert info["data"]["train_class_counts"]["df"] == 49
    assert info["layout"] == {"sex": True, "site": True, "age": True, "free": 2}
    codes = pd.read_csv(real_run / "codes.csv")
    assert len(codes) == 4624 and codes["image_id"].str.startswith("ISIC_").all()


def test_samples_from_real_codes_are_marked_synthetic(real_run: Path, tmp_path: Path) -> None:
    csv, _ = sample_to_folder(load_synth_run(real_run), tmp_path / "s", 70, balanced=True)
    frame = pd.read_csv(csv)
    assert set(frame["dx_type"]) == {"synthetic"} and (frame["dx"].value_counts() == 10).all()
    assert "trained on HAM10000-format" in (tmp_path / "s" / "README.txt").read_text()


def test_evaluation_references_are_ordered(real_run: Path, tmp_path: Path) -> None:
    """On real data the references must make sense: real vs real is closer than pixelated real."""
    from lesionlab.synth.config import SynthEvalConfig

    doc = evaluate_synth(real_run, out_dir=tmp_path, settings=SynthEvalConfig(n_per_class=30, feature_size=64),
                         progress=False)
    fid = doc["fidelity"]
    assert fid["real_held_out"]["fd"] < fid["pixelated_real"]["fd"]
    assert fid["real_held_out"]["recall"] > fid["pixelated_real"]["recall"]
    assert doc["data"]["n_held_out"] == 452 + 908
    probe = doc["codes"]["real_probe_on_real_held_out"]
    assert probe["class"]["balanced_accuracy"] > 0.3  # Lite0 features separate real classes well above chance
    assert probe["age"]["r"] > 0.2
    assert (tmp_path / "report.html").is_file()
