"""Typed config: YAML loading, key=value overrides, unknown keys named with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lesionlab.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    dump_config,
    load_config,
    load_saved_config,
    with_legacy_defaults,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_dermamnist_study() -> None:
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.train.optimizer == "adam" and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.monitor == "balanced_accuracy"


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {epochs: 3}\n")
    cfg = load_config(path, ["train.epochs=5", "train.lr=3e-4", "data.image_size=[224, 300]", "model.fusion=concat"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.image_size == (224, 300)
    assert cfg.model.fusion == "concat"


def test_int_image_size_means_square() -> None:
    assert load_config(None, ["data.image_size=128"]).data.image_size == (128, 128)


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.epoch=3"], r"unknown config key 'train.epoch'; did you mean epochs"),
    (["trian.epochs=3"], r"unknown config key 'trian'; did you mean train"),
    (["train.optimizer=rmsprop"], r"train.optimizer"),
    (["train.epochs"], r"not of the form key=value"),
])
def test_bad_overrides_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  nmae: resnet50\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.nmae'; did you mean name"):
        load_config(path)


@pytest.mark.parametrize(("text", "message"), [("a: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "mapping")])
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_overrides_do_not_mutate_input() -> None:
    data = {"train": {"epochs": 1}}
    out = apply_overrides(data, ["train.epochs=2"])
    assert data == {"train": {"epochs": 1}} and out["train"]["epochs"] == 2


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=7", "name=rt"])
    path = tmp_path / "r.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads(path: Path) -> None:
    load_config(path)


def test_an_override_is_blamed_for_its_own_error(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lr=fast"])
    assert str(err.value).startswith("command-line override 'train.lr=fast': train.lr:")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.epocs=2"])
    assert str(err.value).startswith("command-line override 'train.epocs=2': unknown config key 'train.epocs'")
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=f"^{path}: train.epochs"):
        load_config(path, ["train.lr=0.1"])


@pytest.mark.parametrize(("saved", "expected"), [
    ({}, "class"),  # written before the key existed: torch's weighting, as the run began
    ({"smoothing_weights": "target"}, "target"),
    ({"smoothing_weights": "class"}, "class"),
])
def test_a_saved_run_config_is_read_as_it_was_meant_when_written(tmp_path: Path, saved: dict, expected: str) -> None:
    cfg = RunConfig.model_validate({"train": {"class_weights": "sqrt", "label_smoothing": 0.1}})
    data = cfg.model_dump(mode="json")
    data["train"].pop("smoothing_weights")
    data["train"].update(saved)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_saved_config(path).train.smoothing_weights == expected
    assert load_saved_config(path, ["train.smoothing_weights=target"]).train.smoothing_weights == "target"
    assert load_config(path).train.smoothing_weights == (saved.get("smoothing_weights") or "target")  # a plain file
    with pytest.raises(ConfigError, match=r"override .train\.smoothing_weights=sample"):
        load_saved_config(path, ["train.smoothing_weights=sample"])


def test_legacy_defaults_fill_only_absent_keys_and_leave_the_input_alone() -> None:
    saved = {"train": {"epochs": 3}, "name": "old"}
    assert with_legacy_defaults(saved)["train"] == {"epochs": 3, "smoothing_weights": "class"}
    assert saved == {"train": {"epochs": 3}, "name": "old"}
    assert with_legacy_defaults({"train": {"smoothing_weights": "target"}})["train"]["smoothing_weights"] == "target"
    assert with_legacy_defaults({"name": "no train section"}) == {"name": "no train section"}


def test_a_file_extends_another_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: base\ndata:\n  image_size: 96\naugment:\n  zoom: [0.9, 1.1]\n"
                                        "train:\n  epochs: 7\n  lr: 0.01\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("extends: ../base.yaml\nname: child\ntrain:\n  lr: 0.002\naugment:\n"
                                    "  zoom: [1.0, 1.2]\n")
    cfg = load_config(sub / "child.yaml", ["train.seed=4"])
    # the child's keys win, the base's other keys stay, lists are replaced whole, overrides come last
    assert (cfg.name, cfg.data.image_size, cfg.train.epochs, cfg.train.lr, cfg.train.seed) == (
        "child", (96, 96), 7, 0.002, 4)
    assert cfg.augment.zoom == (1.0, 1.2)


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "extends: missing.yaml\n"}, r"a.yaml: extends: no such file .*missing.yaml"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, r"b.yaml: extends makes a cycle"),
    ({"a.yaml": "extends: a.yaml\n"}, r"a.yaml: extends makes a cycle"),
    ({"a.yaml": "extends: [b.yaml]\n"}, r"a.yaml: extends must be one file path"),
])
def test_bad_extends_is_named(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.yaml")


def test_the_best_preset_is_the_robust_preset_with_seeds() -> None:
    best = load_config(REPO / "configs" / "cpu-lite0-64-best.yaml")
    robust = load_config(REPO / "configs" / "cpu-lite0-64-robust.yaml")
    assert best.train.ensemble_seeds == [0, 1, 2]
    assert best.model_copy(update={"name": robust.name, "train": best.train.model_copy(
        update={"ensemble_seeds": []})}) == robust


@pytest.mark.parametrize(("seeds", "message"), [("[3]", "one seed"), ("[1,2,1]", "seeds repeat")])
def test_an_ensemble_needs_distinct_seeds(seeds: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"train.ensemble_seeds.*{message}"):
        load_config(None, [f"train.ensemble_seeds={seeds}"])


def test_commands_that_read_only_the_data_section_follow_extends() -> None:
    import argparse

    from lesionlab.data.commands import data_config

    args = argparse.Namespace(config=REPO / "configs" / "cpu-lite0-64-best.yaml", overrides=[], metadata=None,
                              images=None, npz=None, source=None, convert_mode=False)
    data = data_config(args)
    assert data == load_config(REPO / "configs" / "cpu-lite0-64-robust.yaml").data
    assert data.colour_constancy == "shades_of_gray" and data.image_size == (128, 128)
