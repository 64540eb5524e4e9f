"""The model zoo: timm backbones under the studies' names, pretrained weights that work offline, heads, fusion.

Public API::

    from lesionlab.models import create_model, freeze_backbone, embedding_key
    model = create_model(cfg.model, num_classes=7, meta_dim=encoder.dim)
    logits = model(images, meta)                       # softmax belongs to the loss / predict step
    feats = model.forward_features(images)             # cacheable (frozen mode)
    logits = model.forward_head(feats, meta)
    freeze_backbone(model)                             # grads off, backbone in eval mode
    key = embedding_key(cfg.model, (64, 64), preprocessing.to_dict())

Names: the registry (``lesionlab models``) maps the studies' names (resnet34, resnet50, resnet101, seresnet50,
vgg16, vgg19, efficientnet_b5, mobilenet, mobilenetv2, efficientnetv2_l) and the offline-pretrained extras (lite0,
lite1, lite2, mobilenetv2_shared) to timm; any other timm architecture name is accepted too.
"""

from lesionlab.models.fusion import ConcatFusion, MetaBlock, NoFusion
from lesionlab.models.heads import FEATURE_KIND, Head, build_head
from lesionlab.models.model import LesionModel, create_model, embedding_key, freeze_backbone
from lesionlab.models.presets import HEAD_PRESETS, apply_head_preset, head_preset_overrides, resolve_model_config
from lesionlab.models.registry import REGISTRY, ModelSpec, UnknownModelError, resolve_spec
from lesionlab.models.weights import (
    OfflineWeightsError,
    WeightsError,
    WeightsSource,
    load_checked,
    read_state_dict,
    resolve_weights,
    shared_dir,
)

__all__ = ["FEATURE_KIND", "HEAD_PRESETS", "REGISTRY", "ConcatFusion", "Head", "LesionModel", "MetaBlock",
           "ModelSpec", "NoFusion", "OfflineWeightsError", "UnknownModelError", "WeightsError", "WeightsSource",
           "apply_head_preset", "build_head", "create_model", "embedding_key", "freeze_backbone",
           "head_preset_overrides", "load_checked", "read_state_dict", "resolve_model_config", "resolve_spec",
           "resolve_weights", "shared_dir"]
