"""Decoding one image file into RGB pixels, with errors that name the file.

Every image that enters lesionlab (dataset files, cache builds, uploads to the service) goes through
:func:`decode_image`, so a corrupt file or an unexpected pixel format is caught in one place and reported the same
way everywhere.

Non-RGB images are rejected unless ``convert_mode=True`` (``data.convert_mode``), because a silent conversion can
hide a wrong export (a mask or a 16-bit scan in a folder of photographs). When converting:

- greyscale (``L``, ``1``) is copied into R, G and B;
- alpha (``RGBA``, ``LA``, ``PA``) is dropped: pixels keep their colour values, transparency is ignored;
- palette (``P``), ``CMYK`` and ``YCbCr`` go through Pillow's own conversion;
- 16-bit greyscale (``I;16*``) and 32-bit integer (``I``) images are scaled from 0..65535 to 0..255 (value / 257,
  rounded); an ``I`` image with values outside 0..65535 is an error, as is a floating-point (``F``) image, whose
  range cannot be known.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


class DataError(ValueError):
    """Bad input data; the message names the file and the row, key or field at fault."""


IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

_MODE_NAMES = {
    "1": "1-bit black and white", "L": "8-bit greyscale", "LA": "greyscale with alpha", "P": "palette",
    "PA": "palette with alpha", "RGBA": "RGB with alpha", "CMYK": "CMYK", "YCbCr": "YCbCr",
    "I": "32-bit integer greyscale", "I;16": "16-bit greyscale", "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale", "I;16N": "16-bit greyscale", "F": "32-bit float greyscale",
}


def to_rgb(img: Image.Image, name: str, convert_mode: bool = False) -> Image.Image:
    """Return ``img`` as an RGB image, or raise :class:`DataError` naming ``name`` and the mode (see module doc)."""
    mode = img.mode
    if mode == "RGB":
        return img
    what = f"{mode} ({_MODE_NAMES[mode]})" if mode in _MODE_NAMES else mode
    if not convert_mode:
        raise DataError(f"{name}: image mode is {what}, expected RGB; set data.convert_mode=true to convert "
                        "(greyscale is copied to R, G and B, alpha is dropped, 16-bit is scaled to 8-bit)")
    if mode == "F":
        raise DataError(f"{name}: image mode is {what}; its value range is unknown, so it cannot be converted to RGB")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{name}: image mode is {what} with values {values.min()}..{values.max()}, "
                            "outside the 16-bit range 0..65535 that conversion assumes")
        grey = ((values + 128) // 257).astype(np.uint8)  # round(v / 257): 0..65535 -> 0..255
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    return img.convert("RGB")


def decode_bytes(data: bytes, name: str = "upload", convert_mode: bool = False) -> Image.Image:
    """Decode an image held in memory (an upload to the service) as RGB; errors name ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img, name, convert_mode)
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: image too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{name}: not a readable image: corrupt, truncated or not an image ({err})") from None


def decode_image(path: str | Path, convert_mode: bool = False) -> Image.Image:
    """Open and fully decode one image file as RGB; a missing, corrupt or truncated file raises :class:`DataError`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and names itself
            return to_rgb(img, str(path), convert_mode)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot decode image, the file is corrupt or truncated ({err})") from None
