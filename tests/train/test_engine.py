"""fit() end to end on small SYNTHETIC data with a 0.1 M-parameter timm test network (seconds per run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from lesionlab.config import ConfigError, RunConfig, load_config
from lesionlab.runs import INFO_FILE, WEIGHTS_FILE, RunError, load_run
from lesionlab.train import TrainError, fit
from lesionlab.train.checkpoint import CHECKPOINT_FILE, load_checkpoint

BASE = ["data.source=synthetic", "data.synthetic_n=140", "data.image_size=32", "augment.enabled=false",
        "model.name=test_efficientnet", "train.mode=scratch", "train.epochs=2", "train.batch_size=16",
        "train.eval_batch_size=64", "train.optimizer=adamw", "train.lr=0.003", "train.channels_last=off"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one intra-op thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg_for(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config(None, [*BASE, f"output_dir={tmp_path / 'runs'}", "data.cache_dir=" + str(tmp_path / "cache"),
                              *overrides])


def history(run_dir: Path) -> list[dict[str, Any]]:
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_images_per_s")} for r in rows]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / WEIGHTS_FILE))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete 2-epoch scratch run, shared by the read-only checks."""
    tmp = tmp_path_factory.mktemp("finished")
    return fit(cfg_for(tmp, "name=done"), progress=False)


def test_fit_writes_a_complete_run_directory(finished: Path) -> None:
    names = {p.name for p in finished.iterdir()}
    assert {"model.safetensors", "run.json", "config.yaml", "history.csv", "history.json"} <= names
    assert CHECKPOINT_FILE not in names  # removed once the run is complete
    info = json.loads((finished / INFO_FILE).read_text())
    assert info["status"] == "complete" and info["epochs_run"] == 2
    assert info["data"]["synthetic"] is True and info["data"]["fingerprint"]
    size = info["data"]["source_image_size"]  # the stored images' size, for serving full-size uploads
    assert len(size) == 2 and min(size) > 0
    assert len(info["split"]["hash"]) == 64
    assert info["best"]["monitor"] == "balanced_accuracy" and "val_macro_auc" in info["best"]
    assert info["config"]["model"]["pretrained"] is False  # scratch mode saves what it built
    assert info["training"]["mode"] == "scratch"
    csv = pd.read_csv(finished / "history.csv")
    assert list(csv["epoch"]) == [0, 1]
    assert {"train_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_auc", "lr"} <= set(csv.columns)
    assert (csv["train_grad_norm"] > 0).all() and csv["train_clipped"].isna().all()  # no clip set: no share


def test_saved_weights_are_the_best_epochs_and_reload(finished: Path) -> None:
    info = json.loads((finished / INFO_FILE).read_text())
    rows = history(finished)
    best = max(rows, key=lambda r: r["val_balanced_accuracy"])
    assert info["best"]["epoch"] == best["epoch"]
    run = load_run(finished)
    assert run.preprocessing.size == (32, 32)

    from lesionlab.data import cached_images, open_source

    source = open_source(run.config.data)
    val = np.flatnonzero(source.table["split"].to_numpy() == "val")
    images = cached_images(source, (32, 32), cache_dir=run.config.data.cache_dir)
    proba = run.predict_proba([images[i] for i in val])
    labels = source.table["label"].to_numpy()[val]
    assert np.isclose((proba.argmax(1) == labels).mean(), info["best"]["val_accuracy"])


def test_same_seed_gives_identical_runs(tmp_path: Path) -> None:
    a = fit(cfg_for(tmp_path, "name=a", "augment.enabled=true"), progress=False)
    b = fit(cfg_for(tmp_path, "name=b", "augment.enabled=true"), progress=False)
    assert history(a) == history(b)
    assert same_weights(weights(a), weights(b))
    c = fit(cfg_for(tmp_path, "name=c", "augment.enabled=true", "train.seed=1"), progress=False)
    assert history(c) != history(a)


class Killed(Exception):
    """Stands in for a kill signal after an epoch's checkpoint was written."""


def test_resume_after_kill_ends_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    over = ["train.epochs=3", "augment.enabled=true", "train.schedule=onecycle", "train.sampler=balanced"]
    full = fit(cfg_for(tmp_path, "name=full", *over), progress=False)

    def kill_after_second_epoch(epoch: int, row: dict[str, Any]) -> None:
        if epoch == 1:
            raise Killed

    cfg = cfg_for(tmp_path, "name=killed", *over)
    with pytest.raises(Killed):
        fit(cfg, progress=False, callbacks=[kill_after_second_epoch])
    run_dir = tmp_path / "runs" / "killed"
    assert (run_dir / CHECKPOINT_FILE).is_file()
    assert json.loads((run_dir / INFO_FILE).read_text())["status"] == "training"
    epochs_seen: list[int] = []
    fit(cfg, progress=False, callbacks=[lambda e, r: epochs_seen.append(e)])  # re-running the same command resumes
    assert epochs_seen == [2]
    assert history(run_dir) == history(full)
    assert same_weights(weights(run_dir), weights(full))


def test_auto_precision_is_recorded_in_the_run_config_and_kept_on_resume(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, "name=auto", "train.channels_last=auto", "train.epochs=1")
    run_dir = fit(cfg, progress=False)
    saved = load_config(run_dir / "config.yaml")
    info = json.loads((run_dir / INFO_FILE).read_text())
    assert saved.train.channels_last == "on" and info["config"]["train"]["channels_last"] == "on"
    assert "no timing" in info["training"]["precision"]["reason"]
    assert fit(cfg, progress=False) == run_dir  # the same 'auto' command finds its resolved run complete


def test_completed_run_is_not_retrained_and_resume_requires_a_checkpoint(finished: Path, tmp_path: Path) -> None:
    cfg = load_config(finished / "config.yaml")
    before = (finished / WEIGHTS_FILE).stat().st_mtime_ns
    assert fit(cfg, run_dir=finished, progress=False) == finished
    assert (finished / WEIGHTS_FILE).stat().st_mtime_ns == before
    with pytest.raises(RunError, match="nothing to resume"):
        fit(cfg_for(tmp_path, "name=new"), resume=True, progress=False)


def test_run_directory_with_another_config_is_refused(tmp_path: Path) -> None:
    def stop(epoch: int, row: dict[str, Any]) -> None:
        raise Killed

    with pytest.raises(Killed):
        fit(cfg_for(tmp_path, "name=x"), progress=False, callbacks=[stop])
    with pytest.raises(RunError, match=r"different config \(train.lr: 0.003 -> 0.1"):
        fit(cfg_for(tmp_path, "name=x", "train.lr=0.1"), progress=False)


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    def stop(epoch: int, row: dict[str, Any]) -> None:
        raise Killed

    cfg = cfg_for(tmp_path, "name=t")
    with pytest.raises(Killed):
        fit(cfg, progress=False, callbacks=[stop])
    ckpt = tmp_path / "runs" / "t" / CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(RunError, match=r"last\.ckpt: checkpoint is truncated or corrupt"):
        fit(cfg, progress=False)


def test_unfreeze_after_trains_the_head_first(tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    from lesionlab.config import ModelConfig
    from lesionlab.models import create_model

    torch.manual_seed(0)
    backbone = create_model(ModelConfig(name="test_efficientnet", pretrained=False)).backbone
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(init))
    snapshots: list[dict[str, torch.Tensor]] = []
    cfg = cfg_for(tmp_path, "name=u", "train.mode=finetune", f"model.weights={init}", "train.unfreeze_after=1")
    fit(cfg, progress=False, callbacks=[lambda e, r: snapshots.append(dict(load_checkpoint(
        tmp_path / "runs" / "u" / CHECKPOINT_FILE)["model"]))])
    start = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    params = [k for k in start if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(snapshots[0][k], start[k]) for k in start)  # epoch 1: backbone untouched (eval mode too)
    assert not all(torch.equal(snapshots[1][k], start[k]) for k in params)  # epoch 2: trained
    assert [r["backbone_frozen"] for r in history(tmp_path / "runs" / "u")] == [True, False]


def _frozen_cfg(tmp_path: Path, init: Path, *over: str) -> RunConfig:
    return cfg_for(tmp_path, "train.mode=frozen", "model.pretrained=true", f"model.weights={init}",
                   "train.epochs=3", *over)


@pytest.fixture
def backbone_file(tmp_path: Path) -> Path:
    """Fixed 'pretrained' weights for the test network: the embedding cache needs a stable weights identity."""
    from lesionlab.config import ModelConfig
    from lesionlab.models import create_model

    torch.manual_seed(1)
    path = tmp_path / "backbone.safetensors"
    state = create_model(ModelConfig(name="test_efficientnet", pretrained=False)).backbone.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_frozen_mode_caches_embeddings_and_keeps_the_backbone(tmp_path: Path, backbone_file: Path) -> None:
    first = fit(_frozen_cfg(tmp_path, backbone_file, "name=f1"), progress=False)
    second = fit(_frozen_cfg(tmp_path, backbone_file, "name=f2", "model.head=mlp", "model.head_hidden=16"),
                 progress=False)
    e1 = json.loads((first / INFO_FILE).read_text())["training"]["embeddings"]
    e2 = json.loads((second / INFO_FILE).read_text())["training"]["embeddings"]
    assert not e1["train"]["cached"] and not e1["val"]["cached"]
    assert e2["train"]["cached"] and e2["val"]["cached"]  # another head reuses the embeddings
    assert e1["val"]["shape"][1] == 3  # identity + two flips for flip-averaged validation
    saved = load_file(str(backbone_file))
    got = weights(first)
    assert all(torch.equal(got[f"backbone.{k}"], v) for k, v in saved.items())
    assert history(first)[-1]["backbone_frozen"] is True


@pytest.mark.parametrize(("second", "val_cached"), [("train.bf16=off", True), ("train.bf16=on", False)])
def test_bf16_embeddings_never_share_the_float32_cache(tmp_path: Path, backbone_file: Path, second: str,
                                                       val_cached: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Augmentation without cached views runs the backbone in the run's precision, validation embeddings included."""
    monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda: True)  # bf16 even where emulated
    common = ("train.epochs=1", "augment.enabled=true", "train.embed_cache_views=0")
    fit(_frozen_cfg(tmp_path, backbone_file, "name=p32", "train.bf16=off", *common), progress=False)
    run = fit(_frozen_cfg(tmp_path, backbone_file, "name=p2", second, *common), progress=False)
    emb = json.loads((run / INFO_FILE).read_text())["training"]["embeddings"]
    assert emb["val"]["cached"] is val_cached


def test_frozen_head_matches_full_model_predictions(tmp_path: Path, backbone_file: Path) -> None:
    """Cached-embedding validation scores equal what the saved full model gives on the images."""
    run_dir = fit(_frozen_cfg(tmp_path, backbone_file, "name=fm"), progress=False)
    info = json.loads((run_dir / INFO_FILE).read_text())
    run = load_run(run_dir)
    from lesionlab.data import cached_images, open_source

    source = open_source(run.config.data)
    val = np.flatnonzero(source.table["split"].to_numpy() == "val")
    images = cached_images(source, (32, 32), cache_dir=run.config.data.cache_dir)
    from lesionlab.evaluate.metrics import compute_metrics

    m = compute_metrics(source.table["label"].to_numpy()[val], run.predict_proba([images[i] for i in val]))
    assert m["nll"] == pytest.approx(info["best"]["val_nll"], abs=1e-4)


@pytest.mark.parametrize(("views", "expect_cached"), [(2, True), (0, False)])
def test_frozen_mode_with_augmentation(tmp_path: Path, backbone_file: Path, views: int, expect_cached: bool) -> None:
    run_dir = fit(_frozen_cfg(tmp_path, backbone_file, "name=aug", "augment.enabled=true",
                              f"train.embed_cache_views={views}", "train.epochs=2"), progress=False)
    emb = json.loads((run_dir / INFO_FILE).read_text())["training"]["embeddings"]
    if expect_cached:
        assert {"train_view0", "train_view1"} <= set(emb)
    else:
        assert emb["train"]["cached"] is False and "bypass" in emb["train"]["reason"]


def test_fusion_trains_with_metadata(tmp_path: Path) -> None:
    run_dir = fit(cfg_for(tmp_path, "name=fu", "model.fusion=concat"), progress=False)
    run = load_run(run_dir)
    assert run.meta_encoder is not None and run.model.meta_dim == run.meta_encoder.dim
    out = run.predict_proba(torch.zeros(2, 3, 32, 32), [{"age": 50, "sex": "male", "site": "back"}, {}])
    assert out.shape == (2, 7)


def test_fusion_on_a_dataset_without_metadata_is_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    parts = {}
    for split, n in (("train", 21), ("val", 14), ("test", 7)):
        parts[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        parts[f"{split}_labels"] = (np.arange(n) % 7).reshape(-1, 1)
    np.savez(npz, **parts)
    cfg = cfg_for(tmp_path, "data.source=npz", f"data.npz={npz}", "model.fusion=metablock", "data.image_size=28")
    with pytest.raises(TrainError, match=r"model\.fusion='metablock' needs clinical metadata"):
        fit(cfg, progress=False)
    run_dir = fit(cfg_for(tmp_path, "data.source=npz", f"data.npz={npz}", "data.image_size=28", "name=npz"),
                  progress=False)
    assert json.loads((run_dir / "run.json").read_text())["split"]["source"] == "npz"  # the file's own split


@pytest.mark.parametrize(("override", "match"), [
    ("train.lrr=0.1", r"unknown config key 'train.lrr'; did you mean lr"),
    ("trian.lr=0.1", r"unknown config key 'trian'"),
    ("train.mode=frozn", r"train.mode"),
])
def test_bad_config_keys_are_errors(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg_for(tmp_path, override)


def test_unknown_monitor_metric_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match=r"train\.monitor='auroc' is not a validation metric"):
        fit(cfg_for(tmp_path, "train.monitor=auroc"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_early_stopping_stops_and_says_so(tmp_path: Path) -> None:
    run_dir = fit(cfg_for(tmp_path, "name=es", "train.epochs=8", "train.patience=1", "train.lr=0.0",
                          "train.monitor=nll"), progress=False)
    info = json.loads((run_dir / INFO_FILE).read_text())
    assert info["stopped_early"] is True and info["epochs_run"] == 2  # lr 0: epoch 2 cannot improve the nll


def test_bf16_and_channels_last_run_records_its_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lesionlab.train.precision.cpu_has_native_bf16", lambda: True)  # computes (emulated) anywhere
    run_dir = fit(cfg_for(tmp_path, "name=bf", "train.bf16=on", "train.channels_last=on"), progress=False)
    prec = json.loads((run_dir / INFO_FILE).read_text())["training"]["precision"]
    assert prec["bf16"] is True and prec["channels_last"] is True
    assert load_run(run_dir).predict_proba(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize(("sizes", "expected"), [
    ([(64, 64)] * 5, [64, 64]),
    ([(450, 600)] * 3, [450, 600]),
    ([(64, 64), (64, 64), (450, 600)], None),  # mixed sizes: nothing to reproduce
    ([], None),
])
def test_source_image_size(sizes: list[tuple[int, int]], expected: list[int] | None) -> None:
    from PIL import Image

    from lesionlab.train.plans import source_image_size

    class Source:
        def load_image(self, i: int) -> Image.Image:
            h, w = sizes[i]
            return Image.new("RGB", (w, h))

    assert source_image_size(Source(), np.arange(len(sizes))) == expected


def test_ema_weights_are_validated_saved_and_resumed(tmp_path: Path) -> None:
    over = ["train.epochs=3", "train.ema_decay=0.9", "train.schedule=onecycle", "train.monitor=nll"]
    full = fit(cfg_for(tmp_path, "name=full", *over), progress=False)
    plain = fit(cfg_for(tmp_path, "name=plain", *over[:1], *over[2:]), progress=False)
    info = json.loads((full / INFO_FILE).read_text())
    assert info["config"]["train"]["ema_decay"] == 0.9
    assert not same_weights(weights(full), weights(plain))  # the average, not the last step's weights
    assert [r["train_loss"] for r in history(full)] == [r["train_loss"] for r in history(plain)]  # same steps
    assert history(full) != history(plain)  # but other validated weights
    cfg = cfg_for(tmp_path, "name=killed", *over)

    def kill(epoch: int, row: dict[str, Any]) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(cfg, progress=False, callbacks=[kill])
    fit(cfg, progress=False)  # resumes with the average from the checkpoint
    assert history(tmp_path / "runs" / "killed") == history(full)
    assert same_weights(weights(tmp_path / "runs" / "killed"), weights(full))


def test_ema_and_dihedral_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="ema_decay"):
        fit(cfg_for(tmp_path, "name=e", "train.mode=frozen", "train.ema_decay=0.99"), progress=False)
    with pytest.raises(TrainError, match="dihedral needs a square"):
        fit(cfg_for(tmp_path, "name=d", "data.image_size=[32, 48]", "train.tta_views=dihedral"), progress=False)
    with pytest.raises(ConfigError, match="ema_decay"):
        cfg_for(tmp_path, "train.ema_decay=1.0")


def test_dihedral_views_are_used_in_validation_and_saved_for_inference(tmp_path: Path) -> None:
    run_dir = fit(cfg_for(tmp_path, "name=d8", "train.epochs=1", "train.tta_views=dihedral"), progress=False)
    run = load_run(run_dir)
    assert run.tta_views == "dihedral"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        views = [x, *(torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3))]
        views += [torch.rot90(torch.flip(x, dims=[-1]), k, dims=(-2, -1)) for k in range(4)]
        expected = torch.stack([run.model(v) for v in views]).mean(0).numpy()
    assert np.allclose(run.predict_logits(x), expected, atol=1e-5)


def test_distillation_from_a_teacher_on_the_same_split(tmp_path: Path) -> None:
    from lesionlab.train.distill import DistillLoss

    teacher = fit(cfg_for(tmp_path, "name=teacher"), progress=False)
    student = fit(cfg_for(tmp_path, "name=student", f"train.distill_from=[{teacher}]", "train.distill_weight=0.7"),
                  progress=False)
    info = json.loads((student / INFO_FILE).read_text())["training"]["distillation"]
    assert info["teachers"][0]["run"] == str(teacher) and info["weight"] == 0.7 and info["temperature"] == 2.0
    assert 0.0 <= info["train_accuracy_of_targets"] <= 1.0
    plain = tmp_path / "runs" / "done"
    plain = fit(cfg_for(tmp_path, "name=done"), progress=False) if not plain.is_dir() else plain
    assert [r["train_loss"] for r in history(student)] != [r["train_loss"] for r in history(plain)]
    # the loss: pure cross-entropy at weight 0, pure KL at weight 1, and the KL is 0 when the targets agree
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    base = torch.nn.CrossEntropyLoss()
    soft = torch.softmax(logits / 2.0, dim=1)
    assert torch.isclose(DistillLoss(base, 0.0, 2.0)(logits, y, soft), base(logits, y))
    assert torch.isclose(DistillLoss(base, 1.0, 2.0)(logits, y, soft), torch.tensor(0.0), atol=1e-6)
    assert torch.isclose(DistillLoss(base, 0.5, 2.0)(logits, y), base(logits, y))  # no targets: the base loss


def test_distillation_refuses_a_teacher_from_another_split(tmp_path: Path) -> None:
    other = fit(cfg_for(tmp_path, "name=other", "data.synthetic_seed=5"), progress=False)
    with pytest.raises(TrainError, match="leaks validation or test images"):
        fit(cfg_for(tmp_path, "name=s", f"train.distill_from=[{other}]"), progress=False)
    with pytest.raises(TrainError, match="no trained run"):
        fit(cfg_for(tmp_path, "name=s2", f"train.distill_from=[{tmp_path / 'nowhere'}]"), progress=False)


def test_batch_mixing_trains_repeatably_and_changes_the_steps(tmp_path: Path) -> None:
    over = ["train.epochs=1", "augment.enabled=true", "augment.rotation=0", "augment.shear=0"]
    mixed = fit(cfg_for(tmp_path, "name=mix", *over, "augment.cutmix=1.0", "augment.mixup=0.2"), progress=False)
    again = fit(cfg_for(tmp_path, "name=mix2", *over, "augment.cutmix=1.0", "augment.mixup=0.2"), progress=False)
    plain = fit(cfg_for(tmp_path, "name=plain", *over), progress=False)
    assert history(mixed) == history(again) and same_weights(weights(mixed), weights(again))
    assert history(mixed)[0]["train_loss"] != history(plain)[0]["train_loss"]
    info = json.loads((mixed / INFO_FILE).read_text())
    assert info["config"]["augment"]["cutmix"] == 1.0
    with pytest.raises(TrainError, match=r"mixup / augment\.cutmix"):
        fit(cfg_for(tmp_path, "name=f", "train.mode=frozen", "augment.enabled=true", "augment.mixup=0.2"),
            progress=False)
