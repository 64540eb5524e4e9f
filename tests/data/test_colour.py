"""Colour constancy (Shades of Gray) and its place in the preprocessing; corruption augmentation in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionlab.config import AugmentConfig, ConfigError, load_config
from lesionlab.data.colour import ColourError, ShadesOfGray, illuminant, shades_of_gray
from lesionlab.data.corruptions import CorruptionError, RandomCorruption
from lesionlab.data.transforms import Preprocessing, build_train_transform, seeded


def scene(seed: int = 0, size: int = 48) -> np.ndarray:
    """A varied scene under a neutral light (values well inside 0-255, so a tint never clips)."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 170, (size, size, 3)).astype(np.uint8)


def tinted(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(np.rint(image.astype(float) * np.asarray(gains)), 0, 255).astype(np.uint8)


def test_shades_of_gray_removes_the_colour_of_the_light() -> None:
    base = scene()
    warm, cold = (1.2, 1.0, 0.8), (0.8, 1.0, 1.2)  # two lights of the same strength (equal norm)
    a, b = shades_of_gray(tinted(base, warm)), shades_of_gray(tinted(base, cold))
    assert np.abs(a.astype(int) - b).mean() < 1.0  # two lights, one corrected image
    assert np.abs(tinted(base, warm).astype(int) - tinted(base, cold)).mean() > 15
    # a stronger light of another colour: the same image up to overall brightness
    c = shades_of_gray(tinted(base, (1.3, 1.1, 0.9))).astype(float)
    assert np.abs(c / c.mean() - a / a.mean()).mean() < 0.02


def test_a_neutral_light_changes_nothing_and_brightness_is_kept() -> None:
    grey = np.stack([scene(1)[..., 0]] * 3, axis=-1)  # equal channels: the light estimate is neutral
    np.testing.assert_allclose(illuminant(grey), np.full(3, 1 / np.sqrt(3)), atol=1e-9)
    np.testing.assert_array_equal(shades_of_gray(grey), grey)
    dark = shades_of_gray(tinted(scene(2), (0.5, 0.5, 0.5)))
    assert dark.mean() == pytest.approx(shades_of_gray(scene(2)).mean() / 2, rel=0.03)


def test_power_one_is_gray_world_and_bad_inputs_fail() -> None:
    image = scene(3)
    e = illuminant(image, 1.0)
    mean = image.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(e, mean / np.linalg.norm(mean), rtol=1e-9)
    np.testing.assert_array_equal(shades_of_gray(np.zeros((4, 4, 3), np.uint8)), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ColourError, match="power of at least 1"):
        illuminant(image, 0.5)
    with pytest.raises(ColourError, match="uint8"):
        shades_of_gray(image.astype(np.float32))
    with pytest.raises(ColourError, match=r"uint8 \[3, H, W\]"):
        ShadesOfGray()(torch.zeros(3, 4, 4))


def test_preprocessing_carries_colour_constancy_and_old_runs_still_load() -> None:
    pre = Preprocessing(size=(48, 48), colour_constancy="shades_of_gray", colour_constancy_power=4)
    record = pre.to_dict()
    assert record["colour_constancy"] == "shades_of_gray" and Preprocessing.from_dict(record) == pre
    plain = Preprocessing(size=(48, 48))
    assert set(plain.to_dict()) == {"size", "resize", "mean", "std", "source_size"}  # written as before
    assert Preprocessing.from_dict(plain.to_dict()) == plain
    with pytest.raises(ValueError, match="expected"):
        Preprocessing.from_dict({**record, "gamma": 2})
    with pytest.raises(ColourError, match="not one of"):
        Preprocessing(size=(8, 8), colour_constancy="retinex")
    # the model sees the same tensor whatever the light
    warm, cold = (1.2, 1.0, 0.8), (0.8, 1.0, 1.2)
    a, b = pre(tinted(scene(4), warm)), pre(tinted(scene(4), cold))
    assert (a - b).abs().mean() < 0.03
    assert (plain(tinted(scene(4), warm)) - plain(tinted(scene(4), cold))).abs().mean() > 0.2


def test_train_and_eval_pipelines_order_corruption_then_colour_constancy() -> None:
    pre = Preprocessing(size=(48, 48), colour_constancy="shades_of_gray")
    aug = AugmentConfig(corruptions=["brightness_up", "contrast_down"], corruption_p=1.0, rotation=0, zoom=(1, 1),
                        shear=0, translate=0)
    train = build_train_transform(aug, pre)
    kinds = [type(t).__name__ for t in train.transforms]
    assert kinds[-2] == "RandomCorruption" and train.transforms[-1] == pre.normalize  # corrupt, then the contract
    steps = [type(t).__name__ for t in pre._normalize.transforms]
    assert steps.index("ShadesOfGray") < steps.index("ToDtype")  # colour constancy on uint8, before scaling
    x = torch.from_numpy(scene(5).transpose(2, 0, 1).copy())
    assert torch.equal(seeded(train, x, 9), seeded(train, x, 9))
    assert build_train_transform(AugmentConfig(enabled=False), pre) == pre.normalize


def test_augment_config_corruption_options() -> None:
    cfg = load_config(None, ["augment.corruptions=all"])
    assert cfg.augment.corruptions == ["all"] and cfg.augment.corruption_p is None
    cfg = load_config(None, ["augment.corruptions=pixelate,motion_blur", "augment.corruption_p=0.5",
                             "augment.corruption_severity=[2, 4]", "data.colour_constancy=shades_of_gray"])
    assert cfg.augment.corruptions == ["pixelate", "motion_blur"] and cfg.augment.corruption_severity == (2, 4)
    assert cfg.data.colour_constancy == "shades_of_gray" and cfg.data.colour_constancy_power == 6.0
    with pytest.raises(ConfigError, match="corruption_p"):
        load_config(None, ["augment.corruption_p=1.5"])
    with pytest.raises(ConfigError, match=r"corruption_severity: .*1 <= low <= high <= 5"):
        load_config(None, ["augment.corruption_severity=[4, 6]"])
    with pytest.raises(ConfigError, match="colour_constancy"):
        load_config(None, ["data.colour_constancy=grey_edge"])
    with pytest.raises(CorruptionError, match="did you mean pixelate"):
        build_train_transform(AugmentConfig(corruptions=["pixelat"]), Preprocessing(size=(8, 8)))
    step = RandomCorruption(["pixelate", "motion_blur"], None, (2, 4))
    assert step.p == pytest.approx(2 / 3) and step.severity == (2, 4)


def test_training_refuses_a_misspelt_corruption_before_loading_data() -> None:
    from lesionlab.train import fit

    cfg = load_config(None, ["augment.corruptions=[motion_blurr]", "data.source=synthetic", "model.pretrained=false",
                             "model.name=test_efficientnet"])
    with pytest.raises(CorruptionError, match="did you mean motion_blur"):
        fit(cfg, run_dir=None, progress=False)
