"""The fifteen acquisition corruptions (MedMNIST-C's, for dermatoscopy): parameters, behaviour, scaling, seeding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lesionlab.data.corruption_ops import disk_kernel, motion_kernel, zoom_factors
from lesionlab.data.corruptions import (
    CORRUPTION_NAMES,
    CORRUPTIONS,
    SEVERITIES,
    CorruptionError,
    RandomCorruption,
    corrupt,
    corruption_seed,
    describe,
    gallery,
    parse_corruptions,
    parse_severities,
)
from lesionlab.data.transforms import seeded

MEDMNIST_C_DERMA = ("pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise",
                    "shot_noise", "defocus_blur", "motion_blur", "zoom_blur", "brightness_up", "brightness_down",
                    "contrast_up", "contrast_down", "black_corner", "characters")


def lesion(size: int = 64, seed: int = 0, noise: float = 6.0) -> np.ndarray:
    """A lesion-like test image: skin tone with texture, a dark blob, a sharp edge (so every corruption shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    skin = np.stack([200 + 20 * np.sin(9 * xx), 160 + 15 * np.cos(7 * yy), 140 + 10 * np.sin(5 * (xx + yy))], -1)
    blob = ((yy - 0.5) ** 2 + (xx - 0.45) ** 2) < 0.06
    skin[blob] = [90, 55, 45]
    skin += rng.normal(0, noise, skin.shape)
    return np.clip(skin, 0, 255).astype(np.uint8)


def test_the_fifteen_corruptions_and_their_published_parameters() -> None:
    assert CORRUPTION_NAMES == MEDMNIST_C_DERMA
    assert all(len(c.levels) == 5 for c in CORRUPTIONS.values())
    assert CORRUPTIONS["jpeg_compression"].levels == (30, 20, 15, 10, 7)
    assert CORRUPTIONS["shot_noise"].levels == (60, 25, 18, 10, 5)
    assert CORRUPTIONS["motion_blur"].levels[-1] == (20, 15)
    assert CORRUPTIONS["characters"].levels[0] == (1, 6, 0.14)
    assert CORRUPTIONS["black_corner"].levels == (1.10, 1.05, 1.00, 0.90, 0.95)  # as published, 4 and 5 swapped
    rows = describe()
    assert [r["name"] for r in rows] == list(MEDMNIST_C_DERMA) and all(r["scaling"] for r in rows)


def test_zoom_factors_reproduce_the_published_aranges() -> None:
    published = [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                 np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)]
    for (max_zoom, step), ref in zip(CORRUPTIONS["zoom_blur"].levels, published, strict=True):
        np.testing.assert_allclose(zoom_factors(max_zoom, step), ref, atol=1e-9)


@pytest.mark.parametrize("name", MEDMNIST_C_DERMA)
def test_every_cell_changes_the_image_keeps_its_format_and_is_seeded(name: str) -> None:
    image = lesion()
    before = image.copy()
    for severity in SEVERITIES:
        a = corrupt(image, name, severity, 7)
        b = corrupt(image, name, severity, np.random.default_rng(7))
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)  # an int seed and a generator seeded alike give the same copy
        # text scaled from 224 px is under 1 px high at 64 px: it still marks pixels, but only faintly
        assert np.abs(a.astype(int) - image).mean() > (0.01 if name == "characters" else 0.2), (name, severity)
    np.testing.assert_array_equal(image, before)  # the input is never modified


MONOTONIC = [n for n in MEDMNIST_C_DERMA if n not in ("black_corner", "characters")]


@pytest.mark.parametrize("name", MONOTONIC)
def test_damage_grows_with_severity(name: str) -> None:
    """Mean absolute change from the clean image, averaged over seeds, rises from severity 1 to 5."""
    image = lesion(96, noise=0.0)  # no texture noise, which the slightest blur would already remove
    damage = [np.mean([np.abs(corrupt(image, name, s, seed).astype(int) - image).mean() for seed in range(4)])
              for s in SEVERITIES]
    assert damage[-1] > damage[0] * 1.3, damage
    assert all(b >= a * 0.97 for a, b in itertools.pairwise(damage)), damage


def test_black_corner_geometry_follows_the_published_radii() -> None:
    white = np.full((100, 100, 3), 255, np.uint8)
    blacked = [float((corrupt(white, "black_corner", s) == 0).all(axis=2).mean()) for s in SEVERITIES]
    assert blacked[2] == pytest.approx(1 - np.pi / 4, abs=0.01)  # radius = half the side: the inscribed circle
    assert blacked[0] < blacked[1] < blacked[2] < blacked[4] < blacked[3]  # severity 4 (0.90) blacks out most


def test_noise_levels_match_their_definitions() -> None:
    grey = np.full((128, 128, 3), 128, np.uint8)
    assert corrupt(grey, "gaussian_noise", 1).astype(float).std() == pytest.approx(0.04 * 255, rel=0.05)
    hit = np.isin(corrupt(grey, "impulse_noise", 5), (0, 255)).mean()
    assert hit == pytest.approx(0.17, abs=0.01)
    shot = corrupt(grey, "shot_noise", 1).astype(float) / 255
    assert shot.std() == pytest.approx(np.sqrt(128 / 255 / 60), rel=0.1)  # Poisson: var = x / photons
    assert corrupt(grey, "brightness_down", 5).mean() == pytest.approx(64, abs=1)  # factor 0.5


def _edge_width(image: np.ndarray) -> int:
    row = image[image.shape[0] // 2, :, 0].astype(float)
    lo, hi = row.min(), row.max()
    return int(np.sum((row > lo + 0.1 * (hi - lo)) & (row < lo + 0.9 * (hi - lo))))


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur"])
def test_blur_lengths_scale_with_the_image(name: str) -> None:
    """The same severity blurs an edge over a width proportional to the image size (MedMNIST-C's 224 px lengths)."""
    widths = {}
    for size in (112, 224):
        step = np.zeros((size, size, 3), np.uint8)
        step[:, size // 2:] = 255
        widths[size] = np.mean([_edge_width(corrupt(step, name, 3, seed)) for seed in range(6)])
    assert widths[224] / widths[112] == pytest.approx(2.0, rel=0.3), widths


def test_kernels() -> None:
    for r in (0.6, 1.5, 4.0):
        k = disk_kernel(r, 0.0)
        y, x = np.mgrid[: k.shape[0], : k.shape[1]] - k.shape[0] // 2
        assert k.sum() == pytest.approx(1.0) and np.sqrt(2 * np.sum(k * (x ** 2 + y ** 2))) == pytest.approx(r, rel=0.1)
    m = motion_kernel(10, 5, 0.0)
    centre = m.shape[0] // 2
    assert m.sum() == pytest.approx(1.0) and m[centre, centre] == m.max()
    assert m[centre, : centre + 1].sum() > 0.99 and m[centre, centre + 1:].sum() == 0  # one-sided along the row
    assert np.count_nonzero(m[centre]) == 2 * 10 + 1


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_characters_work_at_every_medmnist_size(size: int) -> None:
    image = lesion(size)
    out = corrupt(image, "characters", 5, 3)
    changed = np.any(out != image, axis=2).mean()
    assert 0 < changed < 0.5


def test_seeds_follow_the_image_id_not_the_order() -> None:
    a = corruption_seed(0, "gaussian_noise", 2, "ISIC_0000001")
    assert a == corruption_seed(0, "gaussian_noise", 2, "ISIC_0000001")
    others = {corruption_seed(0, "gaussian_noise", 2, "ISIC_0000002"), corruption_seed(1, "gaussian_noise", 2,
              "ISIC_0000001"), corruption_seed(0, "gaussian_noise", 3, "ISIC_0000001"),
              corruption_seed(0, "shot_noise", 2, "ISIC_0000001")}
    assert a not in others and len(others) == 4


def test_parsing_names_and_severities() -> None:
    assert parse_corruptions("all") == MEDMNIST_C_DERMA
    assert parse_corruptions("motion_blur, pixelate") == ("pixelate", "motion_blur")  # registry order
    assert parse_corruptions(["black_corner", "black_corner"]) == ("black_corner",)
    with pytest.raises(CorruptionError, match="did you mean motion_blur"):
        parse_corruptions("motion_blurr")
    with pytest.raises(CorruptionError, match="cannot be combined"):
        parse_corruptions("all,pixelate")
    assert parse_severities("1-5") == SEVERITIES and parse_severities("5,1,3") == (1, 3, 5)
    assert parse_severities([2]) == (2,)
    for bad, message in (("0", "severity 0"), ("4-2", "backwards"), ("x", "not a number"), ("1-6", "severity 6")):
        with pytest.raises(CorruptionError, match=message):
            parse_severities(bad)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(CorruptionError, match="HxWx3 uint8"):
        corrupt(lesion().astype(np.float32), "pixelate", 1)
    with pytest.raises(CorruptionError, match="unknown corruption 'fog'"):
        corrupt(lesion(), "fog", 1)
    with pytest.raises(CorruptionError, match="severity 6"):
        corrupt(lesion(), "pixelate", 6)


def test_random_corruption_augmentation_is_seeded_and_draws_every_corruption() -> None:
    aug = RandomCorruption(["all"], p=None)
    assert aug.p == pytest.approx(15 / 16)  # MedMNIST-C: the identity is one more choice
    x = torch.from_numpy(lesion(48).transpose(2, 0, 1).copy())
    a, b = seeded(aug, x, 123), seeded(aug, x, 123)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    changed = sum(not torch.equal(seeded(aug, x, s), x) for s in range(60))
    assert 45 <= changed <= 60
    never = RandomCorruption(["pixelate"], p=0.0)
    assert torch.equal(never(x), x)
    one = RandomCorruption(["black_corner"], p=1.0, severity=(3, 3))
    expected = torch.from_numpy(corrupt(lesion(48), "black_corner", 3).transpose(2, 0, 1).copy())
    assert torch.equal(one(x), expected)  # black_corner is deterministic: same as the test split's cell
    with pytest.raises(CorruptionError, match="unknown corruption"):
        RandomCorruption(["jpeg"])
    with pytest.raises(CorruptionError, match="backwards"):
        RandomCorruption(["pixelate"], severity=(4, 2))


def test_gallery_shows_the_test_split_cells() -> None:
    image = lesion(32)
    names, levels = ["pixelate", "motion_blur"], [1, 5]
    picture = np.asarray(gallery(image, names, levels, seed=4, key="ISIC_1"))
    assert picture.shape[0] > 2 * 32 and picture.shape[1] > 3 * 32
    # find the clean tile and the motion_blur severity-5 tile by content
    expected = corrupt(image, "motion_blur", 5, np.random.default_rng(corruption_seed(4, "motion_blur", 5, "ISIC_1")))

    def contains(tile: np.ndarray) -> bool:
        h, w = tile.shape[:2]
        for y in range(picture.shape[0] - h + 1):
            row = picture[y, :, :]
            for x in np.flatnonzero(np.all(row[: picture.shape[1] - w + 1] == tile[0, 0], axis=1)):
                if np.array_equal(picture[y:y + h, x:x + w], tile):
                    return True
        return False

    assert contains(image) and contains(expected)


def test_zoom_blur_matches_an_independent_centre_zoom() -> None:
    """Pillow's box resize against scipy's affine transform about the centre (the slow, obvious way)."""
    from scipy import ndimage

    image = lesion(64, seed=2)
    x = image / 255.0
    h, w = x.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    factors = zoom_factors(1.30, 0.03)
    total = x.copy()
    for z in factors:
        total += ndimage.affine_transform(x, np.array([1 / z, 1 / z, 1.0]), offset=(cy - cy / z, cx - cx / z, 0),
                                          order=1, mode="nearest")
    expected = np.clip(np.rint(total / (len(factors) + 1) * 255), 0, 255)
    assert np.abs(corrupt(image, "zoom_blur", 5).astype(float) - expected).max() <= 1.0
