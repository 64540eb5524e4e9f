"""Real ImageNet weights on real dermoscopy images: confident, non-degenerate ImageNet predictions.

Dermoscopy is not an ImageNet class, so there is no right answer; what is checked is that the offline weights are
really ImageNet-trained (peaked, image-dependent predictions) when LesionModel's features feed the source network's
own ImageNet classifier through our linear head.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from lesionlab.config import ModelConfig
from lesionlab.models import LesionModel, create_model
from lesionlab.models import weights as W

UNIFORM_ENTROPY = math.log(1000)


def _imagenet_model(name: str) -> LesionModel:
    """Our model with the source network's own ImageNet classifier copied into the linear head."""
    model = create_model(ModelConfig(name=name), num_classes=1000).eval()
    if name == "lite0":
        state = W.read_state_dict(W.lite_package_file("tf_efficientnet_lite0"))
        weight, bias = state["_fc.weight"], state["_fc.bias"]
    else:
        state = W.read_state_dict(W.shared_mobilenetv2_file())
        weight, bias = state["classifier.weight"], state["classifier.bias"]
    with torch.no_grad():
        model.head.classifier.weight.copy_(weight)
        model.head.classifier.bias.copy_(bias)
    return model


def _images(shared_data: Path, model: LesionModel) -> torch.Tensor:
    import timm.data

    transform = timm.data.create_transform(**model.data_config)
    files = sorted((shared_data / "ham10000-600x450").glob("ISIC_*.jpg"))
    assert len(files) == 7, "one full-size image per class is expected in ham10000-600x450"
    return torch.stack([transform(Image.open(f).convert("RGB")) for f in files])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lite0", "mobilenetv2_shared"])
def test_imagenet_predictions_on_dermoscopy_are_confident_and_image_dependent(
        name: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(shared_data.parent))
    if name == "mobilenetv2_shared" and not (shared_data.parent / "weights" / W.SHARED_MOBILENETV2_FILE).is_file():
        pytest.skip("shared MobileNetV2 weights absent")
    model = _imagenet_model(name)
    x = _images(shared_data, model)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.max(-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    assert (top > 0.05).all() and top.mean() > 0.25, top  # uniform would be 0.001
    assert (entropy < UNIFORM_ENTROPY - 0.9).all(), entropy
    assert len(set(probs.argmax(-1).tolist())) >= 3  # image-dependent, not one answer for everything
