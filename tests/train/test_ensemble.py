"""`lesionlab ensemble`: trained runs as one run directory whose logits are the members' mean."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionlab.cli import main
from lesionlab.config import load_config
from lesionlab.runs import INFO_FILE, RunError, load_run
from lesionlab.train import fit

BASE = ["data.source=synthetic", "data.synthetic_n=140", "data.image_size=32", "augment.enabled=false",
        "model.name=test_efficientnet", "train.mode=scratch", "train.epochs=1", "train.batch_size=16",
        "train.channels_last=off", "train.class_weights=sqrt"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("members")
    over = [*BASE, f"output_dir={tmp}", f"data.cache_dir={tmp / 'cache'}"]
    return [fit(load_config(None, [*over, f"name=m{s}", f"train.seed={s}"]), progress=False) for s in (0, 1, 2)]


def test_ensemble_run_averages_its_members(members: list[Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    assert "ensemble of 3 runs" in capsys.readouterr().out
    info = json.loads((out / INFO_FILE).read_text())
    assert info["model"]["name"] == "ensemble" and len(info["ensemble"]["members"]) == 3
    assert info["training"]["seconds"] == pytest.approx(sum(
        json.loads((m / INFO_FILE).read_text())["training"]["seconds"] for m in members))
    # its own file manifest (not the first member's), no fitted artifact of a member
    assert {"model.safetensors", "config.yaml"} <= set(info["files"]) and "scope" not in info
    ens = load_run(out)
    x = torch.rand(4, 3, 32, 32)
    expected = np.mean([load_run(m).predict_logits(x) for m in members], axis=0)
    assert np.allclose(ens.predict_logits(x), expected, atol=1e-5)
    assert ens.tta == load_run(members[0]).tta and ens.preprocessing == load_run(members[0]).preprocessing
    # an ordinary run for evaluation: calibration, both decision rules (the members' shared training prior)
    assert main(["evaluate", str(out), "--calibrate", "--bootstrap", "0", "--timing-images", "2", "--no-report",
                 "--audit", "none", "--allow-synthetic"]) == 0
    doc = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert doc["run"]["model"] == "ensemble" and "balanced_accuracy" in doc["decision_rules"]["balanced"]
    assert json.loads((out / INFO_FILE).read_text())["temperature"] > 0


def test_members_must_be_fed_alike(members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = fit(load_config(None, [*BASE, "data.image_size=24", f"output_dir={tmp_path}", "name=small"]),
                progress=False)
    assert main(["ensemble", str(members[0]), str(other), "--out", str(tmp_path / "bad")]) == 1
    assert "preprocessing differs" in capsys.readouterr().err
    assert main(["ensemble", str(members[0]), "--out", str(tmp_path / "one")]) == 1
    assert "at least two runs" in capsys.readouterr().err


def test_one_command_trains_the_seeds_and_joins_them(members: list[Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "best"
    cache = members[0].parent / "cache"
    args = ["train", str(run), *BASE, f"data.cache_dir={cache}", "train.ensemble_seeds=[0,1]", "--no-progress"]
    assert main(args) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    info = json.loads((run / INFO_FILE).read_text())
    assert info["model"]["name"] == "ensemble" and info["config"]["train"]["ensemble_seeds"] == [0, 1]
    # each member is the same computation as the config trained with that seed alone (training is deterministic)
    ens, x = load_run(run), torch.rand(4, 3, 32, 32)
    for seed in (0, 1):
        member = load_run(run / "members" / f"seed-{seed}")
        assert np.allclose(member.predict_logits(x), load_run(members[seed]).predict_logits(x), atol=1e-6)
    assert np.allclose(ens.predict_logits(x), np.mean([load_run(m).predict_logits(x) for m in members[:2]], axis=0),
                       atol=1e-5)
    # the members keep manifests of their own: writing into one leaves the ensemble loadable
    assert not any(name.startswith("members/") for name in info["files"])
    assert main(["evaluate", str(run / "members" / "seed-0"), "--bootstrap", "0", "--timing-images", "0",
                 "--no-report", "--audit", "none", "--allow-synthetic"]) == 0
    load_run(run)
    # the same command again: nothing to do
    weights = (run / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0 and (run / "model.safetensors").stat().st_mtime_ns == weights


def test_an_interrupted_seed_ensemble_trains_only_what_is_missing(members: list[Path], tmp_path: Path) -> None:
    run = tmp_path / "best"
    over = [*BASE, f"data.cache_dir={members[0].parent / 'cache'}", "train.ensemble_seeds=[0,2]"]
    fit(load_config(None, over), run_dir=run, progress=False)
    first = (run / "members" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    # as if killed after the first member: the second member and the ensemble gone, the recipe written at the start
    shutil.rmtree(run / "members" / "seed-2")
    for name in ("run.json", "model.safetensors"):
        (run / name).unlink()
    assert main(["train", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "members" / "seed-0" / "model.safetensors").stat().st_mtime_ns == first
    x = torch.rand(2, 3, 32, 32)
    assert np.allclose(load_run(run / "members" / "seed-2").predict_logits(x), load_run(members[2]).predict_logits(x),
                       atol=1e-6)
    assert load_run(run).info["ensemble"]["members"][1]["name"] == "seed-2"


def test_seed_ensemble_refusals(members: list[Path], tmp_path: Path) -> None:
    over = [*BASE, f"data.cache_dir={members[0].parent / 'cache'}", "train.ensemble_seeds=[0,1]"]
    with pytest.raises(RunError, match="nothing to resume"):
        fit(load_config(None, over), run_dir=tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        fit(load_config(None, over), run_dir=members[0], resume=False, progress=False)
    # a complete ensemble trained with other settings is not overwritten
    run = tmp_path / "done"
    fit(load_config(None, over), run_dir=run, progress=False)
    with pytest.raises(RunError, match="different config"):
        fit(load_config(None, [*over, "train.lr=0.5"]), run_dir=run, progress=False)
