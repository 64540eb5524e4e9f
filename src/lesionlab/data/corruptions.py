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
import io
import math
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from scipy import ndimage, signal

from lesionlab.core.errors import LesionlabError

#: The image size MedMNIST-C's parameters were chosen for.
REFERENCE_SIZE = 224
#: Bump when any corruption's output changes: cached cell predictions and reference figures carry it.
CORRUPTIONS_VERSION = 1
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Glyph height of OpenCV's Hershey fonts at font scale 1 (pixels), which MedMNIST-C's ``characters`` sizes use.
HERSHEY_HEIGHT_PX = 22.0
CITATION = ("Di Salvo, Doerrich & Ledig, MedMNIST-C: Comprehensive benchmark and improved classifier robustness by "
            "simulating realistic image corruptions, arXiv:2406.17536 (2024)")


class CorruptionError(LesionlabError, ValueError):
    """An unknown corruption name, a severity out of range, or an image that cannot be corrupted."""


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


# --------------------------------------------------------------------------------------------------- helpers


def check_image(image: np.ndarray) -> None:
    """Corruptions take HxWx3 uint8 RGB arrays (the cache's rows); anything else is a clear error."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise CorruptionError(f"corruptions take an HxWx3 uint8 RGB array, got {type(image).__name__} {shape} "
                              f"{getattr(image, 'dtype', '')}")
    if min(image.shape[:2]) < 4:
        raise CorruptionError(f"image of {image.shape[1]}x{image.shape[0]} px is too small to corrupt (min 4 px)")


def check_severity(severity: int) -> int:
    """Severity as an int in 1..5."""
    if isinstance(severity, bool) or int(severity) != severity or int(severity) not in SEVERITIES:
        raise CorruptionError(f"severity {severity!r} is not one of {', '.join(map(str, SEVERITIES))}")
    return int(severity)


def size_scale(image: np.ndarray) -> float:
    """``min(height, width) / 224``: the factor that scales MedMNIST-C's lengths to this image."""
    return min(image.shape[:2]) / REFERENCE_SIZE


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def _convolve(image: np.ndarray, kernel: np.ndarray, pad_mode: str) -> np.ndarray:
    """2-D convolution of each channel of a float HxWx3 image; borders padded with ``pad_mode`` (same size out)."""
    kh, kw = kernel.shape
    top, left = kh // 2, kw // 2
    padded = np.pad(image, ((top, kh - 1 - top), (left, kw - 1 - left), (0, 0)), mode=pad_mode)
    return signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))


def disk_kernel(radius: float, alias_sigma: float, supersample: int = 8) -> np.ndarray:
    """A normalised disk of ``radius`` px, anti-aliased by area coverage, softened by a Gaussian of ``alias_sigma``.

    Area coverage keeps sub-pixel radii meaningful (a radius of 0.6 px still spreads light to the neighbours), so
    the blur shrinks smoothly with the image instead of vanishing at small sizes.
    """
    half = math.ceil(radius + 3 * alias_sigma) + 1
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid = np.arange(-half, half + 1)
    fine = (grid[:, None] + offsets[None, :]).ravel()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius ** 2
    n = 2 * half + 1
    kernel = inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    if kernel.sum() == 0:  # radius 0: identity
        kernel[half, half] = 1.0
    if alias_sigma > 0:
        kernel = ndimage.gaussian_filter(kernel, alias_sigma, mode="constant")
    return kernel / kernel.sum()


def motion_kernel(radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """One-sided motion-blur kernel: ``2 ceil(radius) + 1`` taps along ``angle``, Gaussian weights of ``sigma``.

    The shape of ImageMagick's ``-motion-blur radius x sigma + angle`` (which MedMNIST-C calls): tap ``i`` sits
    ``i`` pixels along the direction with weight ``exp(-i^2 / 2 sigma^2)``; taps between pixels are split
    bilinearly.
    """
    taps = int(2 * math.ceil(radius) + 1) if radius > 0 else 1
    sigma = max(sigma, 1e-6)
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    half = taps + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    for i in range(taps):
        w = math.exp(-(i * i) / (2 * sigma * sigma))
        # convolution: output(p) = sum_i w_i input(p + i u), so the tap sits at -i u in the kernel
        x, y = half - i * dx, half - i * dy
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        for yy, xx, share in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                              (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
            kernel[yy, xx] += w * share
    return kernel / kernel.sum()


def zoom_factors(max_zoom: float, step: float) -> np.ndarray:
    """``1, 1 + step, ...`` up to ``max_zoom`` inclusive.

    MedMNIST-C writes these as ``np.arange(1, stop, step)``; the levels here are the values those calls give
    (``np.arange(1, 1.11, 0.01)`` ends at 1.11 in floating point, so severity 1 zooms up to 1.11).
    """
    n = round((max_zoom - 1.0) / step) + 1
    return 1.0 + step * np.arange(n)


# ----------------------------------------------------------------------------------------------- corruptions


def _pixelate(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    img = Image.fromarray(image).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def _jpeg(image: np.ndarray, quality: int, s: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _gaussian_noise(image: np.ndarray, sigma: float, s: float, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _uint8(x + rng.normal(0.0, sigma, size=x.shape))


def _speckle_noise(image: np.ndarray, sigma: float, s: float, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _uint8(x + x * rng.normal(0.0, sigma, size=x.shape))


def _impulse_noise(image: np.ndarray, amount: float, s: float, rng: np.random.Generator) -> np.ndarray:
    # salt and pepper on each value independently (as scikit-image's random_noise on an HxWx3 array), half each
    x = image.copy()
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 255
    x[hit & ~salt] = 0
    return x


def _shot_noise(image: np.ndarray, photons: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return _uint8(rng.poisson(_unit(image) * photons) / photons)


def _defocus_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    radius, alias = param
    return _uint8(_convolve(_unit(image), disk_kernel(radius * s, alias * s), "reflect"))


def _motion_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = param
    kernel = motion_kernel(radius * s, sigma * s, float(rng.uniform(-45.0, 45.0)))
    return _uint8(_convolve(_unit(image), kernel, "edge"))


def _zoom_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    channels = [Image.fromarray(image[:, :, c].astype(np.float32), mode="F") for c in range(3)]
    total = image.astype(np.float64)  # MedMNIST-C averages the image with its zooms (the first, factor 1, is it)
    factors = zoom_factors(*param)
    for z in factors:
        # the centre (w / z) x (h / z) box, enlarged bilinearly back to w x h: a zoom by z about the centre
        box = ((w - w / z) / 2, (h - h / z) / 2, (w + w / z) / 2, (h + h / z) / 2)
        total += np.stack([np.asarray(ch.resize((w, h), Image.Resampling.BILINEAR, box=box)) for ch in channels], -1)
    return np.clip(np.rint(total / (len(factors) + 1)), 0, 255).astype(np.uint8)


def _brightness(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor), dtype=np.uint8).copy()


def _contrast(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(factor), dtype=np.uint8).copy()


def _black_corner(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    radius = factor * min(h, w) / 2.0
    outside = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 > radius ** 2
    out = image.copy()
    out[outside] = 0
    return out


@lru_cache(maxsize=64)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def _cap_height_per_px() -> float:
    """Height of a capital letter per pixel of font size, measured once on the font in use."""
    font = _font(100)
    top, bottom = font.getbbox("H")[1], font.getbbox("H")[3]
    return max(1.0, bottom - top) / 100.0


def _text_mask(text: str, cap_px: float, stroke_px: float) -> np.ndarray:
    """Alpha mask (float 0-1) of ``text`` whose capitals are ``cap_px`` high, drawn supersampled then reduced."""
    k = max(1, math.ceil(24.0 / max(cap_px, 0.1)))  # draw with capitals at least 24 px high, then shrink by k
    size = max(1, round(cap_px * k / _cap_height_per_px()))
    font = _font(size)
    stroke = max(0, round((stroke_px * k - 0.1 * size) / 2))
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    big = Image.new("L", (max(1, right - left + 2), max(1, bottom - top + 2)), 0)
    ImageDraw.Draw(big).text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    small = big.resize((max(1, round(big.width / k)), max(1, round(big.height / k))), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _characters(image: np.ndarray, param: tuple[int, int, float], s: float, rng: np.random.Generator) -> np.ndarray:
    max_words, max_letters, max_scale = param
    out = _unit(image)
    h, w = out.shape[:2]
    margin = 10.0 * s
    for _ in range(int(rng.integers(1, max_words + 1))):
        n = int(rng.integers(3, max_letters + 1))
        word = "".join(rng.choice(list(string.ascii_lowercase), size=n))
        font_scale = int(rng.integers(14, round(max_scale * 100) + 1)) / 100.0
        mask = _text_mask(word, HERSHEY_HEIGHT_PX * font_scale * s, s)
        colour = rng.integers(0, 256, size=3) / 255.0
        mh, mw = min(mask.shape[0], h), min(mask.shape[1], w)
        mask = mask[:mh, :mw]
        x0 = _position(rng, margin, w - mw - margin, w - mw)
        y0 = _position(rng, margin, h - mh - margin, h - mh)
        region = out[y0:y0 + mh, x0:x0 + mw]
        region[:] = region * (1 - mask[..., None]) + colour * mask[..., None]
    return _uint8(out)


def _position(rng: np.random.Generator, low: float, high: float, limit: int) -> int:
    """A random top/left coordinate in [low, high], or anywhere that fits when the margins leave no room."""
    lo, hi = math.ceil(low), math.floor(high)
    if hi < lo:
        lo, hi = 0, max(0, limit)
    return int(rng.integers(lo, hi + 1))


# ------------------------------------------------------------------------------------------------- registry

_LENGTH = "lengths x min(H, W) / 224"
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("pixelate", "digital", "box-downsample by a factor, then box-upsample back",
               (0.7, 0.5, 0.40, 0.30, 0.25), "factor is relative: as published", _pixelate),
    Corruption("jpeg_compression", "digital", "JPEG re-encoding at a quality", (30, 20, 15, 10, 7),
               "quality as published (8 x 8 blocks are pixels)", _jpeg),
    Corruption("gaussian_noise", "noise", "additive Gaussian noise (sd on the 0-1 scale)",
               (0.04, 0.08, 0.12, 0.18, 0.26), "per pixel: as published", _gaussian_noise),
    Corruption("speckle_noise", "noise", "multiplicative Gaussian noise x + x n (sd of n)",
               (0.05, 0.15, 0.2, 0.35, 0.45), "per pixel: as published", _speckle_noise),
    Corruption("impulse_noise", "noise", "salt and pepper: share of values set to 0 or 255",
               (0.01, 0.03, 0.06, 0.09, 0.17), "per pixel: as published", _impulse_noise),
    Corruption("shot_noise", "noise", "Poisson photon noise (photons at full scale)", (60, 25, 18, 10, 5),
               "per pixel: as published", _shot_noise),
    Corruption("defocus_blur", "blur", "disk kernel (radius, anti-alias sd) in px",
               ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)), _LENGTH, _defocus_blur),
    Corruption("motion_blur", "blur", "one-sided motion blur (radius, sd) in px at a random angle in +-45 deg",
               ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)), _LENGTH, _motion_blur),
    Corruption("zoom_blur", "blur", "mean of centre zooms 1 .. max in steps (max, step)",
               ((1.11, 0.01), (1.15, 0.01), (1.20, 0.02), (1.24, 0.02), (1.30, 0.03)),
               "zoom factors are relative: as published", _zoom_blur),
    Corruption("brightness_up", "colour", "brightness factor (Pillow ImageEnhance)", (1.1, 1.2, 1.3, 1.4, 1.5),
               "unitless: as published", _brightness),
    Corruption("brightness_down", "colour", "brightness factor (Pillow ImageEnhance)", (0.9, 0.8, 0.7, 0.6, 0.5),
               "unitless: as published", _brightness),
    Corruption("contrast_up", "colour", "contrast factor around the mean grey (Pillow ImageEnhance)",
               (1.1, 1.2, 1.3, 1.4, 1.6), "unitless: as published", _contrast),
    Corruption("contrast_down", "colour", "contrast factor around the mean grey (Pillow ImageEnhance)",
               (0.8, 0.7, 0.6, 0.5, 0.4), "unitless: as published", _contrast),
    Corruption("black_corner", "dermoscopy", "dermoscope vignette: black outside a centred circle of radius "
               "factor x half the short side (published order: severity 4 is stronger than 5)",
               (1.10, 1.05, 1.00, 0.90, 0.95), "radius is relative: as published", _black_corner),
    Corruption("characters", "dermoscopy", "overlaid random lowercase words (max words, max letters, max "
               "OpenCV font scale) in random colours", ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17),
                                                        (6, 10, 0.18)),
               "text height, stroke and margins x min(H, W) / 224", _characters),
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
    font = _font(13)
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
