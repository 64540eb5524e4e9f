"""The run directory: save, load, predict, update, and clear errors for every way it can be damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lesionlab.classes import CLASS_CODES
from lesionlab.config import ModelConfig, RunConfig, load_config
from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.transforms import Preprocessing
from lesionlab.models import create_model
from lesionlab.runs import (
    CONFIG_FILE,
    INFO_FILE,
    WEIGHTS_FILE,
    RunError,
    atomic_write_text,
    load_run,
    save_run,
    seal_run,
    softmax_np,
    update_run_info,
)

TINY = {"name": "test_efficientnet", "pretrained": False}


def _table() -> pd.DataFrame:
    return pd.DataFrame({"age": [30.0, 50.0, np.nan], "sex": ["male", "female", "unknown"],
                         "site": ["back", "face", "unknown"], "split": ["train"] * 3})


def _save(tmp_path: Path, fusion: str = "none") -> tuple[Path, torch.nn.Module, RunConfig]:
    cfg = load_config(None, [f"model.name={TINY['name']}", "model.pretrained=false", f"model.fusion={fusion}",
                             "data.image_size=32"])
    encoder = MetadataEncoder.fit(_table()) if fusion != "none" else None
    torch.manual_seed(0)
    model = create_model(cfg.model, meta_dim=encoder.dim if encoder else 0).eval()
    pre = Preprocessing(size=(32, 32), mean=model.data_config["mean"], std=model.data_config["std"])
    run_dir = save_run(tmp_path / "run", model, cfg, pre, encoder, "abc123", {"epoch": 3, "val_accuracy": 0.5},
                       extra={"data": {"source": "synthetic", "synthetic": True, "fingerprint": "f"}})
    return run_dir, model, cfg


def _images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_save_writes_the_documented_files_and_fields(tmp_path: Path) -> None:
    run_dir, _, _ = _save(tmp_path)
    assert {p.name for p in run_dir.iterdir()} == {WEIGHTS_FILE, INFO_FILE, CONFIG_FILE}
    info = json.loads((run_dir / INFO_FILE).read_text())
    assert info["classes"] == list(CLASS_CODES)
    assert info["model"]["timm_name"] == "test_efficientnet"
    assert info["preprocessing"]["size"] == [32, 32]
    assert info["split"] == {"name": "dermamnist_c", "hash": "abc123"}
    assert info["best"]["epoch"] == 3
    assert info["metadata_encoder"] is None and info["temperature"] is None and info["referral_threshold"] is None
    assert info["config"]["model"]["name"] == "test_efficientnet"
    assert info["data"]["synthetic"] is True


def test_load_run_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    run_dir, model, _ = _save(tmp_path)
    run = load_run(run_dir)
    assert not run.model.training
    assert run.classes == CLASS_CODES
    assert run.preprocessing.size == (32, 32)
    imgs = _images()
    x = torch.stack([run.preprocessing(im) for im in imgs])
    with torch.no_grad():
        expected = torch.softmax(model(x), 1).numpy()
    got = run.predict_proba(imgs, tta=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(run.predict_proba(x, tta=False), expected, atol=1e-5)
    assert got.shape == (4, 7) and np.allclose(got.sum(1), 1.0)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_load_run_keeps_the_resolved_freeze_bn(tmp_path: Path, freeze_bn: bool) -> None:
    """A folded-BatchNorm backbone (shared MobileNetV2) must stay frozen when a reloaded run is trained further."""
    cfg = load_config(None, [f"model.name={TINY['name']}", "model.pretrained=false", "data.image_size=32"])
    model = create_model(cfg.model).eval()
    model.freeze_bn = freeze_bn  # as create_model resolves it from the weights (freeze_bn=None in the config)
    pre = Preprocessing(size=(32, 32), mean=model.data_config["mean"], std=model.data_config["std"])
    run_dir = save_run(tmp_path / "run", model, cfg, pre, None, "abc", {"epoch": 1})
    assert json.loads((run_dir / INFO_FILE).read_text())["model"]["freeze_bn"] is freeze_bn
    assert load_run(run_dir).model.freeze_bn is freeze_bn


def test_predict_with_tta_averages_flip_logits(tmp_path: Path) -> None:
    run_dir, model, _ = _save(tmp_path)
    run = load_run(run_dir)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = (model(x) + model(x.flip(-1)) + model(x.flip(-2))) / 3
    np.testing.assert_allclose(run.predict_logits(x, tta=True), logits.numpy(), atol=1e-5)


def test_temperature_is_applied_after_update(tmp_path: Path) -> None:
    run_dir, _, _ = _save(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    before = load_run(run_dir)
    logits = before.predict_logits(x)
    info = update_run_info(run_dir, temperature=2.0, referral_threshold=0.3)
    assert info["temperature"] == 2.0
    after = load_run(run_dir)
    np.testing.assert_allclose(after.predict_proba(x), softmax_np(logits, 2.0), atol=1e-6)
    with pytest.raises(RunError, match="classes"):
        update_run_info(run_dir, classes=["x"])


def test_fusion_run_needs_and_uses_meta_rows(tmp_path: Path) -> None:
    run_dir, model, _ = _save(tmp_path, fusion="concat")
    run = load_run(run_dir)
    assert run.meta_encoder is not None and run.meta_encoder.dim == model.meta_dim
    rows = [{"age": 40, "sex": "male", "site": "back"}, {"age": None, "sex": "female", "site": "face"}]
    x = torch.randn(2, 3, 32, 32)
    meta = torch.as_tensor(run.meta_encoder.encode_table(pd.DataFrame(rows)))
    with torch.no_grad():
        expected = torch.softmax(model(x, meta), 1).numpy()
    np.testing.assert_allclose(run.predict_proba(x, rows, tta=False), expected, atol=1e-5)
    with pytest.raises(RunError, match="meta_rows"):
        run.predict_proba(x)


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="run directory not found"):
        load_run(tmp_path / "nope")
    run_dir, _, _ = _save(tmp_path)
    (run_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(RunError, match=f"{WEIGHTS_FILE}: listed in .*{INFO_FILE} but missing"):
        load_run(run_dir)
    (run_dir / INFO_FILE).unlink()
    with pytest.raises(RunError, match=f"{INFO_FILE}: missing"):
        load_run(run_dir)


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    run_dir, _, _ = _save(tmp_path)
    path = run_dir / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RunError, match=r"model\.safetensors: .* bytes, but .*run\.json lists .* \(truncated"):
        load_run(run_dir)
    seal_run(run_dir)  # a run without the check still refuses the damaged file when it reads it
    with pytest.raises(RunError, match=r"model\.safetensors: cannot read weights \(truncated or corrupt"):
        load_run(run_dir)


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"format_version": 99}', "format_version 99"),
])
def test_bad_json_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    run_dir, _, _ = _save(tmp_path)
    (run_dir / INFO_FILE).write_text(text)
    with pytest.raises(RunError, match=f"{INFO_FILE}.*{match}"):
        load_run(run_dir)


def test_class_order_different_from_the_projects_is_refused(tmp_path: Path) -> None:
    run_dir, _, _ = _save(tmp_path)
    info = json.loads((run_dir / INFO_FILE).read_text())
    info["classes"] = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"]
    atomic_write_text(run_dir / INFO_FILE, json.dumps(info))
    with pytest.raises(RunError, match="class order"):
        load_run(run_dir)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    run_dir, _, _ = _save(tmp_path)
    other = create_model(ModelConfig(name="test_resnet", pretrained=False))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(run_dir / WEIGHTS_FILE))
    with pytest.raises(RunError, match="truncated or replaced"):  # the manifest notices first
        load_run(run_dir)
    seal_run(run_dir)  # listed as if the run had been written that way
    with pytest.raises(RunError, match="weights do not match the architecture"):
        load_run(run_dir)


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    run_dir, model, _ = _save(tmp_path)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["head.classifier.weight"] = torch.zeros(5, state["head.classifier.weight"].shape[1])
    save_file(state, str(run_dir / WEIGHTS_FILE))
    seal_run(run_dir)  # listed as if the run had been written that way: the architecture check still refuses it
    with pytest.raises(RunError, match=r"weights do not match the architecture.*size mismatch"):
        load_run(run_dir)


def test_resave_keeps_fitted_temperature(tmp_path: Path) -> None:
    run_dir, model, cfg = _save(tmp_path)
    update_run_info(run_dir, temperature=1.5)
    pre = Preprocessing(size=(32, 32))
    save_run(run_dir, model, cfg, pre, None, "abc123", {"epoch": 4})
    assert json.loads((run_dir / INFO_FILE).read_text())["temperature"] == 1.5


def test_load_run_does_not_download_pretrained_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, ["model.name=test_efficientnet", "model.pretrained=true", "data.image_size=32"])
    model = create_model(cfg.model.model_copy(update={"pretrained": False}))
    save_run(tmp_path / "r", model, cfg, Preprocessing(size=(32, 32)), None, "h", {"epoch": 0})
    import timm

    real = timm.create_model

    def no_pretrained(*args, **kwargs):
        assert not kwargs.get("pretrained"), "load_run asked timm for pretrained weights"
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_pretrained)
    run = load_run(tmp_path / "r")
    assert run.config.model.pretrained is True  # the saved config is untouched; only the rebuild skips weights


def test_dihedral_views_are_the_eight_symmetries_of_the_square() -> None:
    from lesionlab.runs import ViewsError, dihedral_views, flip_views, views_of

    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # no symmetry of its own: every view differs
    views = dihedral_views(x)
    assert len(views) == 8 and len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert all(sorted(v.flatten().tolist()) == list(range(9)) for v in views)  # exact pixel moves
    assert all(any(torch.equal(f, v) for v in views) for f in flip_views(x))  # the flips are among them
    assert len(views_of(x, "flips")) == 3 and len(views_of(x, "dihedral")) == 8
    with pytest.raises(ViewsError, match="square"):
        views_of(torch.zeros(1, 3, 4, 6), "dihedral")
    with pytest.raises(ViewsError, match="not one of flips, dihedral"):
        views_of(x, "rot45")
