"""Decoding: every bad image gets an error naming the file; conversions are opt-in and documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.data.images import DataError, decode_image


def _save(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


def test_rgb_jpeg_decodes(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    img = decode_image(_save(tmp_path / "a.png", Image.fromarray(pixels)))
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.array_equal(np.asarray(img), pixels)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jpg: image file not found"):
        decode_image(tmp_path / "nope.jpg")


def test_corrupt_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "ISIC_0000001.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(DataError, match=r"ISIC_0000001\.jpg: cannot decode image"):
        decode_image(bad)


def test_truncated_jpeg_names_it(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    cut = tmp_path / "ISIC_cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"ISIC_cut\.jpg: cannot decode image.*truncated"):
        decode_image(cut)


NON_RGB = [
    ("L", lambda: Image.fromarray(np.full((8, 8), 100, np.uint8), "L"), "8-bit greyscale"),
    ("LA", lambda: Image.new("LA", (8, 8), (100, 128)), "greyscale with alpha"),
    ("RGBA", lambda: Image.new("RGBA", (8, 8), (10, 20, 30, 0)), "RGB with alpha"),
    ("P", lambda: Image.new("RGB", (8, 8), (200, 10, 10)).convert("P"), "palette"),
    ("I;16", lambda: Image.fromarray(np.full((8, 8), 65535, np.uint16)), "16-bit greyscale"),
    ("I", lambda: Image.fromarray(np.full((8, 8), 257 * 40, np.int32), "I"), "32-bit integer greyscale"),
]


@pytest.mark.parametrize(("mode", "make", "words"), NON_RGB, ids=[m for m, _, _ in NON_RGB])
def test_non_rgb_is_an_error_naming_file_and_mode(tmp_path: Path, mode: str, make, words: str) -> None:
    suffix = ".tif" if mode == "I" else ".png"  # Pillow writes 32-bit integer images as TIFF only
    path = _save(tmp_path / f"img_{mode.replace(';', '')}{suffix}", make())
    with Image.open(path) as check:
        opened_mode = check.mode
    name = rf"img_{mode.replace(';', '')}\{suffix}"
    with pytest.raises(DataError, match=name + r": image mode is .*expected RGB.*convert_mode"):
        decode_image(path)
    assert opened_mode != "RGB"
    assert decode_image(path, convert_mode=True).mode == "RGB"


def test_conversions_are_as_documented(tmp_path: Path) -> None:
    grey = decode_image(_save(tmp_path / "g.png", Image.fromarray(np.full((4, 4), 77, np.uint8), "L")), True)
    assert np.asarray(grey)[0, 0].tolist() == [77, 77, 77]
    rgba = decode_image(_save(tmp_path / "a.png", Image.new("RGBA", (4, 4), (10, 20, 30, 0))), True)
    assert np.asarray(rgba)[0, 0].tolist() == [10, 20, 30]  # alpha dropped, colour kept
    deep = np.array([[0, 257, 65535, 32896]], np.uint16)
    sixteen = decode_image(_save(tmp_path / "d.png", Image.fromarray(deep)), True)
    assert np.asarray(sixteen)[0, :, 0].tolist() == [0, 1, 255, 128]  # value / 257


def test_int_image_out_of_16_bit_range_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.tif", Image.fromarray(np.full((4, 4), 100000, np.int32), "I"))
    with pytest.raises(DataError, match=r"big\.tif: .*outside the 16-bit range"):
        decode_image(path, convert_mode=True)
