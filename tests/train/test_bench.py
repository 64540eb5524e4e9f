"""The benchmark functions run end to end on a tiny SYNTHETIC HAM10000-layout folder (JPEG files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lesionlab.cli import main
from lesionlab.config import ModelConfig, load_config
from lesionlab.models import create_model
from lesionlab.train.bench import PRECISIONS, bench_frozen, bench_precision, bench_throughput


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, write_synthetic: Callable[..., Path]) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn"), n=112, seed=3, size=32)


def _cfg(tmp_path: Path, csv: Path, *over: str):
    return load_config(None, ["data.source=ham10000", f"data.metadata_csv={csv}", "data.split=lesion",
                              "data.image_size=32", f"data.cache_dir={tmp_path}", "model.name=test_efficientnet",
                              "train.batch_size=16", "train.channels_last=off", "train.bf16=off",
                              "augment.rotation=0", "augment.shear=0", "augment.translate=0", "augment.zoom=[1,1]",
                              "augment.brightness=0", "augment.contrast=0", "augment.saturation=0", "augment.hue=0",
                              "augment.blur_p=0", *over])


def test_bench_frozen_reports_both_epoch_times(tmp_path: Path, folder: Path) -> None:
    weights = tmp_path / "w.safetensors"
    state = create_model(ModelConfig(name="test_efficientnet", pretrained=False)).backbone.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    out = bench_frozen(_cfg(tmp_path, folder, "model.head=simple", f"model.weights={weights}"), epochs=2,
                       progress=False)
    assert out["cached_epoch_s"] > 0 and out["backbone_epoch_s"] > 0 and out["cache_build_s"] > 0
    assert out["speedup"] == pytest.approx(out["backbone_epoch_s"] / out["cached_epoch_s"])
    assert len(out["feature_shape"]) == 3  # the simple head consumes the feature map


def test_bench_throughput_compares_the_two_input_paths(tmp_path: Path, folder: Path) -> None:
    out = bench_throughput(_cfg(tmp_path, folder, "model.pretrained=false"), batches=2, warmup=1, progress=False,
                           rounds=3)
    for key in ("plain_images_per_s", "plain_with_workers_images_per_s", "engine_images_per_s",
                "plain_data_only_images_per_s", "engine_data_only_images_per_s"):
        assert out[key] > 0
    assert len(out["per_round"]["engine"]) == 3
    assert out["engine_images_per_s"] == pytest.approx(sorted(out["per_round"]["engine"])[1])
    assert out["speedup"] == pytest.approx(sorted(out["per_round"]["speedup"])[1])
    assert out["per_round"]["speedup"][0] == pytest.approx(out["per_round"]["engine"][0] / out["per_round"]["plain"][0])
    assert out["engine_precision"] == {"device": "cpu", "autocast": None, "channels_last": False,
                                       "grad_scaler": False}


def test_bench_cli_writes_json(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: c\n")
    args = ["train-bench", "throughput", "--config", str(cfg_file), "data.source=ham10000",
            f"data.metadata_csv={folder}", "data.split=lesion", "data.image_size=32", f"data.cache_dir={tmp_path}",
            "model.name=test_efficientnet", "model.pretrained=false", "train.batch_size=16",
            "train.channels_last=off", "--batches", "1", "--no-progress", "--json", str(tmp_path / "out.json")]
    torch.manual_seed(0)
    assert main(args) == 0
    assert '"speedup"' in (tmp_path / "out.json").read_text()
    assert '"command": "lesionlab' in capsys.readouterr().out


def test_train_bench_is_a_lesionlab_command(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: c\n")
    args = ["train-bench", "frozen", "--config", str(cfg_file), "data.source=ham10000", f"data.metadata_csv={folder}",
            "data.split=lesion", "data.image_size=32", f"data.cache_dir={tmp_path}", "model.name=test_efficientnet",
            "model.pretrained=false", "model.head=simple", "train.batch_size=16", "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"speedup"' in out and '"command": "lesionlab' in out


def test_bench_precision_times_every_precision_from_the_same_weights(tmp_path: Path, folder: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lesionlab.train.bench.cpu_has_native_bf16", lambda: False)
    out = bench_precision(_cfg(tmp_path, folder, "model.pretrained=false"), batches=2, warmup=1, progress=False,
                          rounds=3)
    assert out["native_bf16"] is False and set(out["images_per_s"]) == set(PRECISIONS)
    for name, rates in out["per_round"].items():
        assert len(rates) == 3 and all(r > 0 for r in rates)
        assert out["images_per_s"][name] == pytest.approx(sorted(rates)[1])
    assert out["relative_to_float32"]["float32"] == 1.0
    bf16 = out["relative_to_float32"]["bf16_channels_last"]
    assert bf16 == pytest.approx(out["images_per_s"]["bf16_channels_last"] / out["images_per_s"]["float32"])


def test_bench_precision_cli(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: c\n")
    args = ["train-bench", "precision", "--config", str(cfg_file), "data.source=ham10000",
            f"data.metadata_csv={folder}", "data.split=lesion", "data.image_size=32", f"data.cache_dir={tmp_path}",
            "model.name=test_efficientnet", "model.pretrained=false", "train.batch_size=16", "--batches", "1",
            "--rounds", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"bf16_channels_last"' in out and '"native_bf16"' in out and '"benchmark": "precision"' in out
