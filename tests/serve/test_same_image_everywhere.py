"""One image pipeline: the same full-size image gets the same probabilities from every entry point.

A tiny run is trained on SYNTHETIC images stored at 32 px with a 48 px model input, so a 600x450 image must be
squashed to 32 px first (the run's ``Preprocessing.source_size``) and then resized to 48 px. The full-size images
are PNG files (lossless, so every reader decodes the same pixels). Entry points: ``Run.predict_proba``, the service
core, the HTTP API, ``lesionlab predict``, ``lesionlab evaluate`` on a split and on an external ISIC-format set,
ONNX Runtime behind the service (to its parity tolerance), and the training pipeline's own pixels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lesionlab.classes import CLASS_CODES, ISIC_COLUMNS
from lesionlab.cli import main
from lesionlab.config import load_config
from lesionlab.data.images import decode_image
from lesionlab.runs import load_run
from lesionlab.serve.app import create_app
from lesionlab.serve.onnx_export import PARITY_TOL, export_onnx
from lesionlab.serve.samples import synthetic_lesion
from lesionlab.serve.service import Patient, Predictor, Timer
from lesionlab.serve.settings import ServeSettings
from lesionlab.train import fit
from lesionlab.train.plans import image_dataset, prepare_data

pytestmark = pytest.mark.slow

P_COLUMNS = [f"p_{c}" for c in CLASS_CODES]
TEST_IDS = ["ISIC_9000000", "ISIC_9000001", "ISIC_9000002"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("same-image")
    cfg = load_config(None, ["name=same", f"output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
                             "data.source=synthetic", "data.synthetic_n=112", "data.synthetic_size=32",
                             "data.split=lesion", "data.image_size=48", "augment.enabled=false",
                             "model.name=test_efficientnet", "train.mode=scratch", "train.epochs=2",
                             "train.optimizer=adamw", "train.lr=0.003", "train.batch_size=16",
                             "train.channels_last=off"])
    return fit(cfg, progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size PNGs in a HAM10000-layout folder: the three test images, and train/val images around them."""
    root = tmp_path_factory.mktemp("full-size")
    (root / "images").mkdir()
    ids = TEST_IDS + [f"ISIC_900{i:04d}" for i in range(10, 24)]
    rows = []
    for i, image_id in enumerate(ids):
        synthetic_lesion((600, 450), seed=i).save(root / "images" / f"{image_id}.png")
        split = "test" if image_id in TEST_IDS else ("val" if i % 3 == 0 else "train")
        rows.append({"lesion_id": f"L{i}", "image_id": image_id, "dx": CLASS_CODES[i % 7], "dx_type": "histo",
                     "age": 50, "sex": "female", "localization": "back", "split": split})
    table = pd.DataFrame(rows)
    table.drop(columns="split").to_csv(root / "HAM10000_metadata.csv", index=False)
    table[["image_id", "lesion_id", "split"]].to_csv(root / "split.csv", index=False)
    isic = root / "isic"
    isic.mkdir()
    for image_id in TEST_IDS:
        (isic / f"{image_id}.png").write_bytes((root / "images" / f"{image_id}.png").read_bytes())
    pd.DataFrame([{"image": image_id, **{col: float(code == CLASS_CODES[i % 7]) for col, code in ISIC_COLUMNS.items()}}
                  for i, image_id in enumerate(TEST_IDS)]).to_csv(root / "isic.csv", index=False)
    return root


def _paths(folder: Path) -> list[Path]:
    return [folder / "images" / f"{image_id}.png" for image_id in TEST_IDS]


def _table_probs(path: Path, key: str = "image_id") -> np.ndarray:
    frame = pd.read_csv(path, dtype={key: str}, keep_default_na=False).set_index(key)
    return frame.loc[[str(p) for p in frame.index if any(i in str(p) for i in TEST_IDS)], P_COLUMNS].to_numpy(float)


def _response_probs(results: list[dict]) -> np.ndarray:
    return np.array([[c["probability"] for c in r["probabilities"]] for r in results])


def test_every_entry_point_gives_the_same_probabilities(run_dir: Path, folder: Path, tmp_path: Path) -> None:
    run = load_run(run_dir)
    assert run.preprocessing.source_size == (32, 32) and run.preprocessing.size == (48, 48)
    images = [decode_image(p) for p in _paths(folder)]
    reference = run.predict_proba(images)
    # the squash matters: without it the answers differ (what Run.predict_proba gave before one pipeline)
    unsquashed = dataclasses.replace(run, preprocessing=dataclasses.replace(run.preprocessing, source_size=None))
    assert (unsquashed.prepare_images(images) - run.prepare_images(images)).abs().max() > 0.05
    assert np.abs(unsquashed.predict_proba(images) - reference).max() > 1e-6

    settings = ServeSettings(warmup=False, allow_synthetic=True)  # trained on the synthetic set
    served = Predictor(run, settings).predict(images, [Patient()] * 3, TEST_IDS, Timer())
    np.testing.assert_allclose(_response_probs(served), reference, atol=2e-6)

    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in _paths(folder)]
    with TestClient(create_app(run, settings)) as client:
        api = client.post("/v1/predict/batch", files=files).json()["results"]
    np.testing.assert_allclose(_response_probs(api), reference, atol=2e-6)

    assert main(["predict", str(run_dir), *map(str, _paths(folder)), "--out", str(tmp_path / "p.csv"),
                 "--allow-synthetic"]) == 0
    np.testing.assert_allclose(_table_probs(tmp_path / "p.csv", key="image"), reference, atol=2e-6)

    assert main(["evaluate", str(run_dir), "--isic-csv", str(folder / "isic.csv"), "--isic-images",
                 str(folder / "isic"), "--out", str(tmp_path / "isic"), "--bootstrap", "0", "--timing-images", "0",
                 "--audit", "none", "--no-report", "--no-progress", "--allow-synthetic",
                 "--ood-images", "0"]) == 0
    np.testing.assert_allclose(_table_probs(tmp_path / "isic" / "predictions.csv"), reference, atol=1e-6)

    assert main(["evaluate", str(run_dir), "source=ham10000", f"metadata_csv={folder / 'HAM10000_metadata.csv'}",
                 f"split={folder / 'split.csv'}", "--out", str(tmp_path / "split"), "--bootstrap", "0",
                 "--timing-images", "0", "--audit", "none", "--no-report", "--no-progress", "--allow-synthetic",
                 "--ood-images", "0"]) == 0
    np.testing.assert_allclose(_table_probs(tmp_path / "split" / "predictions.csv"), reference, atol=1e-6)

    onnx = export_onnx(run, tmp_path / "model.onnx")
    got = Predictor(run, settings.model_copy(update={"onnx_path": str(onnx)})).predict(
        images, [Patient()] * 3, TEST_IDS, Timer())
    np.testing.assert_allclose(_response_probs(got), reference, atol=PARITY_TOL)


def test_training_reads_the_pixels_the_run_serves(run_dir: Path) -> None:
    run = load_run(run_dir)
    data = prepare_data(run.config, progress=False)
    assert data.source_size == run.preprocessing.source_size
    rows = data.train_rows[:4]
    samples = image_dataset(data, rows, run.preprocessing.normalize)
    for i, row in enumerate(rows):
        expected = run.preprocessing(data.source.load_image(int(row)))
        np.testing.assert_array_equal(samples[i]["image"].numpy(), expected.numpy())
