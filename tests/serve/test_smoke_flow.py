"""A newcomer's path in miniature: train the smoke config, calibrate it, serve it, upload an image, get a heatmap."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesionlab.cli import main
from lesionlab.serve.app import create_app
from lesionlab.serve.samples import jpeg_bytes
from lesionlab.serve.settings import ServeSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_calibrate_serve_predict(tmp_path: Path, real_image_paths: list[Path]) -> None:
    run = tmp_path / "smoke"
    assert main(["train", str(run), "--config", str(REPO / "configs" / "smoke.yaml"), "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--calibrate", "--no-report", "--bootstrap", "50",
                 "--timing-images", "0", "--allow-synthetic"]) == 0  # synthetic data without ../shared
    # an image of the kind this run was trained on: a test image of the synthetic set
    from lesionlab.config import load_config
    from lesionlab.data import open_source

    source = open_source(load_config(REPO / "configs" / "smoke.yaml").data)
    test_row = int((source.table["split"] == "test").to_numpy().argmax())
    image = jpeg_bytes(source.load_image(test_row), quality=95)
    with TestClient(create_app(run, ServeSettings(allow_synthetic=True))) as client:
        body = client.post("/v1/predict", files={"image": ("lesion.jpg", image, "image/jpeg")},
                           data={"age": "45", "sex": "female", "site": "back", "explain": "true"}).json()
        card = client.get("/v1/model").json()
        if real_image_paths:  # a real dermoscopy image is not what a model trained on the synthetic set knows
            real = client.post("/v1/predict", files={"image": ("real.jpg", real_image_paths[0].read_bytes(),
                                                               "image/jpeg")}).json()
            assert real["assessment"]["status"] == "cannot_assess" and real["referral"]["refer"] is None
    assert body["assessment"]["status"] != "cannot_assess", (body["assessment"], body["scope"], body["quality"])
    assert any("SYNTHETIC" in w for w in body["warnings"])
    assert body["referral"]["threshold_source"] == "validation" and body["temperature"] > 0
    assert card["evaluation_source"] == "eval-test" and card["evaluation"]["results"]["accuracy"]["value"] > 0
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap"]["png_base64"])))
    assert heatmap.getchannel("A").getextrema()[1] > 0  # a pretrained backbone gives a non-empty map
    assert main(["export", str(run), "--onnx"]) == 0 and (run / "model.onnx").is_file()
