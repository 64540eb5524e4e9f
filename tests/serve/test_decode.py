"""Upload decoding: each kind of bad bytes gets its own 4xx code and a message naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lesionlab.serve.decode import decode_image
from lesionlab.serve.errors import ServeError
from lesionlab.serve.settings import ServeSettings


def encode(fmt: str = "JPEG", size: tuple[int, int] = (60, 45), mode: str = "RGB", **kw: object) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG whose first Huffman table has impossible code counts: the header parses, the pixels cannot."""
    data = bytearray(encode())
    at = data.index(b"\xff\xc4")  # DHT marker; 2 bytes length, 1 byte class/id, then 16 code counts
    data[at + 5: at + 21] = b"\xff" * 16
    return bytes(data)


SETTINGS = ServeSettings(max_bytes=200_000, max_pixels=500 * 500)


@pytest.mark.parametrize(("data", "ctype", "status", "code"), [
    (b"", "image/jpeg", 400, "empty_upload"),
    (b"%PDF-1.4 definitely not an image" * 10, "image/jpeg", 400, "not_an_image"),
    (encode()[: len(encode()) // 2], "image/jpeg", 400, "corrupt_image"),  # truncated JPEG
    (None, "image/jpeg", 400, "corrupt_image"),  # damaged Huffman table: see corrupt_jpeg()
    (encode("PNG")[:-30], "image/png", 400, "corrupt_image"),
    (encode("PNG", size=(600, 600), mode="1"), "image/png", 413, "too_many_pixels"),
    (b"\xff" * 200_001, "image/jpeg", 413, "too_many_bytes"),
    (encode(), "text/plain", 415, "unsupported_media_type"),
    (encode(), "application/octet-stream", 415, "unsupported_media_type"),
    (encode(), "image/png", 415, "content_type_mismatch"),
    (encode("GIF"), "image/gif", 415, "unsupported_media_type"),
])
def test_bad_uploads_are_refused_with_a_code(data: bytes | None, ctype: str, status: int, code: str) -> None:
    data = corrupt_jpeg() if data is None else data
    with pytest.raises(ServeError) as info:
        decode_image(data, SETTINGS, "lesion.jpg", ctype)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    assert "lesion.jpg" in info.value.message


def test_decompression_bomb_is_refused_before_decoding() -> None:
    """A tiny PNG that claims 20000x20000 pixels never gets its pixels decoded."""
    bomb = _png_header_bomb()
    with pytest.raises(ServeError) as info:
        decode_image(bomb, ServeSettings(), "bomb.png", "image/png")
    assert info.value.status == 413 and info.value.code == "too_many_pixels"


def _png_header_bomb() -> bytes:
    """A 1-bit 30000x30000 PNG of zeros: ~100 kB on disk, 900 megapixels once decoded."""
    img = Image.new("1", (30000, 30000))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "ctype"), [("JPEG", "RGB", "image/jpeg"), ("PNG", "RGBA", "image/png"),
                                                     ("PNG", "L", "image/png"), ("PNG", "P", "image/png"),
                                                     ("WEBP", "RGB", "image/webp"), ("JPEG", "CMYK", "image/jpeg")])
def test_good_images_decode_to_rgb(fmt: str, mode: str, ctype: str) -> None:
    img = decode_image(encode(fmt, mode=mode), SETTINGS, "ok", ctype)
    assert img.mode == "RGB" and img.size == (60, 45)


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored sideways with an EXIF rotation comes out upright, as the browser shows it."""
    img = Image.new("RGB", (60, 40), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    out = decode_image(buf.getvalue(), SETTINGS, "phone.jpg", "image/jpeg")
    assert out.size == (40, 60)


def test_content_type_is_optional_for_files_read_from_disk() -> None:
    assert decode_image(encode(), SETTINGS, "disk.jpg", None).size == (60, 45)
