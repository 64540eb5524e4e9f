"""Tiny real runs for the service tests: a timm test network saved with ``save_run`` and read with ``load_run``.

Two flavours: an image-only run that was never calibrated (so the default referral threshold is in use) and a
metadata-fusion run whose temperature and referral threshold were written to run.json as evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from lesionlab.config import load_config
from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.transforms import Preprocessing
from lesionlab.models import create_model
from lesionlab.runs import save_run, update_run_info

REPO = Path(__file__).resolve().parents[2]


def make_run(root: Path, fusion: str = "none", size: int = 64, resize: str = "square", calibrated: bool = False,
             name: str = "test_efficientnet") -> Path:
    """Save a randomly initialised run (timm's tiny ``test_efficientnet`` unless ``name`` says otherwise), marked
    complete and not synthetic (random weights stand for a trained model: the service's own checks are what these
    tests exercise); calibrated runs get temperature 1.7 and referral threshold 0.3 in run.json, as evaluation
    writes them.
    """
    cfg = load_config(None, [f"model.name={name}", "model.pretrained=false", f"model.fusion={fusion}",
                             f"data.image_size={size}", f"data.resize={resize}", "name=tiny"])
    table = pd.DataFrame({"age": [30.0, 50.0, 70.0], "sex": ["male", "female", "unknown"],
                          "site": ["back", "face", "unknown"], "split": ["train"] * 3})
    encoder = MetadataEncoder.fit(table) if fusion != "none" else None
    torch.manual_seed(0)
    model = create_model(cfg.model, meta_dim=encoder.dim if encoder else 0).eval()
    pre = Preprocessing(size=(size, size), resize=resize, mean=model.data_config["mean"],
                        std=model.data_config["std"])
    run_dir = save_run(root / f"tiny-{name}-{fusion}-{resize}", model, cfg, pre, encoder, "hash0",
                       {"epoch": 1, "balanced_accuracy": 0.2},
                       extra={"data": {"source": "test fixture", "synthetic": False}, "status": "complete"})
    if calibrated:
        update_run_info(run_dir, temperature=1.7, referral_threshold=0.3)
    return run_dir


def gated_run(source: Path, root: Path, threshold: float, uncertainty: float | None = None,
              degradation: float | None = None) -> Path:
    """A copy of a fixture run with a Mahalanobis scope gate (statistics from features of seeded lesion-like
    pictures, the given threshold: -1 rejects everything, 1e12 nothing), optionally an abstention margin, and
    optionally a degradation check (a seeded linear detector; threshold -1e12 flags everything, 1e12 nothing)."""
    import shutil

    import numpy as np

    from lesionlab.core.scope import (
        DEGRADATION_FILE,
        SCOPE_FILE,
        DegradationCheck,
        ScopeGate,
        degradation_arrays,
        fit_arrays,
        save_degradation,
        save_gate_arrays,
    )
    from lesionlab.runs import load_run
    from lesionlab.serve.samples import synthetic_lesion

    run_dir = Path(shutil.copytree(source, root / f"gated-{threshold}-{uncertainty}-{degradation}"))
    feats = load_run(run_dir).predict_features([synthetic_lesion((120, 90), seed=i) for i in range(24)])
    gate = ScopeGate("mahalanobis", threshold, fit_arrays("mahalanobis", feats, np.arange(24) % 2))
    save_gate_arrays(run_dir / SCOPE_FILE, gate)
    fields: dict[str, Any] = {"scope": gate.record()}
    if uncertainty is not None:
        fields["uncertainty"] = {"threshold": uncertainty}
    if degradation is not None:
        coef = np.random.default_rng(0).normal(size=feats.shape[1])
        check = DegradationCheck(degradation, degradation_arrays(feats.mean(0), feats.std(0), coef, 0.0))
        save_degradation(run_dir / DEGRADATION_FILE, check)
        fields["degradation"] = check.record()
    update_run_info(run_dir, **fields)
    return run_dir


def flagged_card(run_dir: Path, site: str = "lower extremity") -> None:
    """Give a run an evaluation's model card in which ``site`` is flagged, as `lesionlab evaluate` writes one."""
    import json

    groups = [{"attribute": "site", "level": "back", "n": 300, "flagged": False, "p_holm": 0.9},
              {"attribute": "site", "level": site, "n": 182, "flagged": True, "p_holm": 0.0378,
               "balanced_accuracy": 0.5, "group_balanced_accuracy_shared": 0.553,
               "rest_balanced_accuracy_shared": 0.814}]
    (run_dir / "eval-test").mkdir()
    (run_dir / "eval-test" / "model_card.json").write_text(json.dumps(
        {"subgroups": {"summary": f"flagged site={site}", "flagged": [f"site={site}"], "groups": groups}}))


@pytest.fixture(scope="session")
def flagged_card_factory() -> Callable[..., None]:
    """:func:`flagged_card`, for tests of the subgroup cautions."""
    return flagged_card


@pytest.fixture(scope="session")
def gated_run_factory() -> Callable[..., Path]:
    """:func:`gated_run`, for tests of the out-of-scope and uncertain states."""
    return gated_run


@pytest.fixture(scope="session")
def run_factory() -> Callable[..., Path]:
    """:func:`make_run` for tests that need another flavour (test modules do not import conftest)."""
    return make_run


@pytest.fixture(scope="session")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image-only, uncalibrated."""
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Concat fusion of age/sex/site, calibrated (temperature and referral threshold in run.json)."""
    return make_run(tmp_path_factory.mktemp("runs"), fusion="concat", calibrated=True)


@pytest.fixture(scope="session")
def real_image_paths() -> list[Path]:
    """The seven full-size HAM10000 images in ../shared/data (empty when absent)."""
    from lesionlab.models.weights import shared_dir

    candidates = [Path(p) for p in (REPO.parent / "shared", shared_dir())]
    for root in candidates:
        paths = sorted((root / "data" / "ham10000-600x450").glob("ISIC_*.jpg"))
        if paths:
            return paths
    return []


