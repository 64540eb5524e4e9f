"""Images for the service's own checks: the start-up warm-up, ONNX parity and the latency benchmarks.

Real HAM10000 images from the shared folder when present (the seven full-size 600x450 ones first), else seeded
lesion-like pictures that carry no diagnostic content.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lesionlab.core.errors import MissingFileError
from lesionlab.core.paths import shared_data_dir
from lesionlab.data.images import IMAGE_SUFFIXES, decode_image


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode a PIL image as JPEG bytes (for synthetic benchmark inputs)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def synthetic_lesion(size: tuple[int, int] = (600, 450), seed: int = 0) -> Image.Image:
    """A seeded lesion-like RGB image (dark ellipse on noisy skin tone) of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    blob = ((yy - cy) ** 2 / (h / 3) ** 2 + (xx - cx) ** 2 / (w / 3) ** 2) < 1
    skin = np.array([205, 150, 130]) + rng.normal(0, 10, 3)
    arr = skin + rng.normal(0, 12, (h, w, 3)) - rng.uniform(60, 120) * blob[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def parity_images(folder: str | Path | None = None, limit: int = 32, full_size_only: bool = False
                  ) -> tuple[list[Image.Image], str]:
    """Images for parity checks and benchmarks: ``folder``, else the real HAM10000 images in the shared folder
    (the seven 600x450 ones first, then 64x64 ones), else seeded synthetic images; returns them and their source.
    """
    if folder is not None:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not paths:
            raise MissingFileError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        return [decode_image(p, convert_mode=True) for p in paths], str(folder)
    data = shared_data_dir()
    paths = sorted((data / "ham10000-600x450").glob("ISIC_*.jpg"))
    if not full_size_only:
        paths += sorted((data / "ham10000-64" / "images").glob("ISIC_*.jpg"))[: max(0, limit - len(paths))]
    if paths:
        return [decode_image(p) for p in paths[:limit]], f"real HAM10000 images in {data}"
    return [synthetic_lesion(seed=i) for i in range(min(limit, 8))], "synthetic images (no ../shared/data found)"
