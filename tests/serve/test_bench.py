"""Benchmark helpers: stage timings of the service overhead, eager vs ONNX Runtime latency, the load-test command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionlab.cli import main
from lesionlab.config import ModelConfig
from lesionlab.models import create_model
from lesionlab.runs import load_run
from lesionlab.serve.bench import model_latency, service_overhead
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion
from lesionlab.serve.service import Predictor
from lesionlab.serve.settings import ServeSettings


def test_service_overhead_times_each_stage(meta_run: Path) -> None:
    predictor = Predictor(load_run(meta_run), ServeSettings())
    stages = service_overhead(predictor, jpeg_bytes(synthetic_lesion()), runs=5, warmup=1)
    assert set(stages) == {"decode", "preprocess", "json", "total"}
    assert all(s["p50"] > 0 and s["p95"] >= s["p50"] for s in stages.values())


def test_model_latency_measures_both_backends_and_their_agreement() -> None:
    model = create_model(ModelConfig(name="test_efficientnet", pretrained=False))
    result = model_latency(model, (64, 64), runs=3, warmup=1)
    assert result["eager_ms"]["p50"] > 0 and result["onnxruntime_ms"]["p50"] > 0
    assert result["max_abs_logit_diff"] < 1e-4
    assert result["eager_channels_last_ms"]["p50"] > 0 and result["eager_channels_last_bf16_ms"]["p50"] > 0
    assert result["eager_channels_last_max_abs_logit_diff"] < 1e-4  # a memory format, not a different computation
    assert 0 < result["eager_channels_last_bf16_max_abs_logit_diff"] < 1.0  # bf16 rounds, but only a little
    assert next(model.parameters()).is_contiguous()  # the caller's module is left as it was


@pytest.mark.slow
def test_load_command_starts_the_server_and_reports_zero_errors(image_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``lesionlab serve-bench load`` runs ``lesionlab serve`` in a subprocess, as a deployment would."""
    image = tmp_path / "lesion.jpg"
    synthetic_lesion().save(image, quality=90)
    code = main(["serve-bench", "load", str(image_run), "--image", str(image), "--requests", "20",
                 "--concurrency", "2", "--max-seconds", "120"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["load"]["ok"] == 20 and out["load"]["errors"] == 0
    assert out["load"]["p99"] >= out["load"]["p50"] > 0
