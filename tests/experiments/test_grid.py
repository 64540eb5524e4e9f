"""Grid files: validation with file-and-key errors, and expansion into runs with stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lesionlab.config import ConfigError, RunConfig, computation_dict
from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import config_hash, expand

REPO = Path(__file__).resolve().parents[2]

GRID = {
    "name": "toy",
    "base": {"data": {"source": "synthetic"}, "train": {"epochs": 1}},
    "axes": {
        "model": {"a": {"model.name": "resnet18"}, "b": {"model": {"name": "mobilenetv2_100"}}},
        "resolution": {"64x64": {"data.image_size": [64, 64]}, "48x64": {"data.image_size": [48, 64],
                                                                          "data.resize": "aspect"}},
        "clinical": {"off": {"model.fusion": "none"}, "on": {"model.fusion": "concat"}},
    },
    "repeat": {"seeds": [0, 1, 2]},
    "compare": ["resolution", {"axis": "clinical", "metric": "balanced_accuracy"}],
}


def write(tmp_path: Path, data: dict, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_expansion_is_the_full_product_with_labels(tmp_path: Path) -> None:
    cfg, base = load_grid(write(tmp_path, {**GRID, "output_dir": str(tmp_path / "out")}))
    plan = expand(cfg, base)
    assert len(plan) == 2 * 2 * 2 * 3
    assert cfg.label_names == ["model", "resolution", "clinical", "seed"]
    first = plan[0]
    assert first.labels == {"model": "a", "resolution": "64x64", "clinical": "off", "seed": "0"}
    assert first.config.model.name == "resnet18" and first.config.train.seed == 0
    assert first.config.train.epochs == 1 and first.config.data.source == "synthetic"
    run = next(r for r in plan if r.labels == {"model": "b", "resolution": "48x64", "clinical": "on", "seed": "2"})
    assert run.config.data.image_size == (48, 64) and run.config.data.resize == "aspect"
    assert run.config.model.fusion == "concat" and run.config.train.seed == 2
    assert run.run_id.startswith("b-48x64-on-2-")
    assert run.run_dir == tmp_path / "out" / "runs" / run.run_id
    assert run.config.name == run.run_id
    assert len({r.run_id for r in plan}) == len(plan)


def test_run_ids_are_stable_and_follow_the_config(tmp_path: Path) -> None:
    cfg, base = load_grid(write(tmp_path, GRID))
    ids = [r.run_id for r in expand(cfg, base)]
    assert ids == [r.run_id for r in expand(*load_grid(write(tmp_path, GRID)))]
    # where outputs go and execution-only settings do not change what a run computes
    moved = load_grid(write(tmp_path, {**GRID, "output_dir": "elsewhere"}), ["base.train.device=cpu"])
    assert [r.run_id for r in expand(*moved)] == ids
    # a changed training setting changes every id
    changed = load_grid(write(tmp_path, GRID), ["base.train.epochs=2"])
    assert not set(r.run_id for r in expand(*changed)) & set(ids)


MIX_KEYS = {"mixup", "cutmix", "mix_p", "mix_switch_p"}


def test_an_option_left_off_keeps_the_ids_finished_runs_had_before_it_existed() -> None:
    # the default config's id before batch mixing was added: a grid's finished runs must still be found after an
    # upgrade that adds an option they do not use
    assert config_hash(RunConfig()) == "69752bd3"
    assert not MIX_KEYS & set(computation_dict(RunConfig())["augment"])
    idle = RunConfig.model_validate({"augment": {"mix_p": 0.3, "mix_switch_p": 0.9}})  # no effect while mixing is off
    assert config_hash(idle) == config_hash(RunConfig())
    mixed = RunConfig.model_validate({"augment": {"mixup": 0.2}})
    assert set(computation_dict(mixed)["augment"]) >= MIX_KEYS
    assert config_hash(mixed) != config_hash(RunConfig())
    assert config_hash(mixed) != config_hash(RunConfig.model_validate({"augment": {"mixup": 0.2, "mix_p": 0.5}}))


@pytest.mark.parametrize(("train", "in_id"), [
    ({"class_weights": "sqrt", "label_smoothing": 0.1}, True),  # the new default: a new computation, a new id
    ({"class_weights": "sqrt", "label_smoothing": 0.1, "smoothing_weights": "class"}, False),  # as runs before it
    ({"class_weights": "sqrt"}, False),  # no smoothing: both ways are the same loss
    ({"label_smoothing": 0.1, "smoothing_weights": "target"}, False),  # no weights: the same loss
])
def test_smoothing_weights_enter_the_id_only_where_they_change_the_loss(train: dict, in_id: bool) -> None:
    cfg = RunConfig.model_validate({"train": train})
    assert ("smoothing_weights" in computation_dict(cfg)["train"]) is in_id
    legacy = RunConfig.model_validate({"train": {**train, "smoothing_weights": "class"}})
    assert (config_hash(cfg) != config_hash(legacy)) is in_id


def test_base_config_file_is_relative_to_the_grid(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.01\n")
    (tmp_path / "configs" / "grids").mkdir()
    grid = {**GRID, "base_config": "../base.yaml", "base": {"train.lr": 0.5}}
    cfg, base = load_grid(write(tmp_path / "configs" / "grids", grid))
    run = expand(cfg, base)[0]
    assert run.config.train.epochs == 7 and run.config.train.lr == 0.5


def test_yaml_boolean_levels_become_on_off(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("name: t\naxes:\n  clinical:\n    off: {model.fusion: none}\n    on: {model.fusion: concat}\n")
    cfg, base = load_grid(path)
    assert list(cfg.axes["clinical"]) == ["off", "on"]
    assert [r.labels["clinical"] for r in expand(cfg, base)] == ["off", "on"]


def test_folds_give_each_fold_its_own_split_file(tmp_path: Path) -> None:
    grid = {**GRID, "repeat": {"folds": 3, "fold_seed": 4}, "output_dir": str(tmp_path / "o")}
    cfg, base = load_grid(write(tmp_path, grid))
    plan = expand(cfg, base)
    assert len(plan) == 8 * 3 and cfg.label_names[-1] == "fold"
    assert {r.fold for r in plan} == {0, 1, 2}
    assert plan[1].config.data.split == str(tmp_path / "o" / "splits" / "fold1-of3-seed4.csv")
    assert plan[1].config.train.seed == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"axis": {}}, "unknown key 'axis'; did you mean axes"),
    ({"repeat": {"sedes": [0]}}, "unknown key 'repeat.sedes'; did you mean seeds"),
    ({"compare": [{"axsi": "model"}]}, "unknown key 'compare[0].axsi'; did you mean axis"),
    ({"evaluate": {"split": "test", "ttta": True}}, "unknown key 'evaluate.ttta'; did you mean tta"),
    ({"base": {"train": {"epoch": 3}}}, "unknown config key 'train.epoch'; did you mean epochs"),
    ({"axes": {"model": {"a": {"model.nmae": "x"}}}}, "axes.model.a: unknown config key 'model.nmae'"),
    ({"axes": {"model": {"a": {"model.name": "x"}, "b": {"model.name": "x"}}}, "compare": []},
     "resolve to the same config"),
    ({"axes": {"seed": {"a": {"train.lr": 0.1}}}}, "reserved for the repeat dimension"),
    ({"repeat": {"seeds": [0], "folds": 5}}, "either repeat.seeds or repeat.folds"),
    ({"compare": ["resolutoin"]}, "unknown axis 'resolutoin'; did you mean resolution"),
    ({"compare": [{"axis": "clinical", "pairs": [["off", "of"]]}]}, "'of' is not a level of axis 'clinical'"),
    ({"report": {"rows": ["modle"]}}, "report.rows names unknown axis 'modle'"),
    ({"axes": {"model": {"a": {"model.fusion": "concat"}},
               "clinical": {"off": {"model.fusion": "none"}}}, "compare": []}, "both set 'model.fusion'"),
    ({"workers": 0}, "workers"),
])
def test_bad_grids_name_the_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, {**GRID, **change})
    with pytest.raises(ConfigError) as err:
        expand(*load_grid(path), where=str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_folds_and_an_axis_setting_the_split_conflict(tmp_path: Path) -> None:
    grid = {**GRID, "repeat": {"folds": 2}, "compare": [],
            "axes": {"split": {"a": {"data.split": "lesion"}, "b": {"data.split": "dermamnist"}}}}
    path = write(tmp_path, grid)
    with pytest.raises(ConfigError, match=r"repeat\.folds gives each fold its own split"):
        expand(*load_grid(path), where=str(path))


def test_missing_grid_file_and_base_config_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_grid(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"base\.yaml"):
        load_grid(write(tmp_path, {**GRID, "base_config": "base.yaml"}))


def test_overrides_apply_to_the_grid(tmp_path: Path) -> None:
    cfg, base = load_grid(write(tmp_path, GRID), ["workers=3", "repeat.seeds=[5]"])
    assert cfg.workers == 3
    assert [r.labels["seed"] for r in expand(cfg, base)] == ["5"] * 8


def _protocol_and_grid(tmp_path: Path, own: dict) -> Path:
    """configs/base.yaml, configs/grids/protocols/cv.yaml (a partial grid) and configs/grids/g.yaml extending it."""
    grids = tmp_path / "configs" / "grids"
    (grids / "protocols").mkdir(parents=True)
    (tmp_path / "configs" / "base.yaml").write_text("data:\n  source: synthetic\ntrain:\n  epochs: 7\n  lr: 0.01\n")
    protocol = {"base_config": "../../base.yaml", "base": {"train": {"lr": 0.5, "batch_size": 16}},
                "repeat": {"folds": 3, "fold_seed": 4}, "report": {"metrics": ["accuracy", "error_rate"]},
                "workers": 2}
    write(grids / "protocols", protocol, "cv.yaml")
    return write(grids, {"name": "g", "extends": "protocols/cv.yaml", **own}, "g.yaml")


def test_a_grid_extending_a_protocol_is_the_grid_written_out(tmp_path: Path) -> None:
    axes = {"variant": {"x": {"train.epochs": 2}, "y": {}}}
    cfg, base = load_grid(_protocol_and_grid(tmp_path, {"axes": axes, "output_dir": "out"}))
    flat = {"name": "g", "base_config": "../base.yaml", "base": {"train": {"lr": 0.5, "batch_size": 16}},
            "axes": axes, "repeat": {"folds": 3, "fold_seed": 4},
            "report": {"metrics": ["accuracy", "error_rate"]}, "workers": 2, "output_dir": "out"}
    flat_cfg, flat_base = load_grid(write(tmp_path / "configs" / "grids", flat, "flat.yaml"))
    assert cfg.workers == 2 and cfg.repeat.folds == 3
    runs = expand(cfg, base)
    assert [r.run_id for r in runs] == [r.run_id for r in expand(flat_cfg, flat_base)]
    # the protocol's base_config (relative to the protocol) reached the right file: epochs 7, lr from its base
    assert runs[3].config.train.epochs == 7 and runs[3].config.train.lr == 0.5 and runs[0].config.train.epochs == 2


def test_an_extending_grid_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    own = {"axes": {"variant": {"x": {}}}, "base": {"train.lr": 0.1}, "repeat": {"folds": 4},
           "report": {"metrics": ["balanced_accuracy"]}}
    cfg, base = load_grid(_protocol_and_grid(tmp_path, own))
    assert cfg.repeat.folds == 4 and cfg.repeat.fold_seed == 4  # merged key by key
    assert cfg.report.metrics == ["balanced_accuracy"]  # a list replaces
    run = expand(cfg, base)[0]
    assert run.config.train.lr == 0.1 and run.config.train.batch_size == 16


def test_a_protocol_may_extend_another(tmp_path: Path) -> None:
    path = _protocol_and_grid(tmp_path, {"axes": {"variant": {"x": {}}}})
    protocols = tmp_path / "configs" / "grids" / "protocols"
    write(protocols, {"extends": "cv.yaml", "workers": 3}, "cv-3.yaml")
    path.write_text(path.read_text().replace("protocols/cv.yaml", "protocols/cv-3.yaml"))
    cfg, base = load_grid(path)
    assert cfg.workers == 3 and cfg.repeat.fold_seed == 4
    assert expand(cfg, base)[0].config.train.epochs == 7


@pytest.mark.parametrize(("extends", "message"), [
    ("protocols/nope.yaml", r"g\.yaml: extends: no such file .*nope\.yaml"),
    (["protocols/cv.yaml"], r"g\.yaml: extends must be one file path"),
    ("g.yaml", r"g\.yaml: extends makes a cycle"),
])
def test_bad_extends_is_named(tmp_path: Path, extends: object, message: str) -> None:
    path = _protocol_and_grid(tmp_path, {"axes": {"variant": {"x": {}}}})
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "extends": extends}))
    with pytest.raises(ConfigError, match=message):
        load_grid(path)


@pytest.mark.parametrize(("grid", "run_ids"), [
    # the ids of the runs whose figures docs/BENCHMARKS.md reports ("Generalisation push"): a change to the protocol,
    # the robust preset or the id scheme that moves them means those figures no longer describe the shipped files
    ("cpu-monitor", ["monitor_nll-0-b08ff5f7", "monitor_nll-1-1c156e86", "monitor_nll-2-743e0193"]),
    ("cpu-fusion", ["metablock-0-81c4ded2", "metablock-1-aa9ab6e2", "metablock-2-f8946e88"]),
    ("cpu-schedule", ["epochs_15-0-f37e3bfc", "epochs_15-1-852060aa", "epochs_15-2-36117b55",
                      "px112_epochs14-0-3d2e279b", "px112_epochs14-1-12bf9c1c", "px112_epochs14-2-19cff92f"]),
    ("cpu-regularise", ["drop_path_02-0-64d0dfab", "drop_path_02-1-8bd1cd37", "drop_path_02-2-8c09a07f",
                        "weight_decay_025-0-1302bdfe", "weight_decay_025-1-841f80ef", "weight_decay_025-2-24450850"]),
    ("cpu-freeze-bn", ["freeze_bn-0-dda260b5", "freeze_bn-1-a05e9f51", "freeze_bn-2-a7c0f666"]),
    ("cpu-optimiser", ["cosine-0-ef5476fa", "cosine-1-2d7b3fb1", "cosine-2-fac01759",
                       "sgd-0-a1cf9589", "sgd-1-b6d0b881", "sgd-2-888a8cab"]),
    ("cpu-grad-clip", ["grad_clip_1-0-8053f951", "grad_clip_1-1-a22a0186", "grad_clip_1-2-adcea4ce"]),
    ("cpu-loss-layers", ["layer_decay_08-0-2286cab6", "layer_decay_08-1-e8592108", "layer_decay_08-2-e2fda3f3",
                         "logit_adjust_05-0-ecd95b76", "logit_adjust_05-1-bbdd8b88", "logit_adjust_05-2-a8177a74"]),
    ("cpu-focal", ["focal_2-0-6857d54a", "focal_2-1-083cf85f", "focal_2-2-5abfc144"]),
    ("cpu-rotation", ["rotation_45-0-582bf1e5", "rotation_45-1-983b8d82", "rotation_45-2-069a8a05"]),
])
def test_shipped_cv_grids_keep_the_run_ids_of_their_reported_runs(grid: str, run_ids: list[str]) -> None:
    assert sorted(r.run_id for r in expand(*load_grid(REPO / "configs" / "grids" / f"{grid}.yaml"))) == run_ids
