"""Colour constancy: make images from different dermatoscopes and lights look as if taken under one neutral light.

Shades of Gray (Finlayson & Trezzi, "Shades of gray and colour constancy", CIC 2004) estimates the colour of the
light as the Minkowski p-norm mean of each channel, ``e_c = (mean(I_c ** p)) ** (1 / p)``, and divides it out
(a von Kries diagonal correction). ``p = 1`` is Gray World, ``p -> inf`` is max-RGB; ``p = 6`` is what Barata et
al. (IEEE JBHI 2015) found best for dermoscopy and what leading ISIC 2018 / 2019 challenge entries used.

The correction scales channel ``c`` by ``1 / (sqrt(3) e_c')`` with ``e' = e / ||e||``: a neutral grey light
leaves the image unchanged, and only the *colour* of the light is removed, its strength is kept (a darker photo
stays darker; brightness is left to augmentation and the model). It is part
of a run's preprocessing (``data.colour_constancy``), so training, evaluation (clean and corrupted) and the
service all apply it to the pixels the model sees, after any augmentation.
"""

from __future__ import annotations

import numpy as np
import torch

from lesionlab.core.errors import LesionlabError

COLOUR_CONSTANCY_METHODS: tuple[str, ...] = ("none", "shades_of_gray")
DEFAULT_POWER = 6.0


class ColourError(LesionlabError, ValueError):
    """An image or a setting the colour-constancy step cannot use."""


def illuminant(image: np.ndarray, power: float = DEFAULT_POWER) -> np.ndarray:
    """The Shades-of-Gray light estimate of an HxWx3 image: unit-norm RGB vector (float64)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ColourError(f"colour constancy takes an HxWx3 image, got shape {image.shape}")
    if power < 1:
        raise ColourError(f"Shades of Gray needs a power of at least 1, got {power}")
    x = image.reshape(-1, 3).astype(np.float64) / 255.0
    e = np.power(np.mean(np.power(x, power), axis=0), 1.0 / power)
    norm = float(np.linalg.norm(e))
    if norm == 0.0:  # an all-black image has no light to estimate
        return np.full(3, 1.0 / np.sqrt(3.0))
    return e / norm


def shades_of_gray(image: np.ndarray, power: float = DEFAULT_POWER) -> np.ndarray:
    """Colour-corrected copy of an HxWx3 uint8 image (rounded, clipped to 0-255)."""
    if image.dtype != np.uint8:
        raise ColourError(f"colour constancy takes uint8 pixels, got {image.dtype}")
    e = illuminant(image, power)
    gain = 1.0 / (np.sqrt(3.0) * np.maximum(e, 1e-6))
    out = image.astype(np.float64) * gain
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class ShadesOfGray(torch.nn.Module):
    """:func:`shades_of_gray` on a uint8 [3, H, W] tensor (the transform pipeline's format)."""

    def __init__(self, power: float = DEFAULT_POWER) -> None:
        super().__init__()
        if power < 1:
            raise ColourError(f"Shades of Gray needs a power of at least 1, got {power}")
        self.power = float(power)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[0] != 3:
            raise ColourError(f"ShadesOfGray takes a uint8 [3, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
        image = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
        return torch.from_numpy(np.ascontiguousarray(shades_of_gray(image, self.power).transpose(2, 0, 1)))

    def extra_repr(self) -> str:
        return f"power={self.power:g}"


def colour_step(method: str, power: float = DEFAULT_POWER) -> torch.nn.Module | None:
    """The transform step for a ``data.colour_constancy`` setting (``None`` for ``none``)."""
    if method == "none":
        return None
    if method == "shades_of_gray":
        return ShadesOfGray(power)
    raise ColourError(f"colour constancy {method!r} is not one of {', '.join(COLOUR_CONSTANCY_METHODS)}")
