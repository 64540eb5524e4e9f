"""Decoding one image file into RGB pixels, with errors that name the file; row-aligned image stores.

Every image file that enters lesionlab (dataset files, cache builds) goes through :func:`decode_image`, and the
service's upload decoder applies the same :func:`to_rgb`, so a corrupt file or an unexpected pixel format is caught
in one place and reported the same way everywhere.

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

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from lesionlab.core.errors import LesionlabError


class DataError(LesionlabError, ValueError):
    """Bad input data; the message names the file and the row, key or field at fault."""


IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
KAGGLE_FOLDERS: tuple[str, ...] = ("HAM10000_images_part_1", "HAM10000_images_part_2")

MODE_NAMES = {
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
    what = f"{mode} ({MODE_NAMES[mode]})" if mode in MODE_NAMES else mode
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


class ImageStore(Protocol):
    """Row-aligned image access behind a :class:`DataSource`."""

    def __len__(self) -> int: ...
    def load(self, i: int) -> Image.Image: ...
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class FileImages:
    """One image file per row, decoded on demand (picklable, so cache workers can share it)."""

    paths: tuple[Path, ...]
    convert_mode: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        return decode_image(self.paths[i], self.convert_mode)

    def fingerprint(self) -> str:
        """Each file's name, size and mtime_ns: any replaced or touched file changes it."""
        digest = hashlib.sha256(f"files convert={self.convert_mode}\n".encode())
        for path in self.paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                raise DataError(f"{path}: image file disappeared since the source was opened") from None
            digest.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class ArrayImages:
    """Images already in memory (npz splits, the synthetic set): the chunks concatenated give one image per row."""

    chunks: tuple[np.ndarray, ...]
    key: str  # identifies the content: file stats of an npz, or the generator's seed and version
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", np.cumsum([0, *(len(c) for c in self.chunks)]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, i: int) -> Image.Image:
        if not 0 <= i < len(self):
            raise IndexError(f"image row {i} out of range 0..{len(self) - 1}")
        c = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return Image.fromarray(self.chunks[c][i - int(self.offsets[c])])

    def fingerprint(self) -> str:
        return hashlib.sha256(f"arrays\t{self.key}\t{[c.shape for c in self.chunks]}".encode()).hexdigest()


def expand_image_dirs(dirs: list[Path]) -> list[Path]:
    """Check each folder exists; a folder holding the Kaggle ``HAM10000_images_part_1/2`` stands for those two."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"image folder not found: {d}")
        parts = [d / name for name in KAGGLE_FOLDERS if (d / name).is_dir()]
        out += parts or [d]
    return out


def index_images(dirs: list[Path]) -> tuple[dict[str, Path], list[str]]:
    """Map image id (file stem) -> file over the folders; returns (index, notes).

    The same id in two folders is kept once when both files have the same size (Kaggle ships copies) and is an
    error otherwise, since the two cannot both be the image the metadata means.
    """
    found: dict[str, Path] = {}
    copies = 0
    for d in dirs:
        with os.scandir(d) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not entry.is_file() or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                stem, path = Path(entry.name).stem, Path(entry.path)
                if stem in found:
                    if found[stem].stat().st_size != entry.stat().st_size:
                        raise DataError(f"image {stem} is in two folders with different content: {found[stem]} "
                                        f"and {path}")
                    copies += 1
                    continue
                found[stem] = path
    notes = [f"{copies} identical second copies of images ignored"] if copies else []
    return found, notes


def default_image_dirs(metadata_csv: Path) -> list[Path]:
    """Image folders next to a metadata CSV: the Kaggle parts, ``images/`` or ``HAM10000_images/``."""
    base = metadata_csv.parent
    candidates = [base / n for n in (*KAGGLE_FOLDERS, "images", "HAM10000_images")]
    dirs = [d for d in candidates if d.is_dir()]
    if not dirs:
        raise DataError(f"no image folder given (data.image_dirs) and none found next to {metadata_csv} "
                        f"(looked for {', '.join(d.name for d in candidates)})")
    return dirs
