"""Choosing how to compute: channels-last memory format and reduced precision (bf16 autocast on CPU, AMP on CUDA).

``auto`` settings are decided by a quick check on a copy of the model and one real batch, never by assumption:

* channels-last: time forward + backward of the batch both ways (best of ``repeats``); keep the faster.
* bf16 on CPU (grouped/depthwise convolutions stay float32, see :class:`~lesionlab.train.loop.Float32GroupedConv`):
  time it the same way *and* compare eval-mode predictions with float32 on the batch; enable only when
  it is at least ``min_speedup`` faster, the arg-max agrees on at least ``min_agreement`` of the samples and no
  probability moves by more than ``max_prob_diff``. The default is ``off``: a forward-pass check cannot prove
  that a whole training run ends the same (see docs/BENCHMARKS.md for the end-to-end comparison).
* CUDA: AMP with bf16 where the GPU supports it, else fp16 with a gradient scaler; channels-last on.

The result and the measured figures are stored in ``run.json`` under ``training.precision``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lesionlab.config import TrainConfig
from lesionlab.train.loop import Precision, unwrap

MIN_SPEEDUP = 1.10
MIN_AGREEMENT = 0.99
MAX_PROB_DIFF = 0.05


def _time_step(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, dtype: torch.dtype | None,
               channels_last: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one forward + backward (after one warm-up step)."""
    m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    xx = x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x.contiguous()
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        with Precision(x.device, dtype).autocast():
            out = m(xx, meta) if meta is not None else m(xx)
        out.float().logsumexp(dim=1).mean().backward()
        m.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def _probs(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    with Precision(x.device, dtype).autocast():
        out = model(x, meta) if meta is not None else model(x)
    return torch.softmax(out.float(), dim=1)


def check_cpu_precision(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, *, channels_last: str,
                        bf16: str, repeats: int = 2) -> tuple[bool, bool, dict[str, Any]]:
    """Decide channels-last and bf16 for CPU training; returns (channels_last, bf16, report of what was measured).

    Works on a deep copy in train mode, so the real model's weights and BatchNorm statistics are untouched.
    """
    report: dict[str, Any] = {"batch": int(x.shape[0])}
    needs_timing = "auto" in (channels_last, bf16)
    probe = copy.deepcopy(unwrap(model)).train() if needs_timing else None
    use_cl = channels_last == "on"
    if channels_last == "auto":
        assert probe is not None
        t_std = _time_step(probe, x, meta, None, False, repeats)
        t_cl = _time_step(probe, x, meta, None, True, repeats)
        use_cl = t_cl < t_std
        report.update(step_s_contiguous=t_std, step_s_channels_last=t_cl)
    use_bf16 = bf16 == "on"
    if bf16 == "auto":
        assert probe is not None
        t32 = _time_step(probe, x, meta, None, use_cl, repeats)
        t16 = _time_step(probe, x, meta, torch.bfloat16, use_cl, repeats)
        probe.eval()
        p32 = _probs(probe, x, meta, None)
        p16 = _probs(probe, x, meta, torch.bfloat16)
        agreement = float((p32.argmax(1) == p16.argmax(1)).float().mean())
        diff = float((p32 - p16).abs().max())
        speedup = t32 / t16 if t16 > 0 else 0.0
        use_bf16 = speedup >= MIN_SPEEDUP and agreement >= MIN_AGREEMENT and diff <= MAX_PROB_DIFF
        report.update(step_s_fp32=t32, step_s_bf16=t16, bf16_speedup=speedup, bf16_argmax_agreement=agreement,
                      bf16_max_prob_diff=diff)
    report.update(channels_last=use_cl, bf16=use_bf16)
    return use_cl, use_bf16, report


def choose_precision(cfg: TrainConfig, device: torch.device, model: nn.Module | None = None,
                     sample: Callable[[], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
                     images: bool = True) -> tuple[Precision, dict[str, Any]]:
    """The :class:`Precision` for a run. ``sample()`` gives one input batch for the ``auto`` checks; ``images=False``
    (a head on cached embeddings) always computes in float32."""
    if not images:
        # Frozen-backbone embeddings and the head on them stay float32 (bf16 moved Lite0's embeddings by ~3% relative);
        # channels_last, which changes them only by float rounding, speeds up the one embedding pass when asked for.
        cl = cfg.channels_last == "on" and device.type == "cpu"
        return Precision(device, None, cl), {"reason": "head on cached embeddings: float32", "channels_last": cl}
    if device.type == "cuda":
        if cfg.amp == "off":
            dtype = None
        elif cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        cl = cfg.channels_last != "off"
        return Precision(device, dtype, cl, scaler), {"amp": str(dtype), "channels_last": cl}
    if "auto" in (cfg.channels_last, cfg.bf16):
        if model is None or sample is None:
            raise ValueError("an 'auto' precision setting needs the model and a sample batch to check")
        x, meta = sample()
        use_cl, use_bf16, report = check_cpu_precision(model, x.to(device), meta, channels_last=cfg.channels_last,
                                                       bf16=cfg.bf16)
    else:
        use_cl, use_bf16 = cfg.channels_last == "on", cfg.bf16 == "on"
        report = {"channels_last": use_cl, "bf16": use_bf16, "reason": "set in the config"}
    return Precision(device, torch.bfloat16 if use_bf16 else None, use_cl), report
