"""Small pure pieces of the training loop: loss, sampler, optimizer, schedule, early stopping (class weights:
:mod:`lesionlab.core.priors`, where evaluation reads them too).

Each takes the config section and plain inputs, so it can be tested alone and reused by the DDP entry point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel

from lesionlab.classes import NUM_CLASSES
from lesionlab.config import TrainConfig
from lesionlab.core.errors import LesionlabError
from lesionlab.core.metrics import compute_metrics
from lesionlab.core.priors import class_weights, training_prior


class TrainError(LesionlabError, ValueError):
    """A configuration or data combination that cannot be trained; the message names the setting."""


#: Validation metrics where lower is better; every other monitored metric is maximised.
MINIMISED = frozenset({"loss", "nll", "ece", "brier"})
#: Scalar metrics recorded per epoch (as ``val_<name>``) and available to ``train.monitor``.
SELECTION_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "nll", "ece")


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """How many training samples each class has (length ``num_classes``, zeros kept)."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"training labels must be in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}")
    return np.bincount(y, minlength=num_classes)


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics (``None`` without ``decay``).

    Updated after every optimizer step; the decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates
    (as timm's ModelEma does), so the average does not carry the random head of the first steps for hundreds of
    steps. Integer buffers (BatchNorm's batch counter) take the latest value.
    """
    if decay is None:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int) -> None:
        n = float(num_averaged)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - min(float(decay), (1.0 + n) / (10.0 + n)))
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


class SampleWeightedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing where a class weight scales each sample's whole loss.

    The weighted mean ``sum_i w[y_i] * l_i / sum_i w[y_i]`` of the per-sample smoothed losses ``l_i``: a weight acts
    as if the sample were repeated, which is what :func:`lesionlab.core.priors.training_prior` assumes. torch's
    ``CrossEntropyLoss(weight=..., label_smoothing=...)`` instead weights each class's share of the smoothing term by
    that class's weight, so with a dermatofibroma weight 70 times the nevus weight the loss is lowest when a nevus is
    called a dermatofibroma. Without smoothing the two are the same loss.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        if self.weight is None:
            return per_sample.mean()
        w = self.weight.to(per_sample.dtype)[target]
        return (per_sample * w).sum() / w.sum()


class FocalLoss(nn.Module):
    """The focal loss of Lin et al. (ICCV 2017): each sample's (weighted, smoothed) cross-entropy times
    ``(1 - p_t) ** gamma``, so that well-classified samples, mostly nevi here, count less than hard ones.

    ``weighting`` is ``train.smoothing_weights``: ``class`` keeps torch's weighting of the smoothing term, ``target``
    scales a sample's whole loss by its class weight; either way the loss is normalised by the summed weights of the
    batch's targets, so that with ``gamma`` 0 it is exactly the cross-entropy the run would use without it.
    """

    weight: torch.Tensor | None

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 weighting: str = "target") -> None:
        super().__init__()
        if gamma < 0:
            raise TrainError(f"train.focal_gamma must be at least 0, got {gamma}")
        if weighting not in ("class", "target"):
            raise TrainError(f"focal loss weighting must be class or target, got {weighting!r}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.weighting = weighting
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        w_t = torch.ones_like(target, dtype=logits.dtype) if weight is None else weight[target]
        if self.weighting == "class":  # torch's per-sample terms already carry the class weights
            per_sample = F.cross_entropy(logits, target, weight=weight, reduction="none",
                                         label_smoothing=self.label_smoothing)
        else:
            per_sample = w_t * F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        # 1 - p_t from the log-probability (exact for confident samples); kept above 0 so that a gamma under 1, whose
        # factor has an infinite slope at p_t = 1, never sends an infinite or NaN gradient through a certain sample
        log_p_t = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        factor = (-torch.expm1(log_p_t)).clamp(min=1e-12) ** self.gamma
        return (factor.to(per_sample.dtype) * per_sample).sum() / w_t.sum()


class LogitAdjustedLoss(nn.Module):
    """``base(logits + tau * log(prior), target)``: the logit-adjusted loss of Menon et al. (ICLR 2021).

    The loss is minimised when the adjusted logits give ``p(c | x)`` under the training prior, so the model's own
    logits give it under ``prior ** (1 - tau)``: with ``tau`` 1 every class is alike and the arg-max aims at balanced
    accuracy, without weighting any sample more than another. A class absent from training gets no offset (its
    log-prior is undefined; it is never a target).
    """

    offset: torch.Tensor

    def __init__(self, base: nn.Module, prior: Sequence[float] | np.ndarray, tau: float) -> None:
        super().__init__()
        pi = np.asarray(prior, dtype=np.float64)
        offset = np.zeros_like(pi)
        offset[pi > 0] = float(tau) * np.log(pi[pi > 0])
        self.base = base
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(logits + self.offset.to(logits.dtype), target)


def make_loss(cfg: TrainConfig, counts: Sequence[int] | np.ndarray) -> nn.Module:
    """Cross-entropy with optional class weights and label smoothing (combined as ``train.smoothing_weights`` says),
    focal when ``train.focal_gamma`` > 0, logit-adjusted by the prior these give when ``train.logit_adjust`` > 0."""
    w = class_weights(counts, cfg.class_weights)
    weight = torch.as_tensor(w, dtype=torch.float32) if w is not None else None
    if cfg.focal_gamma:
        loss: nn.Module = FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing, cfg.smoothing_weights)
    elif cfg.smoothing_weights == "class":
        loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=float(cfg.label_smoothing))
    else:
        loss = SampleWeightedCrossEntropy(weight, cfg.label_smoothing)
    if cfg.logit_adjust:
        loss = LogitAdjustedLoss(loss, training_prior(counts, cfg.class_weights, cfg.sampler), cfg.logit_adjust)
    return loss


def sample_weights(labels: Sequence[int] | np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-sample weights that make every present class equally likely to be drawn."""
    y = np.asarray(labels, dtype=np.int64)
    counts = class_counts(y, num_classes)
    return 1.0 / counts[y]


def make_sampler(cfg: TrainConfig, labels: Sequence[int] | np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.utils.data.Sampler | None:
    """A class-balanced sampler (with replacement, one epoch = as many draws as samples) or ``None`` (shuffle)."""
    if cfg.sampler == "none":
        return None
    weights = torch.as_tensor(sample_weights(labels), dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                                  generator=generator)


def _no_weight_decay(p: torch.nn.Parameter) -> bool:
    """Biases and normalisation parameters (1-D tensors) are left out of weight decay, as usual."""
    return p.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights only (:func:`_no_weight_decay`)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if _no_weight_decay(p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's layer index (the backbone's stem 0, then timm's coarse stages upwards; everything outside the
    backbone, i.e. head and fusion, on top) and the top index."""
    from timm.models import group_parameters

    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "group_matcher"):
        raise TrainError("train.layer_decay needs a model whose backbone defines timm's layer groups (group_matcher); "
                         f"{type(model).__name__} has no such backbone")
    backbone_ids = group_parameters(backbone, backbone.group_matcher(coarse=True), reverse=True)
    top = max(backbone_ids.values(), default=-1) + 1
    return {name: (backbone_ids.get(name.removeprefix("backbone."), top) if name.startswith("backbone.") else top)
            for name, _ in model.named_parameters()}, top


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict[str, Any]]:
    """:func:`param_groups` split by depth: layer ``i`` of ``top`` trains at ``lr * decay ** (top - i)``.

    Every parameter is registered, frozen or not (as :func:`make_optimizer` needs). Each group keeps its factor as
    ``lr_scale`` (as timm's groups do), from which :func:`make_scheduler` sets its one-cycle peak.
    """
    depths, top = layer_depths(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        depth, no_decay = depths[name], _no_weight_decay(p)
        scale = decay ** (top - depth)
        group = groups.setdefault((depth, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                                      "lr": lr * scale, "lr_scale": scale})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(cfg: TrainConfig, params: nn.Module | Iterable[torch.nn.Parameter], *,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam (the DermaMNIST study's default, lr 1e-4), AdamW or SGD with Nesterov momentum.

    All parameters are registered, frozen or not: a parameter without a gradient is skipped by the optimizer, so
    unfreezing the backbone later needs no new optimizer (and resume restores one state). Adam and AdamW use
    PyTorch's fused kernel where every parameter allows it (``fused=None``): the same update in one pass instead of
    a Python loop over ~150 tensors, 3% of a Lite0 training step on CPU (docs/BENCHMARKS.md); ``fused=False`` gives
    PyTorch's default implementation. With ``train.layer_decay`` the groups are :func:`layer_decay_groups`.
    """
    if cfg.layer_decay is not None:
        if not isinstance(params, nn.Module):
            raise TrainError("train.layer_decay needs the model (its layers), not a list of parameters")
        groups = layer_decay_groups(params, cfg.weight_decay, cfg.lr, cfg.layer_decay)
    else:
        groups = param_groups(params, cfg.weight_decay) if isinstance(params, nn.Module) else list(params)
    if fused is None:
        tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in tensors)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused or None)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule over ``cfg.epochs`` epochs: one-cycle (peak ``lr``), cosine to zero, or none."""
    total = max(1, int(cfg.epochs) * max(1, int(steps_per_epoch)))
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "onecycle":
        peaks = [cfg.lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]  # lr_scale: layer decay
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                   pct_start=cfg.warmup_fraction)
    if cfg.schedule == "cosine":
        warm = round(cfg.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def selection_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro AUC, macro F1, NLL and ECE (``None`` where undefined)."""
    full = compute_metrics(labels, proba)
    return {name: full.get(name) for name in SELECTION_METRICS}


def check_monitor(name: str) -> str:
    """The metric name behind ``train.monitor`` (``val_`` prefix optional), or an error listing the choices."""
    key = name.removeprefix("val_")
    if key not in SELECTION_METRICS:
        raise TrainError(f"train.monitor={name!r} is not a validation metric; choose one of "
                         f"{', '.join(SELECTION_METRICS)}")
    return key


def monitor_mode(metric: str) -> str:
    """``"min"`` for losses and calibration errors, ``"max"`` for accuracies and AUCs."""
    return "min" if metric.removeprefix("val_") in MINIMISED else "max"


@dataclass
class EarlyStopping:
    """Tracks the monitored validation metric: which epoch is best, and when to stop (``patience`` epochs of no gain).

    Its state is a plain dict (``state_dict`` / ``load_state_dict``) so a resumed run stops at the same epoch.
    """

    mode: str = "max"
    patience: int | None = 10
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def improved(self, value: float | None) -> bool:
        """Whether ``value`` beats the best so far (an undefined metric never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float | None, epoch: int) -> bool:
        """Record one epoch's metric; returns True when this epoch is the new best."""
        if self.improved(value):
            self.best = float(value)  # type: ignore[arg-type]
            self.best_epoch = int(epoch)
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)
