"""Head presets Effv1..Effv4: model and train updates, conflicts, and create_model applying them."""

from __future__ import annotations

import pytest

from lesionlab.config import ModelConfig, RunConfig, load_config
from lesionlab.models import HEAD_PRESETS, apply_head_preset, create_model, head_preset_overrides, resolve_model_config


@pytest.mark.parametrize(("preset", "head", "train"), [
    ("effv1", "conv", {}), ("effv2", "linear", {}), ("effv3", "simple", {}),
    ("effv4", "simple", {"class_weights": "balanced"}),
])
def test_preset_overrides(preset: str, head: str, train: dict) -> None:
    parts = head_preset_overrides(preset)
    assert parts["model"]["head"] == head and parts["train"] == train and "name" not in parts["model"]
    assert head_preset_overrides(preset, backbone=True)["model"]["name"] == "efficientnetv2_l"


def test_effv4_is_effv3_plus_class_weights() -> None:
    assert HEAD_PRESETS["effv4"].model == HEAD_PRESETS["effv3"].model
    assert HEAD_PRESETS["effv3"].train == {} and HEAD_PRESETS["effv4"].train == {"class_weights": "balanced"}


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ValueError, match="unknown preset 'effv5'; did you mean"):
        head_preset_overrides("effv5")


def test_create_model_applies_the_model_part() -> None:
    model = create_model(ModelConfig(name="test_resnet", pretrained=False, head_preset="effv3"))
    assert model.config.head == "simple" and model.head.kind == "simple" and model.head.embed_dim == 64
    effv1 = create_model(ModelConfig(name="test_resnet", pretrained=False, head_preset="effv1"))
    assert effv1.head.kind == "conv"


def test_conflicting_explicit_setting_is_an_error_but_an_agreeing_one_is_fine() -> None:
    with pytest.raises(ValueError, match=r"head_preset=effv3 sets .* but the config also sets model.head='conv'"):
        resolve_model_config(ModelConfig(head_preset="effv3", head="conv"))
    assert resolve_model_config(ModelConfig(head_preset="effv3", head="simple")).head == "simple"


def test_apply_head_preset_to_a_run_config() -> None:
    run = load_config(overrides=["model.head_preset=effv4"])
    resolved = apply_head_preset(run)
    assert resolved.model.head == "simple" and resolved.train.class_weights == "balanced"
    assert apply_head_preset(RunConfig()) == RunConfig()
    clash = load_config(overrides=["model.head_preset=effv4", "train.class_weights=sqrt"])
    with pytest.raises(ValueError, match=r"train\.class_weights='sqrt'"):
        apply_head_preset(clash)
