"""Real HAM10000 (../shared/data, 64 px, DermaMNIST-C split): a short frozen-backbone run and its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from lesionlab.config import load_config
from lesionlab.runs import INFO_FILE, load_run
from lesionlab.train import fit


@pytest.mark.realdata
@pytest.mark.slow
def test_frozen_lite0_on_real_data_beats_chance_and_reloads(shared_data: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [
        "data.source=ham10000", f"data.metadata_csv={shared_data / 'ham10000' / 'HAM10000_metadata.csv'}",
        f"data.image_dirs=[{shared_data / 'ham10000-64' / 'images'}]", "data.split=dermamnist_c",
        "data.image_size=64", "augment.enabled=false", "model.name=lite0", "model.head=linear",
        "train.mode=frozen", "train.epochs=2", "train.lr=0.003", "train.batch_size=64",
        "train.class_weights=balanced", "train.tta=false", f"output_dir={tmp_path}", "name=real"])
    run_dir = fit(cfg, progress=False)
    info = json.loads((run_dir / INFO_FILE).read_text())
    assert info["data"]["synthetic"] is False
    assert info["data"]["n_train"] == 4624 and info["data"]["n_val"] == 452
    assert info["split"]["name"] == "dermamnist_c" and info["split"]["source"] == "dermamnist_c (published)"
    assert info["data"]["source_image_size"] == [64, 64]  # the shared images as stored, for serving full-size uploads
    # seven classes: chance balanced accuracy is 1/7; two epochs of a linear head on ImageNet features do far better
    assert info["best"]["val_balanced_accuracy"] > 0.3
    assert info["best"]["val_macro_auc"] > 0.8

    run = load_run(run_dir)
    from lesionlab.data import cached_images, open_source

    source = open_source(run.config.data)
    val = np.flatnonzero(source.table["split"].to_numpy() == "val")
    images = cached_images(source, (64, 64), progress=False)
    proba = run.predict_proba([images[i] for i in val])
    assert proba.shape == (len(val), 7) and np.allclose(proba.sum(1), 1.0)
    # the reloaded run scores the validation split as training did (same weights, same preprocessing)
    labels = source.table["label"].to_numpy()[val]
    assert balanced_accuracy_score(labels, proba.argmax(1)) == pytest.approx(info["best"]["val_balanced_accuracy"],
                                                                             abs=0.02)
