"""Acquisition corruptions of dermoscopy images at five severities: the corrupted test split and its augmentation.

The fifteen corruptions and their severity parameters are those MedMNIST-C defines for dermatoscopy (DermaMNIST):
Di Salvo, Doerrich, Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier robustness by simulating
realistic image corruptions", arXiv:2406.17536, 2024. The code here is lesionlab's own (numpy, Pillow, scipy); it
does not use the ``medmnistc`` package, whose motion blur needs ImageMagick and fails on numpy 2, and whose
``characters`` corruption assumes 224 px images.

Naming: these are *corruptions* and the result is the *corrupted test split*. They have nothing to do with the
DermaMNIST-C split (a *corrected*, lesion-disjoint split of DermaMNIST) that lesionlab trains and tests on.

Where a corruption acts on the image
    On the pixels the model sees: the uint8 image at the run's input size, after the resize of the decode-once
    cache and before normalisation, exactly where MedMNIST-C corrupts its npz images. Training augmentation
    (``augment.corruptions``) acts at the same place, so both use one definition.

Scaling to the image size (MedMNIST-C's parameters are for 224 x 224 images)
    ``s = min(height, width) / 224``. Lengths are multiplied by ``s``: the defocus radius and its anti-alias
    blur, the motion-blur length and its Gaussian fall-off, the text height, stroke and margins of ``characters``.
    Everything else is already relative to the image and is used as published: the pixelate factor, the zoom
    factors, the black-corner radius (a multiple of half the short side), brightness and contrast factors.
    Per-pixel quantities stay per pixel: the noise levels, and the JPEG quality (its 8 x 8 blocks cover a larger
    share of a small image, as they would for a small photograph).

Differences from the published code, all deliberate
    Results are rounded to the nearest integer, not truncated (truncation darkens every image by half a grey
    level on average). The defocus disk is anti-aliased (area coverage), so it shrinks smoothly with ``s`` instead
    of collapsing to one pixel. The motion-blur kernel has ImageMagick's shape (one-sided, ``2 ceil(r) + 1``
    Gaussian-weighted taps along a random angle in [-45, 45] degrees) with sub-pixel taps. Text uses Pillow's
    built-in sans-serif font instead of OpenCV's Hershey font, sized to the same glyph height.
    The black-corner severities are published as radius multipliers 1.10, 1.05, 1.00, 0.90, 0.95: severity 4
    leaves less of the image than severity 5. They are kept as published, so cells stay comparable.

Randomness
    Every call takes a ``numpy.random.Generator``. The corrupted test split seeds it per image from
    (seed, corruption, severity, image id) with :func:`corruption_seed`, so an image gets the same corruption
    whichever subset or order it is scored in.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from lesionlab.data.corruption_ops import (
    SEVERITIES,
    CorruptionError,
    black_corner,
    brightness,
    characters,
    check_image,
    check_severity,
    contrast,
    defocus_blur,
    gaussian_noise,
    impulse_noise,
    jpeg,
    load_font,
    motion_blur,
    pixelate,
    shot_noise,
    size_scale,
    speckle_noise,
    zoom_blur,
)

#: Bump when any corruption's output changes: cached cell predictions and reference figures carry it.
CORRUPTIONS_VERSION = 1
CITATION = ("Di Salvo, Doerrich & Ledig, MedMNIST-C: Comprehensive benchmark and improved classifier robustness by "
            "simulating realistic image corruptions, arXiv:2406.17536 (2024)")


@dataclass(frozen=True)
class Corruption:
    """One corruption: its five published severity parameters and how it scales with the image size."""

    name: str
    family: str  # digital, noise, blur, colour, dermoscopy
    summary: str
    levels: tuple[Any, ...]  # parameters of severities 1..5 (MedMNIST-C, DermaMNIST, 224 px)
    scaling: str  # what changes with the image size
    apply: Callable[[np.ndarray, Any, float, np.random.Generator], np.ndarray]

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """The corrupted copy of an HxWx3 uint8 image at ``severity`` (1-5)."""
        check_image(image)
        param = self.levels[check_severity(severity) - 1]
        return self.apply(image, param, size_scale(image), rng)


# ------------------------------------------------------------------------------------------------- registry

_LENGTH = "lengths x min(H, W) / 224"
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("pixelate", "digital", "box-downsample by a factor, then box-upsample back",
               (0.7, 0.5, 0.40, 0.30, 0.25), "factor is relative: as published", pixelate),
    Corruption("jpeg_compression", "digital", "JPEG re-encoding at a quality", (30, 20, 15, 10, 7),
               "quality as published (8 x 8 blocks are pixels)", jpeg),
    Corruption("gaussian_noise", "noise", "additive Gaussian noise (sd on the 0-1 scale)",
               (0.04, 0.08, 0.12, 0.18, 0.26), "per pixel: as published", gaussian_noise),
    Corruption("speckle_noise", "noise", "multiplicative Gaussian noise x + x n (sd of n)",
               (0.05, 0.15, 0.2, 0.35, 0.45), "per pixel: as published", speckle_noise),
    Corruption("impulse_noise", "noise", "salt and pepper: share of values set to 0 or 255",
               (0.01, 0.03, 0.06, 0.09, 0.17), "per pixel: as published", impulse_noise),
    Corruption("shot_noise", "noise", "Poisson photon noise (photons at full scale)", (60, 25, 18, 10, 5),
               "per pixel: as published", shot_noise),
    Corruption("defocus_blur", "blur", "disk kernel (radius, anti-alias sd) in px",
               ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)), _LENGTH, defocus_blur),
    Corruption("motion_blur", "blur", "one-sided motion blur (radius, sd) in px at a random angle in +-45 deg",
               ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)), _LENGTH, motion_blur),
    Corruption("zoom_blur", "blur", "mean of centre zooms 1 .. max in steps (max, step)",
               ((1.11, 0.01), (1.15, 0.01), (1.20, 0.02), (1.24, 0.02), (1.30, 0.03)),
               "zoom factors are relative: as published", zoom_blur),
    Corruption("brightness_up", "colour", "brightness factor (Pillow ImageEnhance)", (1.1, 1.2, 1.3, 1.4, 1.5),
               "unitless: as published", brightness),
    Corruption("brightness_down", "colour", "brightness factor (Pillow ImageEnhance)", (0.9, 0.8, 0.7, 0.6, 0.5),
               "unitless: as published", brightness),
    Corruption("contrast_up", "colour", "contrast factor around the mean grey (Pillow ImageEnhance)",
               (1.1, 1.2, 1.3, 1.4, 1.6), "unitless: as published", contrast),
    Corruption("contrast_down", "colour", "contrast factor around the mean grey (Pillow ImageEnhance)",
               (0.8, 0.7, 0.6, 0.5, 0.4), "unitless: as published", contrast),
    Corruption("black_corner", "dermoscopy", "dermoscope vignette: black outside a centred circle of radius "
               "factor x half the short side (published order: severity 4 is stronger than 5)",
               (1.10, 1.05, 1.00, 0.90, 0.95), "radius is relative: as published", black_corner),
    Corruption("characters", "dermoscopy", "overlaid random lowercase words (max words, max letters, max "
               "OpenCV font scale) in random colours", ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17),
                                                        (6, 10, 0.18)),
               "text height, stroke and margins x min(H, W) / 224", characters),
)}
CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)


# ------------------------------------------------------------------------------------------------ public API


def parse_corruptions(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"all"``, a comma-separated list or a sequence of names -> corruption names in registry order.

    Unknown names are errors with near-match suggestions; duplicates collapse.
    """
    if spec is None:
        return ()
    items = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in spec]
    items = [p for p in items if p]
    if not items:
        raise CorruptionError("no corruption named (give 'all' or names such as pixelate,motion_blur)")
    if "all" in items:
        if len(items) > 1:
            raise CorruptionError(f"'all' cannot be combined with names ({', '.join(i for i in items if i != 'all')})")
        return CORRUPTION_NAMES
    unknown = [i for i in items if i not in CORRUPTIONS]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, CORRUPTION_NAMES, n=2)
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        raise CorruptionError(f"unknown corruption {', '.join(hints)}; known: all, {', '.join(CORRUPTION_NAMES)}")
    chosen = set(items)
    return tuple(n for n in CORRUPTION_NAMES if n in chosen)


def parse_severities(spec: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"1-5"``, ``"1,3,5"``, ``"2"`` or a sequence -> sorted distinct severities in 1..5."""
    if spec is None:
        return SEVERITIES
    values: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    for part in parts:
        text = str(part).strip()
        try:
            bounds = [int(v) for v in text.split("-", 1)] if text else []
        except ValueError:
            raise CorruptionError(f"severities {spec!r}: {text!r} is not a number or a range like 1-5") from None
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise CorruptionError(f"severity range {text!r} runs backwards")
        values += list(range(bounds[0], bounds[-1] + 1)) if bounds else []
    if not values:
        raise CorruptionError("no severity given (e.g. 1-5 or 1,3,5)")
    return tuple(sorted({check_severity(v) for v in values}))


def corruption_seed(seed: int, name: str, severity: int, key: str | int) -> int:
    """Seed of one image's corruption: from (seed, corruption, severity, image id), independent of order."""
    if name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}")
    key_int = zlib.crc32(str(key).encode("utf-8")) if not isinstance(key, int) else int(key)
    entropy = [int(seed), CORRUPTION_NAMES.index(name), int(severity), key_int]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> 1)


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``image`` (HxWx3 uint8) under corruption ``name`` at ``severity`` (1-5); a new array, same shape and dtype.

    ``rng``: a generator, or an int seed (``None``: seed 0, so a bare call is reproducible).
    """
    if name not in CORRUPTIONS:
        parse_corruptions([name])  # raises with suggestions
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    return CORRUPTIONS[name](image, severity, gen)


def describe(names: Sequence[str] = CORRUPTION_NAMES) -> list[dict[str, Any]]:
    """What each corruption does and its five parameters (for reports, docs and ``--help``)."""
    return [{"name": c.name, "family": c.family, "summary": c.summary, "scaling": c.scaling,
             "levels": [list(v) if isinstance(v, tuple) else v for v in c.levels]}
            for c in (CORRUPTIONS[n] for n in names)]


class RandomCorruption(torch.nn.Module):
    """Training augmentation: with probability ``p`` one of ``names`` at a random severity in ``severity``.

    As MedMNIST-C's augmentation (which draws the identity as one more choice, so ``p = n / (n + 1)`` by default),
    except that the severity is one of the benchmark's levels, so training and the corrupted test split share
    their parameters exactly. Works on uint8 [3, H, W] tensors; every draw comes from torch's generator, so
    :func:`lesionlab.data.transforms.seeded` makes the choice reproducible per sample.
    """

    def __init__(self, names: Sequence[str], p: float | None = None, severity: tuple[int, int] = (1, 5)) -> None:
        super().__init__()
        self.names = parse_corruptions(list(names))
        lo, hi = (check_severity(v) for v in severity)
        if lo > hi:
            raise CorruptionError(f"corruption severity range {severity} runs backwards")
        self.severity = (lo, hi)
        n = len(self.names)
        self.p = n / (n + 1) if p is None else float(p)
        if not 0.0 <= self.p <= 1.0:
            raise CorruptionError(f"corruption probability {self.p} is not in [0, 1]")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or float(torch.rand(1)) >= self.p:
            return x
        name = self.names[int(torch.randint(len(self.names), (1,)))]
        severity = int(torch.randint(self.severity[0], self.severity[1] + 1, (1,)))
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        image = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
        out = CORRUPTIONS[name](image, severity, np.random.default_rng(seed))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, p={self.p:.3f}, severity={self.severity}"


def gallery(image: np.ndarray, names: Sequence[str] = CORRUPTION_NAMES, severities: Sequence[int] = SEVERITIES,
            seed: int = 0, key: str | int = 0, scale: int = 1) -> Image.Image:
    """One image under every corruption and severity: a labelled mosaic (rows: corruptions, columns: clean + levels).

    The corruptions are seeded exactly as the corrupted test split seeds image ``key`` (its image id), so the
    gallery shows what the benchmark scored. ``scale`` enlarges each tile by pixel repetition (small images).
    """
    check_image(image)
    names = parse_corruptions(list(names))
    severities = parse_severities(list(severities))
    tile = image if scale == 1 else np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    th, tw = tile.shape[:2]
    font = load_font(13)
    label_w = max(int(font.getlength(n)) for n in names) + 16
    header_h, gap = 22, 4
    cols = 1 + len(severities)
    width = label_w + cols * (tw + gap)
    height = header_h + len(names) * (th + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["clean", *(f"severity {s}" for s in severities)]):
        draw.text((label_w + j * (tw + gap) + 2, 4), title, fill=(0, 0, 0), font=font)
    for i, name in enumerate(names):
        y = header_h + i * (th + gap)
        draw.text((4, y + th // 2 - 7), name, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(tile), (label_w, y))
        for j, severity in enumerate(severities, start=1):
            out = corrupt(image, name, severity, np.random.default_rng(corruption_seed(seed, name, severity, key)))
            if scale != 1:
                out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(out), (label_w + j * (tw + gap), y))
    return canvas
