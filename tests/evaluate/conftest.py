"""Synthetic predictions and evaluation directories shared by the evaluation tests (no model, no data needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.core.card import LICENCES
from lesionlab.core.io import atomic_write_json
from lesionlab.evaluate.evaluation import metrics_document
from lesionlab.evaluate.predictions import predictions_frame, write_predictions

PRIORS = [0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02]  # roughly HAM10000's class shares


def synthetic_predictions(n: int = 300, skill: float = 2.5, seed: int = 0, absent: tuple[int, ...] = ()
                          ) -> pd.DataFrame:
    """A predictions table with every class present (unless listed in ``absent``) and a model of given skill."""
    rng = np.random.default_rng(seed)
    keep = [k for k in range(7) if k not in absent]
    prior = np.asarray([PRIORS[k] for k in keep])
    y = np.r_[keep, rng.choice(keep, n - len(keep), p=prior / prior.sum())]
    z = rng.normal(size=(n, 7)) + skill * np.eye(7)[y]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return predictions_frame([f"ISIC_{i:07d}" for i in range(n)], y, p)


def write_eval_dir(path: Path, frame: pd.DataFrame, synthetic: bool = False, bootstrap: int = 200) -> Path:
    """An evaluation directory as ``lesionlab evaluate`` writes it, from a predictions table."""
    from lesionlab.evaluate.predictions import arrays

    y, p = arrays(frame)
    context = {
        "run": {"name": "unit-run", "path": "runs/unit-run", "model": "tf_efficientnet_lite0", "parameters": 3371623,
                "head": "linear", "fusion": "none", "created": "2026-01-01T00:00:00+00:00",
                "training_data": "synthetic source, split 'lesion'"},
        "data": {"source": "synthetic" if synthetic else "ham10000", "synthetic": synthetic, "split": "test",
                 "split_name": "dermamnist_c", "split_hash": "0123abcd",
                 "licence": LICENCES["synthetic" if synthetic else "ham10000"]},
        "audit": {"status": "PASS", "verdict": "no lesion in two splits", "images_hashed": 10},
        "evaluation": {"tta": True, "temperature": 1.25, "temperature_source": "run.json", "created": "now"},
        "timing": {"device": "cpu (test CPU, 2 threads)", "tta": True, "ms_per_image_batch1": 4.2, "n_batch1": 8,
                   "ms_per_image_batched": 1.3, "batch_size": 64, "n_batched": len(y), "torch": "2"},
    }
    doc = metrics_document(y, p, p, bootstrap=bootstrap, referral_threshold=0.3, referral_source="run.json",
                           context=context)
    path.mkdir(parents=True, exist_ok=True)
    write_predictions(frame, path / "predictions.csv")
    atomic_write_json(path / "metrics.json", doc)
    return path


@pytest.fixture
def make_eval_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_eval_dir(name, **synthetic_predictions kwargs)`` -> evaluation directory."""

    def make(name: str = "eval-test", synthetic: bool = False, **kwargs: object) -> Path:
        return write_eval_dir(tmp_path / name, synthetic_predictions(**kwargs), synthetic=synthetic)

    return make


@pytest.fixture
def synth() -> Callable[..., pd.DataFrame]:
    """:func:`synthetic_predictions` as a fixture (test modules cannot import conftest in importlib mode)."""
    return synthetic_predictions


@pytest.fixture
def real_untrained_run(shared_data: Path, tmp_path: Path) -> Path:
    """A randomly initialised test network saved as a run on the shared 64 px HAM10000 (DermaMNIST-C split)."""
    import torch

    from lesionlab.config import load_config
    from lesionlab.data.transforms import Preprocessing
    from lesionlab.models import create_model
    from lesionlab.runs import save_run

    data = ["data.source=ham10000", f"data.metadata_csv={shared_data / 'ham10000' / 'HAM10000_metadata.csv'}",
            f"data.image_dirs=[{shared_data / 'ham10000-64' / 'images'}]", "data.split=dermamnist_c",
            "data.image_size=64"]
    cfg = load_config(None, ["model.name=test_efficientnet", "model.pretrained=false", "name=real", *data])
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    pre = Preprocessing(size=(64, 64), mean=model.data_config["mean"], std=model.data_config["std"])
    return save_run(tmp_path / "real", model, cfg, pre, None, "not-the-eval-split", {"epoch": 0},
                    extra={"status": "complete"})
