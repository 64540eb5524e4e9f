"""Out-of-scope images that need no download, for measuring the scope gate: what a careless or curious user might
upload instead of a dermoscopy image.

Sets (each seeded, ``n`` images, sizes like a photograph's):

* ``photographs``: scikit-image's sample photographs (astronaut, cat, coffee, rocket, ...), randomly cropped;
* ``text``: rendered text on paper-coloured backgrounds (a scanned letter, a screenshot);
* ``noise``: uniform and Gaussian pixel noise;
* ``flat``: a single colour (black, white or random), optionally with a faint gradient;
* ``corrupted``: real dermoscopy images of the evaluated split, each under one of the fifteen MedMNIST-C corruptions
  at its heaviest severity (``lesionlab.data.corruptions``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "rocket", "retina", "horse")
WORDS = ("patient", "referral", "letter", "dermatology", "clinic", "appointment", "report", "results", "date",
         "name", "lesion", "follow-up", "invoice", "total", "signature", "please", "review", "scan")


def _photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(1.0, float(img.max())))).astype(np.uint8)
        out.append(np.ascontiguousarray(img[:, :, :3]))
    return out


def photographs(n: int, rng: np.random.Generator) -> list[Image.Image]:
    """Random crops (at least half of each side) of scikit-image's sample photographs."""
    photos = _photos()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(Image.fromarray(img[top:top + ch, left:left + cw]))
    return out


def text(n: int, rng: np.random.Generator, size: tuple[int, int] = (600, 450)) -> list[Image.Image]:
    """Lines of words in dark ink on light paper, at several font sizes."""
    out = []
    for _ in range(n):
        paper = tuple(int(v) for v in rng.integers(215, 256, 3))
        img = Image.new("RGB", size, paper)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=float(rng.integers(14, 40)))
        y = int(rng.integers(5, 30))
        while y < size[1] - 20:
            line = " ".join(str(rng.choice(WORDS)) for _ in range(int(rng.integers(3, 9))))
            draw.text((int(rng.integers(5, 40)), y), line, fill=tuple(int(v) for v in rng.integers(0, 80, 3)),
                      font=font)
            y += int(rng.integers(20, 50))
        out.append(img)
    return out


def noise(n: int, rng: np.random.Generator, size: tuple[int, int] = (600, 450)) -> list[Image.Image]:
    """Uniform noise (even rows) and Gaussian noise around a random colour (odd rows)."""
    w, h = size
    out = []
    for i in range(n):
        if i % 2 == 0:
            arr = rng.integers(0, 256, (h, w, 3))
        else:
            arr = rng.normal(rng.uniform(40, 215, 3), rng.uniform(10, 60), (h, w, 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def flat(n: int, rng: np.random.Generator, size: tuple[int, int] = (600, 450)) -> list[Image.Image]:
    """Black, white, then random single colours; every third with a faint left-to-right gradient."""
    w, h = size
    out = []
    for i in range(n):
        colour = np.array([0, 0, 0] if i == 0 else [255, 255, 255] if i == 1 else rng.integers(0, 256, 3), float)
        arr = np.broadcast_to(colour, (h, w, 3)).copy()
        if i % 3 == 2:
            arr += np.linspace(-15, 15, w)[None, :, None]
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def corrupted(n: int, rng: np.random.Generator, images: Sequence[Any]) -> list[Image.Image]:
    """Real dermoscopy images under the heaviest (severity 5) MedMNIST-C corruptions, one each, cycling through all
    fifteen (:mod:`lesionlab.data.corruptions`)."""
    from lesionlab.data.corruptions import CORRUPTION_NAMES, corrupt

    out = []
    for i in range(min(n, len(images))):
        img = images[i]
        arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
        name = CORRUPTION_NAMES[i % len(CORRUPTION_NAMES)]
        out.append(Image.fromarray(corrupt(arr, name, 5, int(rng.integers(2**31)))))
    return out


def ood_sets(n: int = 60, seed: int = 0, real_images: Sequence[Any] | None = None
             ) -> dict[str, list[Image.Image]]:
    """Every out-of-scope set of :mod:`this module <lesionlab.evaluate.ood>`, ``n`` images each (seeded)."""
    makers: dict[str, Callable[[int, np.random.Generator], list[Image.Image]]] = {
        "photographs": photographs, "text": text, "noise": noise, "flat": flat}
    out = {name: make(n, np.random.default_rng([seed, i])) for i, (name, make) in enumerate(makers.items())}
    if real_images is not None and len(real_images):
        out["corrupted"] = corrupted(n, np.random.default_rng([seed, 99]), real_images)
    return out
