"""The registry: every study name builds, timm names pass through, unknown names get suggestions."""

from __future__ import annotations

import time

import pytest
import torch

from lesionlab.config import ModelConfig
from lesionlab.models import REGISTRY, UnknownModelError, create_model, resolve_spec
from lesionlab.models.registry import OFFLINE_NAMES, STUDY_NAMES

ISSUE_NAMES = ["resnet34", "resnet50", "resnet101", "seresnet50", "vgg16", "vgg19", "efficientnet_b5", "mobilenet",
               "mobilenetv2", "efficientnetv2_l"]
SMALL = ["mobilenet", "mobilenetv2", "lite0", "lite1", "lite2", "mobilenetv2_shared", "resnet34"]
BIG = sorted(set(REGISTRY) - set(SMALL))


def test_registry_holds_the_issue_names_and_the_offline_extras() -> None:
    assert list(STUDY_NAMES) == ISSUE_NAMES
    assert set(OFFLINE_NAMES) == {"lite0", "lite1", "lite2", "mobilenetv2_shared"}


@pytest.mark.parametrize(("name", "timm_name"), [
    ("mobilenet", "mobilenetv1_100"), ("mobilenetv2", "mobilenetv2_100"), ("efficientnet_b5", "tf_efficientnet_b5"),
    ("efficientnetv2_l", "tf_efficientnetv2_l"), ("lite0", "tf_efficientnet_lite0"), ("vgg16", "vgg16"),
    ("mobilenetv2_shared", "mobilenetv2_100"), ("resnet18", "resnet18"), ("convnext_atto", "convnext_atto"),
    ("resnet50.a1_in1k", "resnet50.a1_in1k"),
])
def test_names_resolve_to_timm(name: str, timm_name: str) -> None:
    assert resolve_spec(name).timm_name == timm_name


def test_plain_lite_timm_name_gets_the_offline_source_but_a_tagged_one_does_not() -> None:
    assert resolve_spec("tf_efficientnet_lite0").offline == "pypi-lite"
    assert resolve_spec("tf_efficientnet_lite0.in1k").offline == ""
    assert resolve_spec("vgg19").strip_pre_logits and resolve_spec("vgg11").strip_pre_logits


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet5", "resnet50"), ("mobilenet_v2", "mobilenetv2"), ("efficientnetv2l", "efficientnetv2_l"),
    ("seresnet_50", "seresnet50"), ("vgg_16", "vgg16"),
])
def test_unknown_name_suggests_near_matches(name: str, expected: str) -> None:
    with pytest.raises(UnknownModelError, match=rf"unknown model '{name}'; did you mean .*\b{expected}\b"):
        resolve_spec(name)


def test_unknown_pretrained_tag_lists_the_known_tags() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown pretrained tag 'nope' for resnet50; timm has .*a1_in1k"):
        resolve_spec("resnet50.nope")


def test_unknown_name_error_is_fast_and_comes_from_create_model_too() -> None:
    start = time.perf_counter()
    with pytest.raises(UnknownModelError, match="did you mean"):
        create_model(ModelConfig(name="resnet5", pretrained=False))
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_builds_on_the_meta_device(name: str) -> None:
    """Architecture, head and feature probe for every entry, with no memory and no arithmetic (fast)."""
    with torch.device("meta"):
        model = create_model(ModelConfig(name=name, pretrained=False))
        out = model.eval()(torch.empty(2, 3, 64, 64))
    assert tuple(out.shape) == (2, 7)
    assert model.feature_kind == "pooled" and model.num_features > 0
    if REGISTRY[name].strip_pre_logits:
        assert model.num_features == 512 and isinstance(model.backbone.pre_logits, torch.nn.Identity)


def _build_and_run(name: str) -> None:
    model = create_model(ModelConfig(name=name, pretrained=False)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_small_registry_entries_build_and_run_on_cpu(name: str) -> None:
    _build_and_run(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_big_registry_entries_build_and_run_on_cpu(name: str) -> None:
    _build_and_run(name)
