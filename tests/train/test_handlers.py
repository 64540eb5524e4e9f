"""The training loop's handlers, each on its own, and the loop that calls them (no data, a 0.1 M-parameter net)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lesionlab.config import load_config
from lesionlab.data.transforms import Preprocessing
from lesionlab.models import create_model
from lesionlab.runs import INFO_FILE, WEIGHTS_FILE, read_info
from lesionlab.train import handlers as H
from lesionlab.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lesionlab.train.engine import run_epochs
from lesionlab.train.loop import Precision
from lesionlab.train.pieces import EarlyStopping
from lesionlab.train.plans import Plan


def make_state(tmp_path: Path, *overrides: str) -> H.TrainState:
    cfg = load_config(None, ["model.name=test_efficientnet", "model.pretrained=false", "train.epochs=4",
                             "train.mode=finetune", *overrides])
    torch.manual_seed(0)
    model = create_model(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return H.TrainState(cfg=cfg, run_dir=tmp_path / "run", model=model, plan=Plan(model, model, [], [], True, None),
                        pre=Preprocessing(size=(32, 32)), data=SimpleNamespace(meta_encoder=None, split_hash="h"),
                        optimizer=optimizer, scheduler=None, precision=Precision(torch.device("cpu")),
                        stopper=EarlyStopping(patience=cfg.train.patience),
                        run_info={"training": {"precision": {"bf16": False}}})


def finish_epoch(state: H.TrainState, epoch: int, bal_acc: float) -> None:
    """What the training step fills in."""
    state.epoch = epoch
    state.metrics = {"accuracy": 0.5, "balanced_accuracy": bal_acc, "macro_auc": 0.6}
    state.row = {"epoch": epoch, "train_loss": 1.0, "val_accuracy": 0.5, "val_balanced_accuracy": bal_acc,
                 "val_macro_auc": 0.6, "seconds": 0.1}
    state.history.append(state.row)


def test_unfreezing_trains_the_head_first(tmp_path: Path) -> None:
    state = make_state(tmp_path, "train.unfreeze_after=2")
    frozen = []
    for epoch in range(4):
        state.epoch = epoch
        H.Unfreezing().epoch_started(state)
        frozen.append((state.backbone_frozen, any(p.requires_grad for p in state.model.backbone.parameters())))
    assert frozen == [(True, False), (True, False), (False, True), (False, True)]


def test_data_parallel_rewraps_only_when_the_trainable_set_changes(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    calls = []
    handler = H.DataParallel(wrap=lambda module, ctx: calls.append(module) or module)
    for frozen in (True, True, False, False):
        state.backbone_frozen = frozen
        handler.epoch_started(state)
    assert len(calls) == 2 and state.module is state.plan.module


def test_stopping_marks_the_best_epoch_and_counts_patience(tmp_path: Path) -> None:
    state = make_state(tmp_path, "train.patience=2")
    improved = []
    for epoch, value in enumerate([0.5, 0.6, 0.55, 0.58]):
        finish_epoch(state, epoch, value)
        H.Stopping().epoch_completed(state)
        improved.append(state.improved)
    assert improved == [True, True, False, False] and state.stopper.should_stop and state.stopper.best_epoch == 1


def test_best_run_writes_on_improvement_and_marks_complete(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    handler = H.BestRun()
    finish_epoch(state, 0, 0.5)
    state.improved = False  # no run.json yet: written anyway, so a run directory always has one
    handler.epoch_completed(state)
    assert read_info(state.run_dir)["best"]["epoch"] == 0
    finish_epoch(state, 1, 0.4)
    handler.epoch_completed(state)
    assert read_info(state.run_dir)["best"]["epoch"] == 0
    finish_epoch(state, 2, 0.7)
    state.improved = True
    handler.epoch_completed(state)
    assert read_info(state.run_dir)["best"] == {"epoch": 2, "monitor": "balanced_accuracy", "val_accuracy": 0.5,
                                                "val_balanced_accuracy": 0.7, "val_macro_auc": 0.6}
    handler.completed(state)
    info = read_info(state.run_dir)
    assert (info["status"], info["epochs_run"], info["stopped_early"]) == ("complete", 3, False)
    assert (state.run_dir / WEIGHTS_FILE).is_file()


def test_history_rewrites_both_files(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    for epoch in range(2):
        finish_epoch(state, epoch, 0.5)
        H.History().epoch_completed(state)
    assert [r["epoch"] for r in json.loads((state.run_dir / "history.json").read_text())] == [0, 1]
    assert (state.run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_checkpoint_saves_restores_and_is_dropped_at_the_end(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.run_dir.mkdir(parents=True)
    finish_epoch(state, 1, 0.6)
    state.stopper.step(0.6, 1)
    H.Checkpoint().epoch_completed(state)
    ckpt = load_checkpoint(state.run_dir / CHECKPOINT_FILE)
    assert ckpt["epoch"] == 1 and ckpt["precision"] == {"bf16": False}
    fresh = make_state(tmp_path)
    H.Checkpoint.restore(fresh, ckpt)
    assert fresh.start_epoch == 2 and fresh.history == state.history and fresh.stopper.best == 0.6
    H.Checkpoint().completed(state)
    assert not (state.run_dir / CHECKPOINT_FILE).exists()


def test_progress_prints_one_line_per_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = make_state(tmp_path)
    progress = H.Progress(state, enabled=True)
    finish_epoch(state, 0, 0.5)
    state.stopper.step(0.5, 0)
    state.improved = True
    progress.epoch_completed(state)
    progress.completed(state)
    out = capsys.readouterr().out
    assert "epoch 1: train loss 1.0000, val acc 0.5000, bal. acc 0.5000" in out and "* best balanced_accuracy" in out


def test_callbacks_get_the_epoch_and_its_row(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    seen: list[tuple[int, dict[str, Any]]] = []
    finish_epoch(state, 3, 0.5)
    H.Callbacks([lambda epoch, row: seen.append((epoch, row))]).epoch_completed(state)
    assert seen == [(3, state.row)]


def test_the_loop_calls_handlers_in_order_and_stops_early(tmp_path: Path) -> None:
    state = make_state(tmp_path, "train.patience=1", "train.epochs=10")
    events: list[str] = []

    class Recorder(H.Handler):
        def epoch_started(self, s: H.TrainState) -> None:
            events.append(f"start {s.epoch}")

        def epoch_completed(self, s: H.TrainState) -> None:
            events.append(f"end {s.epoch}")

        def completed(self, s: H.TrainState) -> None:
            events.append("completed")

    values = iter([0.5, 0.4, 0.9])
    run_epochs(state, [Recorder(), H.Stopping()], lambda s: finish_epoch(s, s.epoch, next(values)))
    assert events == ["start 0", "end 0", "start 1", "end 1", "completed"] and state.stopped_early
    assert not (state.run_dir / INFO_FILE).exists()  # nothing writes files unless a handler does
