"""Scoring a data split with a run: class-set checks, split selection, TTA, temperature and timing.

Uses a real :class:`lesionlab.runs.Run` around a tiny linear model, so these tests need no trained run and no data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lesionlab.classes import CLASS_CODES
from lesionlab.config import RunConfig
from lesionlab.data.sources import ArrayImages, DataSource
from lesionlab.data.transforms import Preprocessing
from lesionlab.evaluate import predictions as P
from lesionlab.runs import Run


class TinyModel(nn.Module):
    """Mean colour -> logits; deterministic and asymmetric, so a flip changes the input but not the mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8, 7)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x[:, :, :, :].mean(dim=2).flatten(1))  # column means: a horizontal flip reverses them


def _source(n: int = 12, dx: list[str] | None = None, split: list[str] | None = None) -> DataSource:
    rng = np.random.default_rng(0)
    dx = dx or [CLASS_CODES[i % 7] for i in range(n)]
    split = split or ["test"] * n
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "lesion_id": [f"les{i}" for i in range(n)],
                          "dx": dx, "label": [CLASS_CODES.index(d) if d in CLASS_CODES else 99 for d in dx],
                          "age": 50.0, "sex": "male", "site": "back", "split": split})
    pixels = rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)
    return DataSource(name="unit", kind="synthetic", table=table, images=ArrayImages((pixels,), key=f"unit {dx}"),
                      synthetic=True)


def _run(temperature: float | None = None) -> Run:
    prep = Preprocessing(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels / 255
    info = {"temperature": temperature}
    return Run(path=Path("unit-run"), model=TinyModel().eval(), classes=CLASS_CODES, preprocessing=prep,
               meta_encoder=None, info=info, config=RunConfig(), tta=False)


def test_predict_split_table_and_temperature() -> None:
    source = _source(split=["test"] * 8 + ["val"] * 4)
    run = _run()
    frame, logits = P.predict_split(run, source, "test", progress=False, return_logits=True)
    assert list(frame["image_id"]) == [f"img{i}" for i in range(8)] and "lesion_id" in frame
    P.check_predictions(frame)
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(frame[P.proba_columns()].to_numpy(), np.exp(z) / np.exp(z).sum(1, keepdims=True),
                               atol=1e-9)
    hot = P.predict_split(run, source, "test", temperature=0.5, progress=False)
    assert (hot[P.proba_columns()].max(axis=1) > frame[P.proba_columns()].max(axis=1)).all()
    run.info["temperature"] = 0.5  # the run's own fitted temperature is the default
    again = P.predict_split(run, source, "test", progress=False)
    np.testing.assert_allclose(again[P.proba_columns()].to_numpy(), hot[P.proba_columns()].to_numpy())
    flipped = P.predict_split(run, source, "test", tta=True, temperature=1.0, progress=False)
    assert not np.allclose(flipped[P.proba_columns()].to_numpy(), frame[P.proba_columns()].to_numpy())


def test_split_and_class_set_errors() -> None:
    run = _run()
    with pytest.raises(P.PredictionsError, match=r"split 'test' is empty in data source 'unit' \(splits present: "
                                                 r"\['train', 'val'\]\)"):
        P.predict_split(run, _source(4, split=["train", "train", "val", "val"]), "test", progress=False)
    other = _source(3, dx=["mel", "scc", "nv"])
    with pytest.raises(P.PredictionsError, match=r"diagnoses \['scc'\] that are not among the run's classes"):
        P.predict_split(run, other, "test", progress=False)
    declared = _source(3)
    declared.classes = ("mel", "nv", "bcc")
    with pytest.raises(P.PredictionsError, match=r"has classes \['mel', 'nv', 'bcc'\], but the run was trained on"):
        P.check_source_classes(declared, CLASS_CODES)


def test_time_inference_reports_device_and_both_batch_modes() -> None:
    run = _run()
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 10
    t = P.time_inference(run, images, n_single=5, batch_size=4)
    assert t["device"].startswith("cpu (") and "threads" in t["device"]
    assert t["ms_per_image_batch1"] > 0 and t["ms_per_image_batched"] > 0
    assert t["n_batch1"] == 5 and t["n_batched"] == 10 and t["batch_size"] == 4
    with pytest.raises(P.PredictionsError, match="no images"):
        P.time_inference(run, [])
