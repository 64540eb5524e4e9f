"""The SYNTHETIC set: deterministic, HAM10000-like, labelled synthetic, and learnable above chance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.data import SITES, generate_synthetic, open_ham10000


def test_deterministic_by_seed() -> None:
    m1, x1 = generate_synthetic(60, seed=4, size=24)
    m2, x2 = generate_synthetic(60, seed=4, size=24)
    _, x3 = generate_synthetic(60, seed=5, size=24)
    assert m1.equals(m2) and np.array_equal(x1, x2)
    assert not np.array_equal(x1, x3)


def test_looks_like_ham10000() -> None:
    meta, images = generate_synthetic(700, seed=0, size=32)
    assert images.shape == (700, 32, 32, 3) and images.dtype == np.uint8
    counts = meta["dx"].value_counts()
    assert set(counts.index) == set(CLASS_CODES) and counts.idxmax() == "nv" and counts.min() >= 2
    assert 0.55 < counts["nv"] / 700 < 0.75
    per_lesion = meta.groupby("lesion_id").size()
    assert per_lesion.max() >= 2 and (per_lesion == 1).mean() > 0.6  # some lesions with several images
    assert (meta.groupby("lesion_id")["dx"].nunique() == 1).all()
    assert meta["age"].isna().any() and (meta["sex"] == "unknown").any()
    assert set(meta["localization"]) <= set(SITES)
    assert meta["image_id"].str.fullmatch(r"SYN_\d{5}").all() and (meta["dx_type"] == "synthetic").all()
    assert images.std() > 20  # not blank


def test_written_layout_is_a_labelled_ham10000_folder(tmp_path: Path, write_synthetic: Callable[..., Path]
                                                      ) -> None:
    csv = write_synthetic(tmp_path / "syn", n=30, seed=1, size=20)
    assert csv.name == "HAM10000_metadata.csv" and len(list((tmp_path / "syn" / "images").glob("SYN_*.jpg"))) == 30
    assert "SYNTHETIC" in (tmp_path / "syn" / "README.txt").read_text()
    assert list(pd.read_csv(csv).columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    source = open_ham10000(csv)
    assert source.synthetic and source.name.startswith("SYNTHETIC")


def test_too_small_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="n >= 14"):
        generate_synthetic(10)
    with pytest.raises(ValueError, match="size >= 16"):
        generate_synthetic(100, size=8)


def test_a_simple_model_learns_it_above_chance() -> None:
    """Colour and texture statistics + logistic regression, on held-out lesions: balanced accuracy >> 1/7."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupShuffleSplit

    meta, images = generate_synthetic(700, seed=0, size=32)
    x = images.astype(np.float32) / 255
    centre = x[:, 8:24, 8:24]
    features = np.concatenate([centre.mean(axis=(1, 2)), centre.std(axis=(1, 2)), x.mean(axis=(1, 2)),
                               (centre.mean(axis=3) < 0.35).mean(axis=(1, 2))[:, None]], axis=1)
    y = meta["dx"].map(CLASS_CODES.index).to_numpy()
    train, test = next(GroupShuffleSplit(test_size=0.3, random_state=0).split(features, y, meta["lesion_id"]))
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features[train], y[train])
    assert balanced_accuracy_score(y[test], model.predict(features[test])) > 0.4
