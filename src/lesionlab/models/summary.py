"""Size and cost of each model (parameters, FLOPs at an input size), computed on the meta device.

The meta device holds shapes but no memory and runs no arithmetic, so even VGG-19 or EfficientNetV2-L is measured in
a fraction of a second. FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplies and
convolutions, one multiply-add = 2 FLOPs; element-wise operations are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from lesionlab.classes import NUM_CLASSES
from lesionlab.config import ModelConfig
from lesionlab.core.errors import UsageError
from lesionlab.models.model import create_model
from lesionlab.models.registry import REGISTRY, resolve_spec
from lesionlab.models.weights import offline_source_available


@dataclass(frozen=True)
class ModelSummary:
    """One row of ``lesionlab models``."""

    name: str
    kind: str  # "study", "offline" (offline-pretrained extra) or "timm" (any other timm name)
    timm_name: str
    params: int  # backbone + the default linear 7-class head
    flops: int  # one image at ``size`` x ``size``
    size: int
    native_size: int
    offline: str
    notes: str


def count_flops(model: torch.nn.Module, size: int) -> int:
    """FLOPs of one forward pass of a meta-device model on one ``size`` x ``size`` RGB image."""
    x = torch.empty(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def summarize(name: str, size: int = 224) -> ModelSummary:
    """Parameters and FLOPs of ``name`` with the default linear head, built without weights on the meta device."""
    if size < 32:
        raise UsageError(f"--size must be at least 32 (stride-32 backbones), got {size}")
    spec = resolve_spec(name)
    with torch.device("meta"):
        model = create_model(ModelConfig(name=name, pretrained=False), num_classes=NUM_CLASSES).eval()
    params = sum(p.numel() for p in model.parameters())
    return ModelSummary(name=name, kind=spec.study or "timm", timm_name=spec.timm_name, params=params,
                        flops=count_flops(model, size), size=size, native_size=int(model.data_config["input_size"][-1]),
                        offline=offline_source_available(spec), notes=spec.notes)


def registry_summaries(size: int = 224) -> list[ModelSummary]:
    """One summary per registry name, in table order."""
    return [summarize(name, size) for name in REGISTRY]
