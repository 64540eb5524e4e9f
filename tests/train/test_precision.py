"""The channels-last / bf16 decision: measured on a copy, never changing the real model."""

from __future__ import annotations

import pytest
import torch

from lesionlab.config import ModelConfig, TrainConfig
from lesionlab.models import create_model
from lesionlab.train.loop import Precision, predict
from lesionlab.train.precision import check_cpu_precision, choose_precision


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(name="test_efficientnet", pretrained=False))


def test_auto_is_resolved_by_rule_without_timing_and_leaves_the_model_untouched(model: torch.nn.Module,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    import time

    def no_clock() -> float:
        raise AssertionError("the precision decision must not time anything")

    monkeypatch.setattr(time, "perf_counter", no_clock)
    for native in (True, False):
        monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda native=native: native)
        cl, bf, report = check_cpu_precision(model, x, None, channels_last="auto", bf16="auto")
        assert cl is True and report["channels_last_rule"] == "on for a convolutional network"
        assert report["bf16_native"] is native and report["bf16"] == bf
        if native:
            assert 0.0 <= report["bf16_argmax_agreement"] <= 1.0 and report["bf16_max_prob_diff"] >= 0
        else:
            assert bf is False and "bf16_argmax_agreement" not in report
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 7))
    assert check_cpu_precision(linear, x, None, channels_last="auto", bf16="off")[0] is False


@pytest.mark.parametrize(("cl", "bf", "native", "dtype"), [
    ("on", "on", True, torch.bfloat16),
    ("on", "on", False, None),  # emulated bf16 is several times slower than float32: float32, said so
    ("off", "off", True, None),
    ("off", "off", False, None),
])
def test_fixed_settings_need_no_check(cl: str, bf: str, native: bool, dtype: torch.dtype | None,
                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda: native)
    precision, report = choose_precision(TrainConfig(channels_last=cl, bf16=bf), torch.device("cpu"))
    assert precision.dtype == dtype and precision.channels_last == (cl == "on")
    assert report["reason"] == "set in the config" and report["bf16"] is (dtype is not None)
    fell_back = bf == "on" and not native
    assert ("bf16_fallback" in report) is fell_back and ("no native bf16" in caplog.text) is fell_back
    if fell_back:
        assert report["bf16_native"] is False and "train.bf16=off" in report["bf16_fallback"]


def test_bf16_on_beside_auto_channels_last_falls_back_the_same_way(model: torch.nn.Module,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda: False)
    cl, bf, report = check_cpu_precision(model, torch.randn(4, 3, 32, 32), None, channels_last="auto", bf16="on")
    assert cl is True and bf is False and report["bf16"] is False and "bf16_fallback" in report


def test_yaml_on_off_booleans_are_accepted() -> None:
    cfg = TrainConfig.model_validate({"channels_last": True, "bf16": False})
    assert cfg.channels_last == "on" and cfg.bf16 == "off"


@pytest.mark.parametrize(("cl", "want_cl"), [("on", True), ("auto", False), ("off", False)])
def test_head_on_cached_embeddings_is_float32(cl: str, want_cl: bool) -> None:
    precision, report = choose_precision(TrainConfig(bf16="on", channels_last=cl), torch.device("cpu"), images=False)
    assert precision.dtype is None
    assert precision.channels_last is want_cl and report["channels_last"] is want_cl


def test_bf16_predictions_stay_close_to_float32(model: torch.nn.Module) -> None:
    model.eval()
    batches = [{"image": torch.randn(4, 3, 32, 32), "label": torch.arange(4)} for _ in range(2)]
    p32, y = predict(model, batches, precision=Precision(torch.device("cpu")))
    p16, _ = predict(model, batches, precision=Precision(torch.device("cpu"), torch.bfloat16, True))
    assert p32.shape == (8, 7) and y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert abs(p32 - p16).max() < 0.05


@pytest.mark.parametrize(("grouped_fp32", "groups", "want"), [
    (True, 8, torch.float32),     # depthwise: kept in float32 under bf16 autocast
    (True, 1, torch.bfloat16),    # dense: autocast as usual
    (False, 8, torch.bfloat16),   # the switch off: plain autocast everywhere
])
def test_grouped_convolutions_stay_float32_under_cpu_bf16(grouped_fp32: bool, groups: int, want: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.randn(2, 8, 6, 6)
    with Precision(torch.device("cpu"), torch.bfloat16, grouped_conv_fp32=grouped_fp32).autocast():
        out = conv(x.to(torch.bfloat16))
    assert out.dtype == want
    out.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    if want == torch.float32:  # computed from the (bf16-rounded) input exactly as a float32 convolution would
        assert torch.equal(out.detach(), conv(x.to(torch.bfloat16).float()).detach())


def test_float32_run_ignores_the_grouped_conv_switch() -> None:
    precision = Precision(torch.device("cpu"))
    assert "grouped_conv_fp32" not in precision.describe()
    assert Precision(torch.device("cpu"), torch.bfloat16).describe()["grouped_conv_fp32"] is True
