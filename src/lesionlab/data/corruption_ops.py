"""The pixel operations of the acquisition corruptions (:mod:`lesionlab.data.corruptions` defines the fifteen
corruptions, their severities and their API; the scaling rules and the deliberate differences from MedMNIST-C's
code are documented there).

Each operation takes an HxWx3 uint8 image, its severity parameter, the size factor ``s = min(H, W) / 224`` and a
``numpy.random.Generator``, and returns a new uint8 image of the same shape.
"""

from __future__ import annotations

import io
import math
import string
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from scipy import ndimage, signal

from lesionlab.core.errors import LesionlabError

#: The image size MedMNIST-C's parameters were chosen for.
REFERENCE_SIZE = 224
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Glyph height of OpenCV's Hershey fonts at font scale 1 (pixels), which MedMNIST-C's ``characters`` sizes use.
HERSHEY_HEIGHT_PX = 22.0


class CorruptionError(LesionlabError, ValueError):
    """An unknown corruption name, a severity out of range, or an image that cannot be corrupted."""


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


def pixelate(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    img = Image.fromarray(image).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def jpeg(image: np.ndarray, quality: int, s: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def gaussian_noise(image: np.ndarray, sigma: float, s: float, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _uint8(x + rng.normal(0.0, sigma, size=x.shape))


def speckle_noise(image: np.ndarray, sigma: float, s: float, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _uint8(x + x * rng.normal(0.0, sigma, size=x.shape))


def impulse_noise(image: np.ndarray, amount: float, s: float, rng: np.random.Generator) -> np.ndarray:
    # salt and pepper on each value independently (as scikit-image's random_noise on an HxWx3 array), half each
    x = image.copy()
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 255
    x[hit & ~salt] = 0
    return x


def shot_noise(image: np.ndarray, photons: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return _uint8(rng.poisson(_unit(image) * photons) / photons)


def defocus_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    radius, alias = param
    return _uint8(_convolve(_unit(image), disk_kernel(radius * s, alias * s), "reflect"))


def motion_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = param
    kernel = motion_kernel(radius * s, sigma * s, float(rng.uniform(-45.0, 45.0)))
    return _uint8(_convolve(_unit(image), kernel, "edge"))


def zoom_blur(image: np.ndarray, param: tuple[float, float], s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    channels = [Image.fromarray(image[:, :, c].astype(np.float32), mode="F") for c in range(3)]
    total = image.astype(np.float64)  # MedMNIST-C averages the image with its zooms (the first, factor 1, is it)
    factors = zoom_factors(*param)
    for z in factors:
        # the centre (w / z) x (h / z) box, enlarged bilinearly back to w x h: a zoom by z about the centre
        box = ((w - w / z) / 2, (h - h / z) / 2, (w + w / z) / 2, (h + h / z) / 2)
        total += np.stack([np.asarray(ch.resize((w, h), Image.Resampling.BILINEAR, box=box)) for ch in channels], -1)
    return np.clip(np.rint(total / (len(factors) + 1)), 0, 255).astype(np.uint8)


def brightness(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor), dtype=np.uint8).copy()


def contrast(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(factor), dtype=np.uint8).copy()


def black_corner(image: np.ndarray, factor: float, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    radius = factor * min(h, w) / 2.0
    outside = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 > radius ** 2
    out = image.copy()
    out[outside] = 0
    return out


@lru_cache(maxsize=64)
def load_font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def _cap_height_per_px() -> float:
    """Height of a capital letter per pixel of font size, measured once on the font in use."""
    font = load_font(100)
    top, bottom = font.getbbox("H")[1], font.getbbox("H")[3]
    return max(1.0, bottom - top) / 100.0


def _text_mask(text: str, cap_px: float, stroke_px: float) -> np.ndarray:
    """Alpha mask (float 0-1) of ``text`` whose capitals are ``cap_px`` high, drawn supersampled then reduced."""
    k = max(1, math.ceil(24.0 / max(cap_px, 0.1)))  # draw with capitals at least 24 px high, then shrink by k
    size = max(1, round(cap_px * k / _cap_height_per_px()))
    font = load_font(size)
    stroke = max(0, round((stroke_px * k - 0.1 * size) / 2))
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    big = Image.new("L", (max(1, right - left + 2), max(1, bottom - top + 2)), 0)
    ImageDraw.Draw(big).text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    small = big.resize((max(1, round(big.width / k)), max(1, round(big.height / k))), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def characters(image: np.ndarray, param: tuple[int, int, float], s: float, rng: np.random.Generator) -> np.ndarray:
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
