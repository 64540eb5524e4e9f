"""Named head presets reproducing the DermaMNIST transfer-learning study's configurations Effv1..Effv4.

The study fine-tunes a Keras EfficientNetV2-L on DermaMNIST with four classification tops. What we know of them:
Effv1 adds convolution blocks on the feature map; Effv3 is Flatten, BatchNorm, Dense 64, BatchNorm, softmax; Effv4 is
Effv3 trained with class weights. Effv2's top is not described in the material we had; we use the canonical Keras
transfer-learning top (global average pooling, dropout 0.2, dense softmax), which sits between Effv1 and Effv3 in
size. A preset sets only the head (and, for Effv4, the class weights): the backbone stays the configured one, since
EfficientNetV2-L is too slow for CPU runs; ``head_preset_overrides(name, backbone=True)`` adds the study's backbone.

Class weights are a training setting, so a preset returns two parts, ``{"model": {...}, "train": {...}}``.
:func:`resolve_model_config` applies the model part (``create_model`` calls it); :func:`apply_head_preset` applies
both parts to a whole run config, for the trainer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lesionlab.config import ConfigError

if TYPE_CHECKING:
    from lesionlab.config import ModelConfig, RunConfig

STUDY_BACKBONE = "efficientnetv2_l"


@dataclass(frozen=True)
class HeadPreset:
    """One of the study's configurations: model-config and train-config updates."""

    name: str
    description: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)


HEAD_PRESETS: dict[str, HeadPreset] = {p.name: p for p in (
    HeadPreset("effv1", "extra convolution blocks on the feature map, then pooling and dense layers",
               {"head": "conv", "head_hidden": 64}),
    HeadPreset("effv2", "global average pooling, dropout 0.2, dense softmax (assumed: the canonical Keras top)",
               {"head": "linear", "dropout": 0.2}),
    HeadPreset("effv3", "Flatten, BatchNorm, Dense 64, BatchNorm, softmax", {"head": "simple", "head_hidden": 64}),
    HeadPreset("effv4", "Effv3 trained with balanced class weights", {"head": "simple", "head_hidden": 64},
               {"class_weights": "balanced"}),
)}


def head_preset_overrides(name: str, backbone: bool = False) -> dict[str, dict[str, Any]]:
    """``{"model": ..., "train": ...}`` updates for preset ``name`` (``backbone=True`` adds the study's network)."""
    key = str(name).strip().lower()
    if key not in HEAD_PRESETS:
        close = difflib.get_close_matches(key, list(HEAD_PRESETS), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"model.head_preset: unknown preset {name!r}{hint} (known: {', '.join(HEAD_PRESETS)})")
    preset = HEAD_PRESETS[key]
    model = dict(preset.model)
    if backbone:
        model["name"] = STUDY_BACKBONE
    return {"model": model, "train": dict(preset.train)}


def _merge(section: Any, updates: dict[str, Any], where: str, preset: str) -> Any:
    """Apply ``updates`` unless the user set one of those keys to something else (then say so)."""
    conflicts = [f"{where}.{k}={getattr(section, k)!r}" for k, v in updates.items()
                 if k in section.model_fields_set and getattr(section, k) != v]
    if conflicts:
        sets = ", ".join(f"{where}.{k}={v!r}" for k, v in updates.items())
        raise ConfigError(f"model.head_preset={preset} sets {sets} but the config also sets {', '.join(conflicts)}; "
                         "drop one of them")
    return section.model_copy(update=updates)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """The model config with its head preset applied (unchanged when there is none)."""
    if cfg.head_preset is None:
        return cfg
    return _merge(cfg, head_preset_overrides(cfg.head_preset)["model"], "model", cfg.head_preset)


def apply_head_preset(run: RunConfig) -> RunConfig:
    """A run config with both parts of its head preset applied (model head settings and train settings)."""
    preset = run.model.head_preset
    if preset is None:
        return run
    parts = head_preset_overrides(preset)
    model = _merge(run.model, parts["model"], "model", preset)
    train = _merge(run.train, parts["train"], "train", preset) if parts["train"] else run.train
    return run.model_copy(update={"model": model, "train": train})
