"""The inner loop: seeding, precision settings, one training epoch, and prediction.

Batches are the data layer's sample dicts (``image`` or, for the frozen-backbone cache, ``features``; ``label``;
optional ``meta``). The trained module is called as ``module(x, meta)`` (or ``module(x)`` without metadata), so the
same loop trains a whole :class:`~lesionlab.models.LesionModel`, a head on cached embeddings, or either under DDP.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from lesionlab.runs import mean_logits, view_averaged_logits
from lesionlab.train.mixing import Mixed, mixed_loss
from lesionlab.train.pieces import TrainError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch: every epoch reseeds from (seed, epoch), so a resumed run repeats the same draws."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def worker_init(worker_id: int) -> None:
    """DataLoader workers: derive NumPy/Python seeds from torch's per-worker seed (itself from the loader generator)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def resolve_device(name: str, error: type[Exception] = TrainError) -> torch.device:
    """``auto`` = CUDA when available, else CPU; anything else is passed to :class:`torch.device`. A CUDA device
    where there is none raises ``error`` (the calling package's own)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"train.device={name!r} but CUDA is not available here")
    return device


class Float32GroupedConv(TorchFunctionMode):
    """Inside CPU autocast, run grouped (depthwise) 2-D convolutions in float32, forward and backward.

    Why: oneDNN's bf16 depthwise kernels are slower on CPU than its float32 ones, and depthwise layers are
    memory-bound, so autocast makes MobileNet/EfficientNet-style networks *slower* (Lite0 at 64 px: 166 vs 286
    images/s). Keeping only the grouped convolutions in float32 while the dense ones use bf16 makes it faster than
    float32 instead (324-370 images/s; see docs/BENCHMARKS.md). Dense convolutions and all other ops are untouched.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d and args and args[0].dtype != torch.float32:
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            if groups > 1:
                with torch.autocast(args[0].device.type, enabled=False):
                    return func(args[0].float(), *args[1:], **kwargs)
        return func(*args, **kwargs)


@dataclass
class Precision:
    """How tensors are computed: autocast dtype (or none), memory format, and a gradient scaler for CUDA fp16.

    ``grouped_conv_fp32``: under CPU bf16 autocast, keep grouped convolutions in float32 (:class:`Float32GroupedConv`).
    """

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: Any = None  # torch.amp.GradScaler for CUDA fp16
    grouped_conv_fp32: bool = True

    def autocast(self) -> contextlib.AbstractContextManager:
        """An autocast context (a no-op when running in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        if self.device.type == "cpu" and self.grouped_conv_fp32:
            stack.enter_context(Float32GroupedConv())
        return stack

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move an input batch to the device (channels-last for 4-D images when enabled)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``run.json``."""
        out = {"device": str(self.device), "autocast": str(self.dtype).removeprefix("torch.") if self.dtype else None,
               "channels_last": self.channels_last, "grad_scaler": self.scaler is not None}
        if self.dtype is not None and self.device.type == "cpu":
            out["grouped_conv_fp32"] = self.grouped_conv_fp32
        return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _forward(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
    return model(x, meta) if meta is not None else model(x)


def _batch_inputs(batch: dict[str, Any], precision: Precision) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model input of a batch: ``image``, one cached ``features`` view, or all ``feature_views`` [B, V, ...]."""
    for key in ("feature_views", "features", "image"):
        if key in batch:
            x = batch[key]
            break
    else:
        raise KeyError(f"batch has none of image, features, feature_views (keys: {sorted(batch)})")
    meta = batch.get("meta")
    return precision.to_input(x), (meta.to(precision.device, non_blocking=True) if meta is not None else None)


def train_one_epoch(model: nn.Module, loader: Any, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                    precision: Precision, scheduler: Any = None, grad_clip: float | None = None,
                    max_batches: int | None = None, progress: bool = True, desc: str = "train",
                    on_step: Callable[[], None] | None = None,
                    mix: Callable[[torch.Tensor, torch.Tensor | None], Mixed] | None = None) -> dict[str, Any]:
    """One pass over ``loader`` (the caller sets train mode); returns mean loss, samples, seconds and images/s.

    Also the mean global gradient norm before clipping (``grad_norm``, unscaled where a loss scaler is used) and,
    with ``grad_clip``, the share of steps whose norm exceeded it (``clipped``): whether a clip binds, and an
    exploding or vanishing gradient, can then be read from the run's history.

    ``on_step`` is called after every optimizer step (the weight average's update); ``mix`` mixes each batch
    (MixUp/CutMix, :mod:`lesionlab.train.mixing`) before the forward pass."""
    loss_fn = loss_fn.to(precision.device)
    total, count, steps = 0.0, 0, 0
    norms: list[float] = []
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not progress, unit="batch", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for batch in loader:
            if steps >= n_batches:
                break
            x, meta = _batch_inputs(batch, precision)
            y = batch["label"].to(precision.device, non_blocking=True)
            mixed = mix(x, meta) if mix is not None else Mixed(x, meta, None, 1.0)
            with precision.autocast():
                logits = _forward(model, mixed.x, mixed.meta)
            soft = batch.get("soft")  # distillation targets, when the dataset carries them
            loss = mixed_loss(loss_fn, logits.float(), y, None if soft is None else soft.to(precision.device), mixed)
            if not torch.isfinite(loss):
                raise TrainError(f"training loss became {loss.item()} at step {steps} of {desc}; lower "
                                         "train.lr or turn off reduced precision (train.bf16 / train.amp)")
            optimizer.zero_grad(set_to_none=True)
            scaler = precision.scaler
            if scaler is not None:
                scaler.scale(loss).backward()
                if grad_clip:
                    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
            else:
                loss.backward()
            if grad_clip:
                norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip)))
            else:
                norms.append(_grad_norm(model) / (scaler.get_scale() if scaler is not None else 1.0))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if on_step is not None:
                on_step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    finite = [n for n in norms if math.isfinite(n)]
    return {"loss": total / max(count, 1), "samples": count, "steps": steps, "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else float("nan"),
            "grad_norm": sum(finite) / len(finite) if finite else float("nan"),
            "clipped": sum(n > grad_clip for n in norms) / len(norms) if grad_clip and norms else None}


def _grad_norm(model: nn.Module) -> float:
    """The global L2 norm of the gradients (what ``clip_grad_norm_`` would compare with its limit)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(nn.utils.get_total_norm(grads)) if grads else 0.0


@torch.inference_mode()
def predict(model: nn.Module, loader: Any, *, precision: Precision | None = None, tta: bool = False,
            views: str = "flips", progress: bool = False, desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, K]`` and labels ``[N]`` over a loader, in eval mode.

    ``tta`` averages logits over the test-time ``views`` (flips or dihedral) of image batches; feature batches
    shaped ``[B, V, D]`` (cached views, ``feature_views``) are averaged over their ``V`` views the same way. The
    caller's train/eval mode is restored afterwards.
    """
    precision = precision or Precision(torch.device("cpu"))
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress,
                          unit="batch", dynamic_ncols=True):
            x, meta = _batch_inputs(batch, precision)
            with precision.autocast():
                logits = view_logits(model, x, meta, tta, feature_views="feature_views" in batch, views=views)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros((0, 0), dtype=np.float64), np.zeros(0, dtype=np.int64)
    return torch.cat(probs).double().numpy(), torch.cat(labels).long().numpy()


def view_logits(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, tta: bool,
                feature_views: bool = False, views: str = "flips") -> torch.Tensor:
    """Logits averaged over views: cached feature views (``x`` is ``[B, V, ...]``) or, with ``tta``, the image's
    test-time ``views``."""
    if not feature_views:
        return view_averaged_logits(model, x, meta, tta, views)
    return mean_logits(lambda v, m: _forward(model, v, m), [x[:, v] for v in range(x.shape[1])], meta)
