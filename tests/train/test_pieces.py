"""Loss, class weights, sampler, optimizer, schedule and early stopping, each on tiny inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lesionlab.config import TrainConfig
from lesionlab.train.pieces import (
    EarlyStopping,
    SampleWeightedCrossEntropy,
    class_counts,
    make_loss,
    make_optimizer,
    make_sampler,
    make_scheduler,
    monitor_mode,
)

COUNTS = np.array([10, 20, 40, 0, 10, 400, 20])


def test_class_counts_keeps_empty_classes_and_rejects_bad_labels() -> None:
    assert class_counts([0, 0, 5, 6]).tolist() == [2, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"0\.\.6"):
        class_counts([0, 7])


def test_make_loss_applies_weights_and_smoothing() -> None:
    loss = make_loss(TrainConfig(class_weights="balanced", label_smoothing=0.1), COUNTS)
    assert isinstance(loss, SampleWeightedCrossEntropy)
    assert loss.label_smoothing == pytest.approx(0.1)
    assert loss.weight is not None and loss.weight.shape == (7,)
    plain = make_loss(TrainConfig(), COUNTS)
    assert plain.weight is None and plain.label_smoothing == 0.0
    legacy = make_loss(TrainConfig(class_weights="balanced", label_smoothing=0.1, smoothing_weights="class"), COUNTS)
    assert isinstance(legacy, nn.CrossEntropyLoss) and legacy.label_smoothing == pytest.approx(0.1)
    torch.testing.assert_close(legacy.weight, loss.weight)


def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The definition written out: each sample's smoothed loss times its own class's weight, weighted mean."""
    logp = logits.log_softmax(dim=1)
    target = torch.full_like(logp, eps / logp.shape[1])
    target[torch.arange(len(y)), y] += 1.0 - eps
    per_sample = -(target * logp).sum(dim=1)
    return (w[y] * per_sample).sum() / w[y].sum()


@pytest.mark.parametrize(("weights", "eps"), [("none", 0.0), ("none", 0.1), ("sqrt", 0.0), ("sqrt", 0.1),
                                              ("balanced", 0.2)])
def test_sample_weighted_loss_is_the_weighted_mean_of_smoothed_losses(weights: str, eps: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 7, generator=gen), torch.randint(0, 7, (32,), generator=gen)
    loss = make_loss(TrainConfig(class_weights=weights, label_smoothing=eps), COUNTS + 1)
    w = loss.weight if loss.weight is not None else torch.ones(7)
    torch.testing.assert_close(loss(logits, y), _smoothed_ce(logits, y, w, eps))
    if weights == "none" or eps == 0.0:  # where torch's loss is the same loss
        legacy = make_loss(TrainConfig(class_weights=weights, label_smoothing=eps, smoothing_weights="class"),
                           COUNTS + 1)
        torch.testing.assert_close(loss(logits, y), legacy(logits, y))


@pytest.mark.parametrize(("mode", "best_class"), [("target", 0), ("class", 1)])
def test_a_large_weight_with_smoothing_pulls_torch_s_loss_to_the_rare_class(mode: str, best_class: int) -> None:
    # one sample of the common class 0, class 1 weighted 70 times (a dermatofibroma against a nevus): the logits that
    # minimise the loss should still say class 0; torch's weighting of the smoothing term makes them say class 1
    loss = make_loss(TrainConfig(class_weights="balanced", label_smoothing=0.1, smoothing_weights=mode),
                     np.array([700, 10, 0, 0, 0, 0, 0]))
    logits = torch.zeros(1, 7, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(500):
        opt.zero_grad()
        loss(logits, torch.tensor([0])).backward()
        opt.step()
    assert int(logits.argmax()) == best_class


def test_balanced_sampler_draws_classes_evenly() -> None:
    labels = np.array([0] * 10 + [5] * 990)
    assert make_sampler(TrainConfig(), labels) is None
    sampler = make_sampler(TrainConfig(sampler="balanced"), labels, generator=torch.Generator().manual_seed(0))
    drawn = labels[list(sampler)]
    assert len(drawn) == len(labels)
    assert 0.4 < (drawn == 0).mean() < 0.6


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                           ("sgd", torch.optim.SGD)])
def test_make_optimizer(name: str, cls: type) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 7))
    opt = make_optimizer(TrainConfig(optimizer=name, lr=1e-3, weight_decay=0.05), model)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.05 and decays[id(model[0].bias)] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_default_optimizer_is_the_dermamnist_study_adam() -> None:
    opt = make_optimizer(TrainConfig(), nn.Linear(3, 7))
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_peak_at_lr_and_end_low(schedule: str) -> None:
    cfg = TrainConfig(optimizer="adamw", lr=0.01, schedule=schedule, epochs=4, warmup_fraction=0.25)
    model = nn.Linear(3, 7)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.01, rel=0.05)
    assert lrs[-1] < 0.001
    assert int(np.argmax(lrs)) in range(8, 12)  # peak after a quarter of the steps


def test_no_schedule() -> None:
    assert make_scheduler(TrainConfig(), make_optimizer(TrainConfig(), nn.Linear(2, 2)), 5) is None


@pytest.mark.parametrize(("metric", "mode"), [("balanced_accuracy", "max"), ("val_macro_auc", "max"),
                                              ("nll", "min"), ("val_loss", "min")])
def test_monitor_mode(metric: str, mode: str) -> None:
    assert monitor_mode(metric) == mode


def test_early_stopping_tracks_best_and_stops_after_patience() -> None:
    stop = EarlyStopping(mode="max", patience=2)
    flags = [stop.step(v, e) for e, v in enumerate([0.5, 0.6, 0.55, None, 0.7, 0.6, 0.6])]
    assert flags == [True, True, False, False, True, False, False]
    assert stop.best == pytest.approx(0.7) and stop.best_epoch == 4
    assert stop.should_stop
    again = EarlyStopping()
    again.load_state_dict(stop.state_dict())
    assert again == stop


def test_early_stopping_min_mode_and_no_patience() -> None:
    stop = EarlyStopping(mode="min", patience=None)
    assert stop.step(1.0, 0) and stop.step(0.5, 1) and not stop.step(0.7, 2)
    for e in range(3, 50):
        stop.step(0.9, e)
    assert not stop.should_stop and stop.best_epoch == 1


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_optimizer_makes_the_same_step_as_the_default(name: str) -> None:
    """The engine's fused Adam/AdamW is PyTorch's default update, computed in one kernel."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 7))
    b = copy.deepcopy(a)
    cfg = TrainConfig(optimizer=name, lr=1e-3, weight_decay=0.05)
    fused, loop = make_optimizer(cfg, a), make_optimizer(cfg, b, fused=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x, y = torch.randn(32, 6), torch.randint(0, 7, (32,))
    for _ in range(3):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
