"""``synth evaluate`` on the built-in SYNTHETIC set: every section, the usefulness arms and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.synth.evaluation import EVAL_FILE


@pytest.fixture(scope="module")
def evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-eval")
    repo = Path(__file__).resolve().parents[2]
    code = main(["synth", "evaluate", str(trained_run), "--out", str(out), "--usefulness", "--no-progress",
                 f"usefulness.preset={repo / 'configs' / 'smoke.yaml'}"])
    assert code == 0
    return out


def test_every_measure_is_there(evaluated: Path) -> None:
    doc = json.loads((evaluated / EVAL_FILE).read_text())
    fid = doc["fidelity"]
    for key in ("synthetic", "real_held_out", "pixelated_real"):
        assert {"fd", "kid", "precision", "recall", "n"} <= set(fid[key])
        assert 0.0 <= fid[key]["precision"] <= 1.0 and 0.0 <= fid[key]["recall"] <= 1.0
    assert fid["synthetic"]["n"] == fid["real_held_out"]["n"]  # compared at equal set sizes
    assert [s["resolution"] for s in fid["stages"]] == [4, 8, 16]
    codes = doc["codes"]
    for block in ("real_probe_on_real_held_out", "real_probe_on_synthetic", "synthetic_probe_on_synthetic",
                  "q_head_on_synthetic"):
        assert "class" in codes[block] and "age" in codes[block]
    assert len(codes["free_codes_synthetic_probe"]) == 2
    mem = doc["memorisation"]
    assert 0.0 <= mem["fraction_closer_than_any_held_out"] <= 1.0 and len(mem["closest"]) == 12
    useful = doc["usefulness"]
    assert set(useful["arms"]) == {"real", "real_weighted", "real_oversampled", "synthetic"}
    assert useful["arms"]["synthetic"]["synthetic_training_data"] is True
    assert useful["arms"]["real_oversampled"]["synthetic_training_data"] is True
    assert any(t["arm"] == "real_oversampled" and t["reference"] == "real_weighted" for t in useful["tests"])
    assert useful["preset"].endswith("smoke.yaml")  # the report names the classifier preset the arms trained with
    assert "smoke.yaml" in (evaluated / "report.md").read_text()
    lf = doc["label_fidelity"]
    assert lf["classifier"].endswith("real_weighted")  # the class-weighted arm serves as the classifier
    assert 0.0 <= lf["synthetic"]["balanced_accuracy"] <= 1.0 and lf["real_test"]["n"] > 0


def test_arms_have_the_planned_data(evaluated: Path) -> None:
    data = evaluated / "usefulness" / "data"
    real = pd.read_csv(data / "real" / "HAM10000_metadata.csv")
    over = pd.read_csv(data / "real_oversampled" / "HAM10000_metadata.csv")
    syn = pd.read_csv(data / "synthetic" / "HAM10000_metadata.csv")
    assert (over["dx_type"] == "synthetic").sum() > 0 and len(over) > len(real)
    splits = pd.read_csv(data / "synthetic" / "splits.csv")
    train_ids = set(splits.loc[splits["split"] == "train", "image_id"])
    assert all(i.startswith("SYN-") for i in train_ids)  # synthetic only in training
    test_ids = set(splits.loc[splits["split"] == "test", "image_id"])
    assert test_ids == set(pd.read_csv(data / "real" / "splits.csv").query("split == 'test'")["image_id"])
    assert not any(i.startswith("SYN-") for i in test_ids)
    _ = syn


def test_report_has_every_section(evaluated: Path) -> None:
    html = (evaluated / "report.html").read_text()
    for testid in ("table-fidelity", "table-stages", "table-label-fidelity", "table-codes", "table-memorisation",
                   "table-usefulness", "table-usefulness-tests", "fig-stages", "fig-samples", "fig-closest-pairs",
                   "fig-nn"):
        assert testid in html, testid
    assert "SYNTHETIC" in html and "not comparable with published FID" in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    md = (evaluated / "report.md").read_text()
    assert "FD-lite0" in md and "Memorisation" in md


def test_evaluate_without_a_classifier_says_so(trained_run: Path, tmp_path: Path) -> None:
    assert main(["synth", "evaluate", str(trained_run), "--out", str(tmp_path), "--no-progress",
                 "evaluate.n_per_class=6"]) == 0
    doc = json.loads((tmp_path / EVAL_FILE).read_text())
    assert "synthetic" not in doc["label_fidelity"] and doc["label_fidelity"]["linear_probe"]["synthetic"]
    assert any("No independent classifier" in n for n in doc["notes"])
    assert main(["synth", "evaluate", str(trained_run), "--out", str(tmp_path), "bogus=1"]) == 1
