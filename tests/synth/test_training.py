"""Training: outputs per stage, determinism on CPU, resume after a kill, run-directory states."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lesionlab.synth.batches import at_stage, real_batch
from lesionlab.synth.errors import SynthError
from lesionlab.synth.run import CHECKPOINT_FILE, load_synth_run
from lesionlab.synth.training import train_synth

from .conftest import tiny_config


def test_a_run_holds_everything(trained_run: Path) -> None:
    info = json.loads((trained_run / "synth.json").read_text())
    assert info["status"] == "complete" and info["data"]["synthetic"] is True
    assert info["images"] >= 500 and not (trained_run / CHECKPOINT_FILE).exists()
    for res in (4, 8, 16):
        assert (trained_run / "stages" / f"stage-{res:02d}px.safetensors").is_file()
        assert (trained_run / "samples" / f"stage-{res:02d}px.png").is_file()
    history = pd.read_csv(trained_run / "history.csv")
    assert {"w_dist", "gp", "q_real", "q_gen", "alpha", "resolution"} <= set(history.columns)
    assert set(history["resolution"]) == {4, 8, 16}
    run = load_synth_run(trained_run)
    assert run.resolution == 16 and run.synthetic_source


def test_same_seed_same_weights_and_resume_after_a_kill(tmp_path: Path) -> None:
    """A run killed after a checkpoint and resumed ends with exactly the weights of an uninterrupted run."""
    cfg = tiny_config(tmp_path, "train.fade_kimg=0.064", "train.stable_kimg=0.064", "train.checkpoint_kimg=0.032")
    straight = train_synth(cfg, run_dir=tmp_path / "straight", progress=False)

    class Kill(Exception):
        pass

    def kill_after(step: int, row: dict) -> None:
        if row["images"] >= 240:  # mid-stage, a few steps after the checkpoint at 224 images
            raise Kill

    with pytest.raises(Kill):
        train_synth(cfg, run_dir=tmp_path / "killed", progress=False, callbacks=(kill_after,))
    assert (tmp_path / "killed" / CHECKPOINT_FILE).is_file()
    resumed = train_synth(cfg, run_dir=tmp_path / "killed", progress=False)
    a = load_file(str(straight / "generator.safetensors"))
    b = load_file(str(resumed / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(straight / "critic.safetensors"))
    d = load_file(str(resumed / "critic.safetensors"))
    assert all(torch.equal(c[k], d[k]) for k in c)
    h1 = pd.read_csv(straight / "history.csv")
    h2 = pd.read_csv(resumed / "history.csv")
    pd.testing.assert_frame_equal(h1, h2)


def test_a_complete_run_is_left_alone_and_a_changed_config_refused(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    before = (copy / "generator.safetensors").stat().st_mtime_ns
    cfg = tiny_config(trained_run.parent)
    train_synth(cfg, run_dir=copy, progress=False)
    assert (copy / "generator.safetensors").stat().st_mtime_ns == before
    with pytest.raises(SynthError, match="another config"):
        train_synth(tiny_config(trained_run.parent, "train.lr=0.002"), run_dir=copy, progress=False)


def test_a_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    (run_dir / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(SynthError, match="truncated or corrupt"):
        train_synth(cfg, run_dir=run_dir, progress=False)


def test_a_pickled_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    """Nothing read from disk may run code: a torch.save pickle is refused before anything opens it."""
    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "pickled"
    run_dir.mkdir()
    torch.save({"format": 1, "images": 0}, run_dir / CHECKPOINT_FILE)
    with pytest.raises(SynthError, match="never unpickles"):
        train_synth(cfg, run_dir=run_dir, progress=False)


def test_the_checkpoint_is_safetensors_with_a_json_header(tmp_path: Path) -> None:
    from safetensors import safe_open

    from lesionlab.synth.checkpoint import TREE_KEY, load_checkpoint, save_checkpoint

    path = tmp_path / CHECKPOINT_FILE
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2, 3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(2, 3)
    opt.step()
    state = {"generator": {"w": torch.arange(6.0).view(2, 3)}, "critic": {}, "generator_ema": {},
             "opt_g": opt.state_dict(), "opt_d": opt.state_dict(), "rng": torch.Generator().manual_seed(3).get_state(),
             "images": 64, "step": 2, "history": [{"w_dist": float("nan")}]}
    save_checkpoint(path, state)
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()[TREE_KEY])
    assert header["images"] == 64 and header["generator"]["w"] == {"__tensor__": "t0"}
    back = load_checkpoint(path)
    assert torch.equal(back["generator"]["w"], state["generator"]["w"]) and torch.equal(back["rng"], state["rng"])
    assert torch.equal(back["opt_g"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["step"] == 2 and back["history"][0]["w_dist"] != back["history"][0]["w_dist"]  # NaN survives


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_a_damaged_run_file_is_refused_by_name(trained_run: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    info = json.loads((copy / "synth.json").read_text())
    assert "generator.safetensors" in info["files"] and "synth.json" not in info["files"]
    target = copy / "generator.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:-10] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SynthError, match=r"generator\.safetensors"):
        load_synth_run(copy)


def test_real_batches_are_augmented_and_brought_to_the_stage() -> None:
    from lesionlab.synth.batches import TrainingData

    images = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3).numpy()
    data = TrainingData(images, pd.DataFrame(), None, torch.ones(2) / 2, {})  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    plain = real_batch(data, torch.tensor([0, 1]), "none", gen)
    assert plain.shape == (2, 3, 4, 4) and plain.min() >= -1 and plain.max() <= 1
    flipped = [real_batch(data, torch.tensor([0, 1]), "dihedral", gen) for _ in range(20)]
    assert any(not torch.equal(f, plain) for f in flipped)
    assert all(torch.allclose(f.mean(dim=(2, 3)), plain.mean(dim=(2, 3))) for f in flipped)  # same pixels, moved
    low = at_stage(plain, 2, 1.0)
    assert low.shape == (2, 3, 2, 2)
    half = at_stage(plain, 4, 0.0)  # fade start: the previous stage, upsampled
    assert torch.allclose(half[:, :, 0, 0], half[:, :, 1, 1])


def test_diff_augment_is_differentiable_and_seeded() -> None:
    from lesionlab.synth.batches import diff_augment

    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    a = diff_augment(x, ["color", "translation"], 0.25, torch.Generator().manual_seed(1))
    b = diff_augment(x, ["color", "translation"], 0.25, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    shifted = diff_augment(torch.ones(64, 1, 8, 8), ["translation"], 0.25, torch.Generator().manual_seed(0))
    assert (shifted == 0).any() and shifted.max() == 1  # zero padding enters where the image moved away
    assert torch.equal(diff_augment(x, [], 0.25, torch.Generator()), x)


@pytest.mark.parametrize(("n", "expected"), [(2, [0, 0]), (5, [0, 1, 0, 1, 4]), (6, [0, 1, 2, 0, 1, 2])])
def test_mode_seeking_pairs_share_codes(n: int, expected: list[int]) -> None:
    from lesionlab.synth.training import mode_seeking_pairs

    assert mode_seeking_pairs(n).tolist() == expected


def test_mode_seeking_term_rewards_images_that_follow_the_noise() -> None:
    from lesionlab.synth.training import mode_seeking_term

    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    same = torch.zeros(8, 3, 4, 4)
    varied = same.clone()
    varied[4:] += 0.5
    term_same, ratio_same = mode_seeking_term(same, z)
    term_varied, ratio_varied = mode_seeking_term(varied, z)
    assert float(ratio_same) == 0.0 and float(term_same) == pytest.approx(1e5)
    assert float(ratio_varied) == pytest.approx(0.5 / float((z[:4] - z[4:]).abs().mean()))
    assert float(term_varied) < float(term_same)


def test_mode_seeking_training_logs_its_ratio_and_stays_deterministic(tmp_path: Path) -> None:
    a = train_synth(tiny_config(tmp_path / "a", "train.mode_seeking=1"), run_dir=tmp_path / "a" / "run", progress=False)
    b = train_synth(tiny_config(tmp_path / "b", "train.mode_seeking=1"), run_dir=tmp_path / "b" / "run", progress=False)
    history = pd.read_csv(a / "history.csv")
    assert "ms_ratio" in history and history["ms_ratio"].notna().all() and (history["ms_ratio"] > 0).all()
    wa, wb = load_file(a / "generator.safetensors"), load_file(b / "generator.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_used_only_where_the_cpu_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """Emulated bf16 is several times slower than float32: a CPU without it trains in float32 and the run says so."""
    from lesionlab.synth.training import build_trainer

    monkeypatch.setattr("lesionlab.synth.training.cpu_has_native_bf16", lambda: native)
    tr = build_trainer(tiny_config(tmp_path, "train.bf16=true", "train.device=cpu"), tmp_path / "run", resume=False,
                       progress=False)
    assert tr.bf16 is native
    assert any("no native bf16" in n for n in tr.notes) is not native
    with tr.autocast():
        assert torch.is_autocast_enabled("cpu") is native
