"""The focal loss (train.focal_gamma): the preset's cross-entropy at gamma 0, easy samples down-weighted above it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lesionlab.config import RunConfig, TrainConfig, computation_dict, load_config
from lesionlab.evaluate.decision import run_training_prior
from lesionlab.runs import load_run
from lesionlab.train import fit
from lesionlab.train.ensemble import _shared
from lesionlab.train.pieces import FocalLoss, LogitAdjustedLoss, TrainError, class_weights, make_loss

COUNTS = np.array([30, 50, 110, 10, 100, 600, 15])


@pytest.mark.parametrize(("weights", "smoothing_weights"),
                         [("none", "target"), ("sqrt", "target"), ("sqrt", "class"), ("balanced", "class")])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_the_cross_entropy_the_run_would_use(weights: str, smoothing_weights: str,
                                                           smoothing: float) -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(32, 7) * 3, torch.randint(0, 7, (32,))
    base = make_loss(TrainConfig(class_weights=weights, smoothing_weights=smoothing_weights,
                                 label_smoothing=smoothing), COUNTS)
    w = class_weights(COUNTS, weights)
    focal = FocalLoss(0.0, None if w is None else torch.as_tensor(w, dtype=torch.float32), smoothing,
                      smoothing_weights)
    assert float(focal(logits, y)) == pytest.approx(float(base(logits, y)), rel=1e-6)


def test_one_sample_by_hand() -> None:
    logits, y = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 2)
    assert float(FocalLoss(2.0)(logits, y)) == pytest.approx((1 - p) ** 2 * -math.log(p), rel=1e-6)


def test_easy_samples_count_less_than_hard_ones() -> None:
    easy, hard = torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    y = torch.tensor([0])
    ratio = {name: float(FocalLoss(2.0)(x, y)) / float(F.cross_entropy(x, y)) for name, x in
             (("easy", easy), ("hard", hard))}
    assert ratio["easy"] < 1e-4 < 0.1 < ratio["hard"] < 1.0


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_a_certain_sample_gives_finite_gradients(gamma: float) -> None:
    # a gamma under 1 has an infinite slope at p_true = 1; a sample the model is certain of must not poison the batch
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.3, 0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma, label_smoothing=0.1)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() > 0


def test_weights_normalise_as_torch_does() -> None:
    # the batch's summed target weights divide the loss, for both weightings
    weight = torch.tensor([1.0, 4.0, 1.0])
    logits, y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 1])
    ce = F.cross_entropy(logits, y, reduction="none")
    p_t = torch.softmax(logits, 1)[[0, 1], [0, 1]]
    expected = float(((1 - p_t) * ce * weight[y]).sum() / weight[y].sum())
    for weighting in ("class", "target"):
        assert float(FocalLoss(1.0, weight, 0.0, weighting)(logits, y)) == pytest.approx(expected, rel=1e-6)


def test_make_loss_builds_it_and_logit_adjustment_wraps_it() -> None:
    assert not isinstance(make_loss(TrainConfig(), COUNTS), FocalLoss)
    focal = make_loss(TrainConfig(focal_gamma=2.0, class_weights="sqrt", smoothing_weights="class",
                                  label_smoothing=0.1), COUNTS)
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0 and focal.weighting == "class"
    adjusted = make_loss(TrainConfig(focal_gamma=2.0, logit_adjust=0.5), COUNTS)
    assert isinstance(adjusted, LogitAdjustedLoss) and isinstance(adjusted.base, FocalLoss)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: FocalLoss(-1.0), "focal_gamma"),
    (lambda: FocalLoss(1.0, weighting="mean"), "weighting"),
    (lambda: TrainConfig(focal_gamma=-0.5), "focal_gamma"),
])
def test_bad_settings_are_errors(build: object, match: str) -> None:
    with pytest.raises((TrainError, ValueError), match=match):
        build()  # type: ignore[operator]


def test_run_ids_and_ensembles() -> None:
    assert "focal_gamma" not in computation_dict(RunConfig())["train"]
    assert computation_dict(RunConfig(train=TrainConfig(focal_gamma=2.0)))["train"]["focal_gamma"] == 2.0
    key = "config.train.focal_gamma"
    assert _shared({"config": {"train": {}}}, Path("old-run"))[key] == 0.0  # a run.json from before the option
    assert _shared({"config": {"train": {"focal_gamma": 2.0}}}, Path("new-run"))[key] == 2.0


def test_a_focal_run_trains_and_its_balanced_rule_says_the_prior_is_approximate(tmp_path: Path) -> None:
    over = ["data.source=synthetic", "data.synthetic_n=140", "data.image_size=32", "augment.enabled=false",
            "model.name=test_efficientnet", "model.pretrained=false", "train.mode=scratch", "train.epochs=2",
            "train.batch_size=16", "train.channels_last=off", "train.focal_gamma=2", "train.class_weights=sqrt",
            "train.label_smoothing=0.1", "name=focal", f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = fit(load_config(None, over), progress=False)
    finally:
        torch.set_num_threads(threads)
    run = load_run(run_dir)
    assert run.config.train.focal_gamma == 2.0
    prior, source = run_training_prior(run)
    assert prior is not None and "approximate: a focal loss (gamma 2)" in source
