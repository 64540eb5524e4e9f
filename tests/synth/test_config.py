"""Synthesis configs: every preset loads, unknown keys and inconsistent schedules are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionlab.config import ConfigError
from lesionlab.synth.config import load_synth_config
from lesionlab.synth.schedule import stage_at, stage_plan

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "synth").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(path: Path) -> None:
    cfg = load_synth_config(path)
    plan = stage_plan(cfg)
    assert plan[-1].resolution == cfg.model.resolution
    assert tuple(cfg.data.image_size) == (cfg.model.resolution, cfg.model.resolution)


def test_presets_exist() -> None:
    names = {p.stem for p in PRESETS}
    assert {"smoke", "cpu-32", "cpu-64", "seed-recipe", "gpu-512"} <= names


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.fade_kimgs=3"], "unknown config key 'train.fade_kimgs'"),
    (["train.batch_size=[8, 8]"], "train.batch_size has 2 entries"),
    (["model.resolution=48"], "power of two"),
    (["data.image_size=64"], "differs from model.resolution"),
    (["codes.routing={4: [colour]}"], "unknown code part"),
    (["codes.routing={64: [class]}"], "names resolutions [64]"),
    (["train.q_weights={shape: 1}"], "unknown code part"),
    (["model.upsample=bicubic"], "model.upsample"),
    (["train.mode_seeking=-1"], "train.mode_seeking"),
])
def test_bad_configs_name_the_key(overrides: list[str], message: str) -> None:
    smoke = Path(__file__).resolve().parents[2] / "configs" / "synth" / "smoke.yaml"
    with pytest.raises(ConfigError) as err:
        load_synth_config(smoke, overrides)
    assert message in str(err.value)


def test_stage_plan_and_position() -> None:
    smoke = Path(__file__).resolve().parents[2] / "configs" / "synth" / "smoke.yaml"
    cfg = load_synth_config(smoke, ["train.fade_kimg=[0, 1, 2]", "train.stable_kimg=1", "train.batch_size=[16, 8, 4]"])
    plan = stage_plan(cfg)
    assert [(s.resolution, s.fade, s.stable, s.batch, s.start) for s in plan] == [
        (4, 0, 1000, 16, 0), (8, 1000, 1000, 8, 1000), (16, 2000, 1000, 4, 3000)]
    assert stage_at(plan, 0) == (plan[0], 1.0)
    assert stage_at(plan, 1500) == (plan[1], 0.5)
    assert stage_at(plan, 2500) == (plan[1], 1.0)
    assert stage_at(plan, 4000) == (plan[2], 0.5)
