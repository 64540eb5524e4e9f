"""The logit-adjusted loss (train.logit_adjust) and layer-wise learning-rate decay (train.layer_decay)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from lesionlab.config import ModelConfig, RunConfig, TrainConfig, computation_dict, load_config
from lesionlab.core.priors import PriorError, training_prior
from lesionlab.models import create_model
from lesionlab.runs import WEIGHTS_FILE, load_run
from lesionlab.train import fit
from lesionlab.train.ensemble import _shared
from lesionlab.train.pieces import (
    LogitAdjustedLoss,
    TrainError,
    layer_depths,
    make_loss,
    make_optimizer,
    make_scheduler,
)

COUNTS = np.array([30, 50, 110, 10, 100, 600, 15])


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("weights", "smoothing_weights"), [("none", "target"), ("sqrt", "target"), ("sqrt", "class")])
def test_the_loss_leaves_the_outputs_under_the_prior_the_balanced_rule_reads(tau: float, weights: str,
                                                                             smoothing_weights: str) -> None:
    # one input seen with every training label: the logits that minimise the mean loss are the model's p(c | x)
    # under its training prior, which training_prior must name (the balanced rule divides by it)
    cfg = TrainConfig(class_weights=weights, smoothing_weights=smoothing_weights, logit_adjust=tau)
    loss_fn = make_loss(cfg, COUNTS)
    assert isinstance(loss_fn, LogitAdjustedLoss) == (tau > 0)
    y = torch.as_tensor(np.repeat(np.arange(7), COUNTS))
    z = torch.zeros(1, 7, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(z.expand(len(y), 7), y)
        loss.backward()
        return loss

    opt.step(closure)
    learned = F.softmax(z.detach(), dim=1).numpy()[0]
    assert np.allclose(learned, training_prior(COUNTS, weights, "none", tau), atol=1e-4)


def test_the_adjusted_loss_is_the_base_loss_on_shifted_logits() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(16, 7), torch.randint(0, 7, (16,))
    prior = np.array([0.1, 0.1, 0.2, 0.0, 0.1, 0.4, 0.1])  # a class absent from training gets no offset
    loss = LogitAdjustedLoss(nn.CrossEntropyLoss(), prior, 0.7)
    shift = torch.as_tensor([0.7 * np.log(p) if p > 0 else 0.0 for p in prior], dtype=torch.float32)
    assert torch.isfinite(loss.offset).all()
    assert float(loss(logits, y)) == pytest.approx(float(F.cross_entropy(logits + shift, y)), rel=1e-6)


def test_training_prior_under_logit_adjustment() -> None:
    counts = np.array([10, 40, 0, 50])
    assert np.allclose(training_prior(counts, logit_adjust=1.0), [1 / 3, 1 / 3, 0, 1 / 3])
    half = np.sqrt(counts) / np.sqrt(counts).sum()
    assert np.allclose(training_prior(counts, logit_adjust=0.5), half)
    assert np.allclose(training_prior(counts, "balanced", logit_adjust=0.5), [1 / 3, 1 / 3, 0, 1 / 3])
    with pytest.raises(PriorError, match="logit_adjust"):
        training_prior(counts, logit_adjust=1.5)


def _lite0() -> nn.Module:
    return create_model(ModelConfig(name="lite0", pretrained=False, fusion="none"))


def test_layer_decay_gives_each_stage_its_share_of_the_learning_rate() -> None:
    model = _lite0()
    depths, top = layer_depths(model)
    assert depths["backbone.conv_stem.weight"] == 0 and depths["head.classifier.weight"] == top
    assert depths["backbone.blocks.0.0.conv_dw.weight"] < depths["backbone.blocks.6.0.conv_pw.weight"] < top
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="onecycle", layer_decay=0.8)
    opt = make_optimizer(cfg, model)
    registered = [p for g in opt.param_groups for p in g["params"]]
    assert len(registered) == len({id(p) for p in registered}) == len(list(model.parameters()))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = by_param[id(p)]
        assert group["lr_scale"] == pytest.approx(0.8 ** (top - depths[name]))
        assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.05)
    make_scheduler(cfg, opt, steps_per_epoch=5)
    # one-cycle: each group peaks at its own share and starts at that / 25
    for group in opt.param_groups:
        assert group["max_lr"] == pytest.approx(1e-3 * group["lr_scale"])
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] / 25)


def test_without_layer_decay_every_group_peaks_at_lr() -> None:
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="onecycle")
    opt = make_optimizer(cfg, _lite0())
    make_scheduler(cfg, opt, steps_per_epoch=5)
    assert len(opt.param_groups) == 2 and all(g["max_lr"] == 1e-3 for g in opt.param_groups)


def test_layer_decay_needs_layers() -> None:
    cfg = TrainConfig(layer_decay=0.8)
    with pytest.raises(TrainError, match="layer_decay"):
        make_optimizer(cfg, nn.Linear(4, 7))
    with pytest.raises(TrainError, match="layer_decay"):
        make_optimizer(cfg, list(_lite0().parameters()))


def test_the_options_change_run_ids_only_when_on() -> None:
    off = computation_dict(RunConfig())
    assert "logit_adjust" not in off["train"] and "layer_decay" not in off["train"]
    on = computation_dict(RunConfig(train=TrainConfig(logit_adjust=1.0, layer_decay=0.8)))
    assert on["train"]["logit_adjust"] == 1.0 and on["train"]["layer_decay"] == 0.8


def test_an_ensemble_reads_a_missing_logit_adjust_as_off(tmp_path: Path) -> None:
    key = "config.train.logit_adjust"
    assert _shared({"config": {"train": {}}}, tmp_path)[key] == 0.0
    assert _shared({"config": {"train": {"logit_adjust": 1.0}}}, tmp_path)[key] == 1.0


class Killed(Exception):
    """Stands in for a kill signal after an epoch's checkpoint was written."""


def test_a_run_with_both_options_trains_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    # the per-layer groups and their one-cycle peaks must come back from the checkpoint as they were
    over = ["data.source=synthetic", "data.synthetic_n=140", "data.image_size=32", "augment.enabled=false",
            "model.name=test_efficientnet", "model.pretrained=false", "train.mode=scratch", "train.epochs=3",
            "train.batch_size=16", "train.optimizer=adamw", "train.lr=0.003", "train.schedule=onecycle",
            "train.channels_last=off", "train.layer_decay=0.7", "train.logit_adjust=1.0",
            f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is faster on 2 busy cores
    try:
        full = fit(load_config(None, [*over, "name=full"]), progress=False)

        def kill_after_first_epoch(epoch: int, row: dict) -> None:
            if epoch == 0:
                raise Killed

        cfg = load_config(None, [*over, "name=killed"])
        with pytest.raises(Killed):
            fit(cfg, progress=False, callbacks=[kill_after_first_epoch])
        resumed = fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(full / WEIGHTS_FILE)), load_file(str(resumed / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lrs = [row["lr"] for row in json.loads((full / "history.json").read_text())]
    assert len(lrs) == 3 and len(set(lrs)) == 3  # the schedule ran
    assert load_run(full).config.train.logit_adjust == 1.0
