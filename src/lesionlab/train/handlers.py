"""The training loop's handlers (MONAI's engine/handler split): each owns one concern of an epoch's side effects.

:func:`lesionlab.train.engine.run_epochs` calls every handler's :meth:`Handler.epoch_started`, trains and
validates (filling :class:`TrainState`), then every :meth:`Handler.epoch_completed`, in list order;
:meth:`Handler.completed` once at the end. File writers and printers act on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lesionlab.config import RunConfig
from lesionlab.data.transforms import Preprocessing
from lesionlab.models import freeze_backbone
from lesionlab.runs import INFO_FILE, read_info, save_run, seal_run, write_history
from lesionlab.train import distributed as dist_utils
from lesionlab.train.checkpoint import CHECKPOINT_FILE, rng_state, save_checkpoint, set_rng_state
from lesionlab.train.loop import Precision, unwrap
from lesionlab.train.pieces import EarlyStopping, check_monitor
from lesionlab.train.plans import Plan, PreparedData

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainState:
    """Everything the loop and its handlers share; the handlers read it and fill in their parts."""

    cfg: RunConfig
    run_dir: Path
    model: nn.Module  # the LesionModel (never wrapped)
    plan: Plan
    pre: Preprocessing
    data: PreparedData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision  # how the trained module computes (float32 for a head on cached embeddings)
    stopper: EarlyStopping
    ctx: dist_utils.DistContext = field(default_factory=dist_utils.DistContext)
    run_info: dict[str, Any] = field(default_factory=dict)  # extra run.json fields (data, split, training)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    epoch: int = 0
    module: nn.Module | None = None  # what the training step calls (DDP-wrapped under torchrun)
    backbone_frozen: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)  # this epoch's validation metrics
    row: dict[str, Any] = field(default_factory=dict)  # this epoch's history row
    improved: bool = False
    stopped_early: bool = False
    ema: AveragedModel | None = None  # the weight average (train.ema_decay): validated and saved instead

    @property
    def inference_model(self) -> nn.Module:
        """What validation scores and the run saves: the weight average when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model


class Handler:
    """No-op base: a handler overrides the events it cares about."""

    def epoch_started(self, state: TrainState) -> None:
        """Before the epoch's training step."""

    def epoch_completed(self, state: TrainState) -> None:
        """After training and validation, with ``state.metrics`` and ``state.row`` filled in."""

    def completed(self, state: TrainState) -> None:
        """Once, after the last epoch (or early stopping)."""


class Unfreezing(Handler):
    """``frozen`` keeps the backbone frozen; ``finetune`` trains the head only for ``unfreeze_after`` epochs."""

    def epoch_started(self, state: TrainState) -> None:
        tc = state.cfg.train
        head_only = tc.unfreeze_after is not None and state.epoch < tc.unfreeze_after
        state.backbone_frozen = tc.mode == "frozen" or head_only
        if tc.mode == "finetune":
            freeze_backbone(state.model, state.backbone_frozen)


class DataParallel(Handler):
    """Wraps the trained module (DDP under torchrun, as is otherwise) again whenever the trainable set changes:
    DistributedDataParallel records which parameters need gradients when it is built."""

    def __init__(self, wrap: Callable[[nn.Module, dist_utils.DistContext], nn.Module] = dist_utils.wrap) -> None:
        self.wrap = wrap
        self.phase: bool | None = None

    def epoch_started(self, state: TrainState) -> None:
        if state.module is None or self.phase != state.backbone_frozen:
            state.module = self.wrap(state.plan.module, state.ctx)
            self.phase = state.backbone_frozen


class Stopping(Handler):
    """Early stopping on ``train.monitor``: records whether this epoch is the best; the loop stops when told."""

    def epoch_completed(self, state: TrainState) -> None:
        state.improved = state.stopper.step(state.metrics.get(check_monitor(state.cfg.train.monitor)), state.epoch)


class BestRun(Handler):
    """The run directory's weights and ``run.json``: written for each new best epoch, marked complete at the end."""

    def epoch_completed(self, state: TrainState) -> None:
        if not state.ctx.is_main or not (state.improved or not (state.run_dir / INFO_FILE).is_file()):
            return
        best = {"epoch": state.epoch, "monitor": state.cfg.train.monitor,
                **{f"val_{k}": v for k, v in state.metrics.items()}}
        save_run(state.run_dir, unwrap(state.inference_model), state.cfg, state.pre, state.data.meta_encoder,
                 state.data.split_hash, best, extra=state.run_info)

    def completed(self, state: TrainState) -> None:
        if not state.ctx.is_main:
            return
        info = read_info(state.run_dir)
        info.update(status="complete", epochs_run=len(state.history), stopped_early=bool(state.stopped_early))
        info.setdefault("training", {})["seconds"] = float(sum(r["seconds"] for r in state.history))
        seal_run(state.run_dir, info)


class History(Handler):
    """``history.csv`` and ``history.json``, one row per finished epoch."""

    def epoch_completed(self, state: TrainState) -> None:
        if state.ctx.is_main:
            write_history(state.run_dir, state.history)


class Checkpoint(Handler):
    """``last.ckpt``: everything needed to continue as if never stopped, rewritten after every epoch."""

    def epoch_completed(self, state: TrainState) -> None:
        if not state.ctx.is_main:
            return
        scaler = state.precision.scaler
        save_checkpoint(state.run_dir / CHECKPOINT_FILE, {
            "epoch": state.epoch, "model": unwrap(state.model).state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "early_stopping": state.stopper.state_dict(), "history": state.history, "rng": rng_state(),
            "precision": state.run_info.get("training", {}).get("precision"),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "config": state.cfg.model_dump(mode="json")})

    @staticmethod
    def restore(state: TrainState, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint: optimizer, schedule, scaler, early stopping, history, RNG, next epoch."""
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.scheduler is not None and ckpt.get("scheduler") is not None:
            state.scheduler.load_state_dict(ckpt["scheduler"])
        if state.precision.scaler is not None and ckpt.get("scaler") is not None:
            state.precision.scaler.load_state_dict(ckpt["scaler"])
        state.stopper.load_state_dict(ckpt["early_stopping"])
        if state.ema is not None and ckpt.get("ema") is not None:
            state.ema.load_state_dict(ckpt["ema"])
        state.history = list(ckpt["history"])
        state.start_epoch = int(ckpt["epoch"]) + 1
        set_rng_state(ckpt["rng"])

    def completed(self, state: TrainState) -> None:
        if state.ctx.is_main:  # the best weights are in model.safetensors
            (state.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a" if v is None else str(v)


class Progress(Handler):
    """An epochs bar and one printed line per epoch (rank 0, with ``progress``)."""

    def __init__(self, state: TrainState, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled and state.ctx.is_main
        self.bar = tqdm(total=state.cfg.train.epochs, initial=state.start_epoch, desc="epochs",
                        disable=not self.enabled, unit="epoch", dynamic_ncols=True)

    def epoch_completed(self, state: TrainState) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        row, monitor = state.row, state.cfg.train.monitor
        best = f"  * best {monitor}" if state.improved else ""
        tqdm.write(f"epoch {row['epoch'] + 1}: train loss {_fmt(row['train_loss'])}, val acc "
                   f"{_fmt(row['val_accuracy'])}, bal. acc {_fmt(row['val_balanced_accuracy'])}, macro AUC "
                   f"{_fmt(row['val_macro_auc'])} ({row['seconds']:.1f} s){best}")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=_fmt(state.metrics.get(check_monitor(monitor))),
                             best=f"{_fmt(state.stopper.best)} @{state.stopper.best_epoch + 1}")

    def completed(self, state: TrainState) -> None:
        self.bar.close()


class Callbacks(Handler):
    """The caller's ``cb(epoch, row)``, after the epoch's files are written (rank 0)."""

    def __init__(self, callbacks: Sequence[EpochCallback]) -> None:
        self.callbacks = list(callbacks)

    def epoch_completed(self, state: TrainState) -> None:
        if state.ctx.is_main:
            for cb in self.callbacks:
                cb(state.epoch, state.row)
