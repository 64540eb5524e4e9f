"""`lesionlab evaluate` end to end on a small real run directory and the synthetic data source.

The run is a randomly initialised timm test network saved with ``save_run`` (training quality is irrelevant here:
these tests check files, contracts, calibration storage and errors), evaluated on the lesion split of the
synthetic set, on an ISIC-format external set made from the same images, and on a set with a foreign class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lesionlab.classes import CLASS_CODES, ISIC_COLUMNS
from lesionlab.cli import main
from lesionlab.config import load_config
from lesionlab.data.corruptions import CORRUPTION_NAMES
from lesionlab.evaluate.calibration import apply_temperature, fit_referral_threshold, fit_temperature
from lesionlab.evaluate.predictions import arrays, read_predictions

TRAIN_COUNTS = {"akiec": 3, "bcc": 5, "bkl": 11, "df": 1, "mel": 11, "nv": 67, "vasc": 2}
DATA = ["data.source=synthetic", "data.split=lesion", "data.synthetic_n=140", "data.synthetic_size=32",
        "data.image_size=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved run on the synthetic source, with the split hash training would record."""
    from lesionlab.data import open_source, split_hash
    from lesionlab.data.transforms import Preprocessing
    from lesionlab.models import create_model
    from lesionlab.runs import save_run

    cfg = load_config(None, ["model.name=test_efficientnet", "model.pretrained=false", "name=tiny", *DATA])
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    pre = Preprocessing(size=(32, 32), mean=model.data_config["mean"], std=model.data_config["std"])
    source = open_source(cfg.data)
    return save_run(tmp_path_factory.mktemp("runs") / "tiny", model, cfg, pre, None, split_hash(source.table),
                    {"epoch": 1, "balanced_accuracy": 0.2},
                    extra={"status": "complete", "data": {"train_class_counts": TRAIN_COUNTS}})


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_evaluate_writes_predictions_metrics_card_report(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run_dir), "--bootstrap", "50", "--timing-images", "6", "--no-tta"]) == 0
    out = run_dir / "eval-test"
    names = {p.name for p in out.iterdir()}
    assert {"predictions.csv", "metrics.json", "model_card.json", "audit.json", "report.html", "report.md"} <= names
    doc = _json(out / "metrics.json")
    frame = read_predictions(out / "predictions.csv")
    from lesionlab.data import open_source

    table = open_source(load_config(None, DATA).data).table
    test_ids = table.loc[table["split"] == "test", "image_id"].tolist()
    assert doc["n"] == len(frame) and list(frame["image_id"]) == test_ids
    assert doc["data"]["synthetic"] is True and doc["data"]["split"] == "test" and doc["data"]["kind"] == "synthetic"
    assert doc["data"]["split_hash"] == doc["run"]["train_split_hash"] and doc["evaluation"]["warnings"] == []
    assert doc["audit"]["status"] in ("PASS", "WARN") and doc["audit"]["lesion_disjoint"] is True
    assert doc["timing"]["device"].startswith("cpu (") and doc["timing"]["ms_per_image_batch1"] > 0
    assert set(doc["ci"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    assert doc["evaluation"]["tta"] is False and doc["evaluation"]["temperature"] is None
    y, p = arrays(frame)
    assert doc["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)))
    card = _json(out / "model_card.json")
    assert "not a diagnostic device" in card["intended_use"] and card["results"]["accuracy"]["ci95"] is not None
    # both decision rules: the arg-max (the headline) and the arg-max after dividing by the training prior
    rules = doc["decision_rules"]
    assert rules["argmax"]["accuracy"] == pytest.approx(doc["accuracy"])
    prior = np.array([rules["balanced"]["prior"][c] for c in CLASS_CODES])
    assert prior == pytest.approx(np.array([TRAIN_COUNTS[c] for c in CLASS_CODES]) / 100)  # class_weights none
    balanced = np.asarray(CLASS_CODES)[(p / prior).argmax(1)]
    assert list(frame["pred_balanced"]) == list(balanced)
    assert rules["balanced"]["accuracy"] == pytest.approx(float(np.mean(balanced == frame["dx"])))
    assert rules["balanced"]["balanced_accuracy_ci"]["n_boot"] == 50
    assert card["decision_rules"]["balanced"]["prior_source"].startswith("training class counts")
    assert 'data-testid="table-decision-rules"' in (out / "report.html").read_text()
    raw = capsys.readouterr().out
    printed = " ".join(raw.split())  # a long CPU name may still wrap the runtime line
    assert "Balanced accuracy" in printed and "ms/image at batch 1" in printed and "report.html" in printed
    assert "Decision rules" in printed
    # written to no terminal, the tables keep every figure (at rich's 80 columns the decision rules read "0.8…")
    assert "…" not in raw
    acc = f"{rules['balanced']['accuracy']:.3f}"
    assert any(line.lstrip("│ ").startswith("balanced") and acc in line for line in raw.splitlines())


@pytest.mark.slow
def test_calibrate_fits_on_val_and_stores_in_run_json(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval-cal"
    assert main(["evaluate", str(run_dir), "--calibrate", "--target-sensitivity", "0.8", "--bootstrap", "20",
                 "--timing-images", "0", "--audit", "none", "--no-report", "--out", str(out), "--ood-images", "8"]) == 0
    info = _json(run_dir / "run.json")
    t, threshold = info["temperature"], info["referral_threshold"]
    assert t > 0 and 0 <= threshold <= 1
    assert info["calibration"]["split"] == "val" and info["referral"]["target_sensitivity"] == 0.8
    doc = _json(out / "metrics.json")
    assert doc["evaluation"]["temperature"] == t and doc["referral"]["threshold"] == threshold
    assert doc["referral"]["target_sensitivity"] == 0.8 and doc["referral"]["val_sensitivity"] >= 0.8
    assert doc["uncalibrated"]["ece"] is not None and doc["audit"] is None
    # the out-of-scope gate (statistics from train, threshold from val) and the abstention margin (val)
    assert info["scope"]["method"] == "mahalanobis" and info["scope"]["split"] == "val"
    assert info["scope"]["val_false_rejection"] <= 0.05 and (run_dir / "scope.safetensors").is_file()
    assert "scope.safetensors" in info["files"] and info["uncertainty"]["split"] == "val"
    scope = doc["scope"]
    assert scope["gate"]["method"] == "mahalanobis" and 0 <= scope["gate"]["false_rejection"] <= 1
    assert {row["set"] for row in scope["ood"]} == {"photographs", "text", "noise", "flat", "corrupted"}
    assert all(0 <= row["auroc"] <= 1 for row in scope["ood"]) and scope["quality"]["n"] == doc["n"]
    assert _json(out / "model_card.json")["scope"]["gate"]["threshold"] == info["scope"]["threshold"]
    # the degradation check: trained on train against corrupted copies, threshold on the clean validation images
    degradation = info["degradation"]
    assert degradation["split"] == "val" and "degradation.safetensors" in info["files"]
    assert degradation["val_false_rejection"] <= 0.02 + 1e-9 and degradation["n_train"] == info["scope"]["n_train"]
    assert 0 <= degradation["val_detection"] <= 1 and degradation["n_val"] == info["scope"]["n_val"]
    assert set(degradation["val_detection_by_corruption"]) <= set(CORRUPTION_NAMES)
    assert scope["degradation"]["threshold"] == degradation["threshold"]
    assert 0 <= scope["degradation"]["flagged"] <= doc["n"]
    # refit by hand on the validation split: same numbers, so nothing from the test split leaked in
    assert main(["evaluate", str(run_dir), "--split", "val", "--bootstrap", "0", "--timing-images", "0",
                 "--audit", "none", "--no-report", "--out", str(tmp_path / "val"), "--tta"]) == 0
    val = read_predictions(tmp_path / "val" / "predictions.csv")
    y, p_cal = arrays(val)
    raw = apply_temperature(p_cal, 1.0 / t)  # undo the stored temperature
    assert fit_temperature(y, raw)["temperature"] == pytest.approx(t, rel=1e-3)
    assert fit_referral_threshold(y, p_cal, target_sensitivity=0.8)["threshold"] == pytest.approx(threshold,
                                                                                                  rel=1e-4)


def _isic_set(root: Path, extra_column: str | None = None, n: int = 20) -> tuple[Path, Path]:
    from lesionlab.data import generate_synthetic

    meta, pixels = generate_synthetic(n=n, seed=3, size=32)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for image_id, dx, px in zip(meta["image_id"], meta["dx"], pixels, strict=True):
        Image.fromarray(px).save(images / f"{image_id}.png")
        row = {"image": image_id, **{col: float(code == dx) for col, code in ISIC_COLUMNS.items()}}
        if extra_column:
            row[extra_column] = 0.0
        rows.append(row)
    csv = root / "GroundTruth.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, images


@pytest.mark.slow
def test_external_isic_set(run_dir: Path, tmp_path: Path) -> None:
    csv, images = _isic_set(tmp_path / "isic")
    assert main(["evaluate", str(run_dir), "--isic-csv", str(csv), "--isic-images", str(images), "--bootstrap",
                 "20", "--timing-images", "2", "--no-report"]) == 0
    doc = _json(run_dir / "eval-isic" / "metrics.json")
    assert doc["n"] == 20 and doc["data"]["kind"] == "isic" and doc["audit"]["status"] == "n/a"
    assert "ISIC Archive" in doc["data"]["licence"]
    frame = read_predictions(run_dir / "eval-isic" / "predictions.csv")
    assert sorted(frame["image_id"]) == sorted(p.stem for p in images.iterdir())


def test_data_with_another_class_set_is_refused(run_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    csv, images = _isic_set(tmp_path / "isic2019", extra_column="SCC")
    assert main(["evaluate", str(run_dir), "--isic-csv", str(csv), "--isic-images", str(images)]) == 1
    err = capsys.readouterr().err
    assert "lesionlab evaluate: error:" in err and "SCC" in err and str(csv) in err
    assert not (run_dir / "eval-isic2019").exists()


def test_run_with_another_class_order_is_refused(run_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    other = tmp_path / "shuffled"
    shutil.copytree(run_dir, other)
    info = _json(other / "run.json")
    info["classes"] = list(reversed(CLASS_CODES))
    (other / "run.json").write_text(json.dumps(info))
    assert main(["evaluate", str(other)]) == 1
    err = capsys.readouterr().err
    assert "class order" in err and "run.json" in err


def test_isic_flags_must_come_together(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run_dir), "--isic-csv", "gt.csv"]) == 1
    assert "needs both --isic-csv and --isic-images" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.slow
def test_evaluate_on_real_ham10000_test_split(real_untrained_run: Path) -> None:
    """The DermaMNIST-C test split of the shared 64px HAM10000: 908 images, the README's class counts, audit PASS."""
    run = real_untrained_run
    assert main(["evaluate", str(run), "--bootstrap", "50", "--timing-images", "8", "--no-tta"]) == 0
    doc = _json(run / "eval-test" / "metrics.json")
    assert doc["n"] == 908 and doc["data"]["synthetic"] is False
    assert doc["class_counts"] == {"akiec": 26, "bcc": 28, "bkl": 71, "df": 8, "mel": 43, "nv": 719, "vasc": 13}
    assert doc["audit"]["status"] == "PASS" and doc["audit"]["lesion_disjoint"] is True
    assert "CC BY-NC 4.0" in doc["data"]["licence"]
    assert "differs from the run's training split" in doc["evaluation"]["warnings"][0]
    html = (run / "eval-test" / "report.html").read_text()
    assert "CC BY-NC 4.0" in html and "SYNTHETIC" not in html and "may have been seen in training" in html


@pytest.mark.slow
def test_dihedral_test_time_views(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval-d8"
    assert main(["evaluate", str(run_dir), "--tta-views", "dihedral", "--bootstrap", "0", "--timing-images", "0",
                 "--audit", "none", "--no-report", "--out", str(out)]) == 0
    doc = _json(out / "metrics.json")
    assert doc["evaluation"]["tta"] is True and doc["evaluation"]["tta_views"] == "dihedral"
    # the temperature in run.json belongs to the run's own views: refitting it on others would mis-calibrate serving
    assert main(["evaluate", str(run_dir), "--tta-views", "dihedral", "--calibrate", "--out", str(out)]) == 1
    assert "run's own test-time views (flips)" in capsys.readouterr().err
    # views asked for with the views turned off would be silently unused
    assert main(["evaluate", str(run_dir), "--tta-views", "dihedral", "--no-tta", "--out", str(tmp_path / "x")]) == 1
    assert "--tta-views dihedral needs test-time views, which are off (--no-tta)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("override, shown", [
    ("image_size=48", "image_size=48x48 (the run's: 32x32)"),
    ("data.image_size=48", "image_size=48x48 (the run's: 32x32)"),
    ("resize=aspect", "resize=aspect (the run's: square)"),
    ("colour_constancy=shades_of_gray", "colour_constancy=shades_of_gray (the run's: none)"),
])
def test_preprocessing_override_is_refused_not_ignored(run_dir: Path, override: str, shown: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The run's saved preprocessing decides the inputs; a data override that would change it is an error."""
    assert main(["evaluate", str(run_dir), override, "--out", str(run_dir / "eval-refused")]) == 1
    err = capsys.readouterr().err
    assert "the overrides change the run's preprocessing" in err and shown in err and "run.json" in err
    assert not (run_dir / "eval-refused").exists()


def test_config_naming_another_input_size_is_refused(run_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "other.yaml"
    config.write_text("data:\n  source: synthetic\n  split: lesion\n  synthetic_n: 140\n  image_size: 64\n")
    assert main(["evaluate", str(run_dir), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config} (data) change the run's preprocessing" in err and "image_size=64x64 (the run's: 32x32)" in err


@pytest.mark.parametrize("overrides, config_text", [
    (["image_size=32", "split=lesion"], None),  # the run's own value: nothing changes
    (["synthetic_seed=1"], None),  # not preprocessing
    ([], "data:\n  source: synthetic\n  split: lesion\n  synthetic_n: 140\n"),  # a config that names no size
])
def test_data_changes_that_keep_the_preprocessing_are_accepted(run_dir: Path, tmp_path: Path, overrides: list[str],
                                                               config_text: str | None) -> None:
    import argparse

    from lesionlab.evaluate.commands import _data_config

    config = None
    if config_text is not None:
        config = tmp_path / "data.yaml"
        config.write_text(config_text)
    args = argparse.Namespace(run=run_dir, overrides=overrides, old_overrides=[], source=None, config=config)
    cfg = _data_config(args)
    assert cfg is not None and cfg.split == "lesion"
