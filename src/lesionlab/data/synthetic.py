"""SYNTHETIC lesion-like images with plausible metadata, for unit tests and for the demo when no real data exists.

Nothing here is a dermoscopy image. Each picture is an irregular blob on a skin-coloured background whose colour,
texture, border and size depend on the class (dark irregular multicolour blobs for ``mel``, smooth round brown ones
for ``nv``, red lobules for ``vasc``, a pale centre for ``df``, vessels for ``bcc``, ...), so a small model can
learn them above chance. Class frequencies follow HAM10000 (every class present), some lesions have 2-3 images (so
lesion grouping is exercised), and age / sex / site look like HAM10000's with a few missing values.

Everything is deterministic by seed. Image ids are ``SYN_xxxxx``, lesion ids ``SYNL_xxxxx``, ``dx_type`` is
``synthetic``, and every source built from it says SYNTHETIC in its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import zoom

from lesionlab.classes import CLASS_CODES, index_of

GENERATOR_VERSION = 1
# HAM10000 class frequencies (10,015 images).
CLASS_FREQ: dict[str, float] = {"akiec": 0.033, "bcc": 0.051, "bkl": 0.110, "df": 0.011, "mel": 0.111,
                                "nv": 0.669, "vasc": 0.014}
_SITE_FREQ = {"back": 0.22, "lower extremity": 0.21, "trunk": 0.14, "upper extremity": 0.11, "abdomen": 0.10,
              "face": 0.07, "chest": 0.04, "foot": 0.03, "neck": 0.017, "scalp": 0.013, "hand": 0.009,
              "ear": 0.006, "genital": 0.005, "acral": 0.001}
_AGE = {"akiec": (67, 11), "bcc": (66, 12), "bkl": (59, 14), "df": (52, 14), "mel": (61, 14), "nv": (46, 15),
        "vasc": (50, 20)}


@dataclass(frozen=True)
class _Style:
    core: tuple[float, float, float]  # RGB 0..1 at the centre
    rim: tuple[float, float, float]  # RGB at the border
    irregular: float  # border irregularity
    radius: tuple[float, float]  # fraction of the half-width
    texture: float  # strength of the lesion's texture noise
    cells: int  # texture scale (noise grid cells)


_STYLES: dict[str, _Style] = {
    "akiec": _Style((0.70, 0.38, 0.35), (0.82, 0.55, 0.50), 0.22, (0.30, 0.48), 0.30, 14),
    "bcc": _Style((0.83, 0.60, 0.60), (0.78, 0.52, 0.50), 0.14, (0.28, 0.45), 0.10, 6),
    "bkl": _Style((0.58, 0.42, 0.28), (0.68, 0.52, 0.36), 0.18, (0.32, 0.50), 0.25, 10),
    "df": _Style((0.86, 0.78, 0.72), (0.55, 0.38, 0.28), 0.05, (0.22, 0.34), 0.08, 5),
    "mel": _Style((0.16, 0.10, 0.09), (0.40, 0.28, 0.22), 0.32, (0.38, 0.60), 0.35, 7),
    "nv": _Style((0.42, 0.27, 0.18), (0.55, 0.38, 0.27), 0.05, (0.25, 0.42), 0.08, 6),
    "vasc": _Style((0.62, 0.12, 0.22), (0.72, 0.25, 0.35), 0.12, (0.22, 0.38), 0.12, 4),
}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise field [size, size] (cubic upsampling of a coarse random grid)."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    field = zoom(grid, size / (cells + 1), order=3, mode="reflect", grid_mode=True)[:size, :size]
    return field / (field.std() + 1e-6)


def _class_counts(n: int) -> dict[str, int]:
    """Images per class: HAM10000 proportions, at least 2 per class, summing to ``n``."""
    counts = {c: max(2, round(CLASS_FREQ[c] * n)) for c in CLASS_CODES}
    counts["nv"] += n - sum(counts.values())
    return counts


def _lesion_sizes(rng: np.random.Generator, total: int) -> list[int]:
    """Split ``total`` images into lesions of 1-3 images (about 80% single, like HAM10000's 7,470 / 10,015)."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(int(rng.choice([1, 2, 3], p=[0.8, 0.14, 0.06])), total - sum(sizes)))
    return sizes


def _render(rng: np.random.Generator, dx: str, params: dict[str, float], size: int) -> np.ndarray:
    """One image of a lesion: the lesion's fixed ``params`` plus per-image variation drawn from ``rng``."""
    style = _STYLES[dx]
    lin = np.linspace(-1.0, 1.0, size)
    xx, yy = np.meshgrid(lin, lin)
    # Skin: a base tone with smooth blotches, optional dermoscope vignette.
    skin = np.array([params["skin_r"], params["skin_g"], params["skin_b"]]) * rng.uniform(0.95, 1.05)
    img = skin[None, None, :] * (1.0 + 0.04 * _smooth_noise(rng, size, 4)[..., None])
    # Lesion shape: a radius function with a few random harmonics (irregular border for irregular classes).
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = params["cx"] + rng.normal(0, 0.03), params["cy"] + rng.normal(0, 0.03)
    r = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx) + angle
    radius = params["radius"] * rng.uniform(0.93, 1.07)
    border = np.ones_like(theta)
    for k in range(2, 7):
        border += params[f"h{k}"] * np.cos(k * theta + params[f"p{k}"]) / k
    boundary = radius * np.clip(border, 0.5, 1.6)
    mask = 1.0 / (1.0 + np.exp(-(boundary - r) / (0.02 + 0.02 * style.irregular)))
    depth = np.clip(1.0 - r / np.maximum(boundary, 1e-3), 0.0, 1.0)[..., None]
    colour = np.array(style.rim)[None, None, :] * (1 - depth) + np.array(style.core)[None, None, :] * depth
    colour = colour * (1.0 + style.texture * 0.5 * _smooth_noise(rng, size, style.cells)[..., None])
    if dx == "mel":  # blue-grey veil and dark blotches
        veil = (_smooth_noise(rng, size, 5) > 0.6)[..., None]
        colour = np.where(veil, np.array([0.35, 0.38, 0.48])[None, None, :], colour)
    elif dx == "df":  # pale centre inside a brown ring
        colour = colour * (1.0 - 0.25 * (depth < 0.35))
    elif dx == "bcc":  # branching red vessels
        for _ in range(3):
            a, b, f = rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), rng.uniform(3, 8)
            line = np.abs(yy - (cy + b + 0.15 * np.sin(f * (xx - cx) + a))) < 0.018
            colour = np.where(line[..., None], np.array([0.75, 0.15, 0.18])[None, None, :], colour)
    elif dx == "vasc":  # darker lobules
        colour = colour * (1.0 - 0.3 * (_smooth_noise(rng, size, 8) > 0.8))[..., None]
    elif dx == "akiec":  # white scale
        colour = np.where((_smooth_noise(rng, size, 16) > 1.3)[..., None], 0.9, colour)
    img = img * (1 - mask[..., None]) + colour * mask[..., None]
    for _ in range(rng.poisson(params["hairs"])):  # dark hairs across the field
        a0, off, bend = rng.uniform(0, np.pi), rng.uniform(-0.8, 0.8), rng.uniform(-0.3, 0.3)
        dist = np.abs(np.cos(a0) * yy - np.sin(a0) * xx - off - bend * (xx * np.cos(a0)) ** 2)
        img = np.where((dist < 0.012)[..., None], img * 0.35, img)
    if params["vignette"]:
        img = img * np.clip(1.6 - np.hypot(xx, yy), 0.0, 1.0)[..., None]
    img = img * rng.uniform(0.92, 1.08) + rng.normal(0, 0.012, img.shape)  # exposure and sensor noise
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def generate_synthetic(n: int = 700, seed: int = 0, size: int = 64) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` SYNTHETIC images and their metadata -> (HAM10000-style metadata frame, uint8 array [n, size, size, 3]).

    The frame has HAM10000's columns (``lesion_id, image_id, dx, dx_type, age, sex, localization``).
    """
    if n < 2 * len(CLASS_CODES):
        raise ValueError(f"synthetic set needs n >= {2 * len(CLASS_CODES)} (2 per class), got {n}")
    if size < 16:
        raise ValueError(f"synthetic images need size >= 16, got {size}")
    rng = np.random.default_rng([seed, GENERATOR_VERSION])
    lesions: list[tuple[str, int]] = []
    for dx, count in _class_counts(n).items():
        lesions += [(dx, k) for k in _lesion_sizes(rng, count)]
    order = rng.permutation(len(lesions))
    sites = list(_SITE_FREQ)
    site_p = np.array(list(_SITE_FREQ.values()))
    rows: list[dict[str, object]] = []
    images: list[np.ndarray] = []
    for lesion_no, pos in enumerate(order):
        dx, count = lesions[pos]
        style = _STYLES[dx]
        params: dict[str, float] = {
            "cx": rng.normal(0, 0.08), "cy": rng.normal(0, 0.08), "radius": rng.uniform(*style.radius),
            "skin_r": rng.uniform(0.78, 0.95), "skin_g": rng.uniform(0.58, 0.75), "skin_b": rng.uniform(0.50, 0.66),
            "hairs": rng.uniform(0, 2.0), "vignette": float(rng.random() < 0.3),
        }
        for k in range(2, 7):
            params[f"h{k}"] = rng.normal(0, style.irregular * 1.5)
            params[f"p{k}"] = rng.uniform(0, 2 * np.pi)
        mean, sd = _AGE[dx]
        age = float(np.clip(5 * round(rng.normal(mean, sd) / 5), 5, 85)) if rng.random() > 0.02 else np.nan
        sex = "unknown" if rng.random() < 0.01 else ("male" if rng.random() < 0.54 else "female")
        p = site_p.copy()
        if dx in ("akiec", "bcc"):  # sun-exposed sites
            p[sites.index("face")] *= 5
        site = "unknown" if rng.random() < 0.025 else str(rng.choice(sites, p=p / p.sum()))
        for _ in range(count):
            rows.append({"lesion_id": f"SYNL_{lesion_no:05d}", "image_id": f"SYN_{len(rows):05d}", "dx": dx,
                         "dx_type": "synthetic", "age": age, "sex": sex, "localization": site})
            images.append(_render(rng, dx, params, size))
    return pd.DataFrame(rows), np.stack(images)


def synthetic_table(meta: pd.DataFrame) -> pd.DataFrame:
    """HAM10000-style synthetic metadata -> the sample table (contract columns, no split yet)."""
    return pd.DataFrame({
        "image_id": meta["image_id"].astype(str), "lesion_id": meta["lesion_id"].astype(str),
        "label": [index_of(d) for d in meta["dx"]], "dx": meta["dx"].astype(str),
        "age": meta["age"].astype(float), "sex": meta["sex"].astype(str), "site": meta["localization"].astype(str),
        "dx_type": meta["dx_type"].astype(str), "split": "",
    })
