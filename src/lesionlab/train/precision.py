"""Choosing how to compute: channels-last memory format and reduced precision (bf16 autocast on CPU, AMP on CUDA).

``auto`` settings are resolved once, when a run starts, by rules that depend on the model and the machine's
instruction set, never on a timing (a timing depends on what else the machine is doing, so two runs with the same
seed could compute different models). The resolved values (``on``/``off``) are written into the run's config, so a
resumed or repeated run computes exactly as the first:

* channels-last: on for a convolutional network (oneDNN's channels-last kernels are the fast ones on CPU and CUDA);
* bf16 on CPU (grouped/depthwise convolutions stay float32, see :class:`~lesionlab.train.loop.Float32GroupedConv`):
  on only where the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX) *and* eval-mode predictions of one real
  batch agree with float32: the arg-max on at least ``min_agreement`` of the samples, no probability moving by more
  than ``max_prob_diff`` (a deterministic comparison). The default is ``off``: a forward-pass check cannot prove
  that a whole training run ends the same (see docs/BENCHMARKS.md for the end-to-end comparison). ``on`` (the CPU
  presets) means bf16 where the CPU has it natively: elsewhere oneDNN emulates it, several times *slower* than
  float32 (4.0x for a Lite0 training step at 128 px on an AVX2-only CPU, docs/BENCHMARKS.md), so the run computes
  in float32 and says so (a warning, and ``bf16_native: false`` with the reason in the report);
* CUDA: AMP with bf16 where the GPU supports it, else fp16 with a gradient scaler; channels-last on.

What was decided, and why, is stored in ``run.json`` under ``training.precision``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lesionlab.config import TrainConfig
from lesionlab.train.loop import Precision, unwrap

MIN_AGREEMENT = 0.99
MAX_PROB_DIFF = 0.05

log = logging.getLogger(__name__)


def no_native_bf16(setting: str, off: str) -> str:
    """The warning for a bf16 setting that this CPU cannot honour at speed (``off``: how to silence it)."""
    return (f"{setting}, but this CPU has no native bf16 arithmetic (AVX-512 BF16 or AMX): emulated bf16 is several "
            f"times slower than float32 here, so this run computes in float32 (set {off} to silence this)")


@torch.inference_mode()
def _probs(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    with Precision(x.device, dtype).autocast():
        out = model(x, meta) if meta is not None else model(x)
    return torch.softmax(out.float(), dim=1)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _requested_bf16(bf16: str, report: dict[str, Any]) -> bool:
    """``train.bf16=on`` honoured where the CPU computes bf16 natively; elsewhere float32, noted in ``report``."""
    if bf16 != "on":
        return False
    if cpu_has_native_bf16():
        return True
    message = no_native_bf16("train.bf16=on", "train.bf16=off")
    report.update(bf16_native=False, bf16_fallback=message)
    log.warning(message)
    return False


def has_convolutions(model: nn.Module) -> bool:
    """Whether the network convolves images (channels-last only changes convolution kernels)."""
    return any(isinstance(m, nn.Conv2d) for m in unwrap(model).modules())


def check_cpu_precision(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, *, channels_last: str,
                        bf16: str) -> tuple[bool, bool, dict[str, Any]]:
    """Resolve channels-last and bf16 for CPU training by the rules of the module docstring; returns
    (channels_last, bf16, report). The agreement check runs on a deep copy: the real model is untouched."""
    report: dict[str, Any] = {"batch": int(x.shape[0])}
    use_cl = channels_last == "on" or (channels_last == "auto" and has_convolutions(model))
    if channels_last == "auto":
        report["channels_last_rule"] = "on for a convolutional network" if use_cl else "off: no convolutions"
    use_bf16 = _requested_bf16(bf16, report)
    if bf16 == "auto":
        native = cpu_has_native_bf16()
        report["bf16_native"] = native
        if native:
            probe = copy.deepcopy(unwrap(model)).eval()
            p32 = _probs(probe, x, meta, None)
            p16 = _probs(probe, x, meta, torch.bfloat16)
            agreement = float((p32.argmax(1) == p16.argmax(1)).float().mean())
            diff = float((p32 - p16).abs().max())
            use_bf16 = agreement >= MIN_AGREEMENT and diff <= MAX_PROB_DIFF
            report.update(bf16_argmax_agreement=agreement, bf16_max_prob_diff=diff)
    report.update(channels_last=use_cl, bf16=use_bf16)
    return use_cl, use_bf16, report


def choose_precision(cfg: TrainConfig, device: torch.device, model: nn.Module | None = None,
                     sample: Callable[[], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
                     images: bool = True) -> tuple[Precision, dict[str, Any]]:
    """The :class:`Precision` for a run. ``sample()`` gives one input batch for the ``auto`` bf16 check;
    ``images=False`` (a head on cached embeddings) always computes in float32."""
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
        report["reason"] = "auto resolved by rule (no timing); recorded in the run's config"
    else:
        report = {"reason": "set in the config"}
        use_cl, use_bf16 = cfg.channels_last == "on", _requested_bf16(cfg.bf16, report)
        report.update(channels_last=use_cl, bf16=use_bf16)
    return Precision(device, torch.bfloat16 if use_bf16 else None, use_cl), report
