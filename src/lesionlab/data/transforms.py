"""The image pipeline: one resize shared by the cache and serving, normalisation, and seeded augmentation.

:func:`resize_image` is the only place where an image changes size. The decode-once cache, evaluation and the
prediction service all call it, so a model sees at serving time exactly the pixels it was trained on.

Two resize modes:

- ``square``: squash the whole image to H x W, as MedMNIST does (DermaMNIST is the full 600x450 dermoscopy
  squashed to a square);
- ``aspect``: keep the aspect ratio, scale so the image covers H x W, then crop the centre, as the 300x224 and
  600x450 inputs of the HAM10000 study (whose 4:3 images lose at most a few pixels at the sides).

Both use Pillow's bicubic filter (antialiased when shrinking).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from lesionlab.config import AugmentConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RESIZE_MODES: tuple[str, ...] = ("square", "aspect")

ResizeMode = Literal["square", "aspect"]


def resize_image(img: Image.Image | np.ndarray, size: tuple[int, int], resize: str = "square") -> np.ndarray:
    """Resize an RGB image to ``size`` = (height, width); returns an HxWx3 uint8 array (see module doc)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    h, w = int(size[0]), int(size[1])
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {img.shape} dtype {img.dtype}")
        if img.shape[:2] == (h, w):
            return img
        img = Image.fromarray(img)
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode} (decode with lesionlab.data.decode_image)")
    if resize == "square":
        out = img.resize((w, h), Image.Resampling.BICUBIC)
    else:
        scale = max(w / img.width, h / img.height)
        new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        left, top = (new_w - w) // 2, (new_h - h) // 2
        out = img.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + w, top + h))
    return np.array(out, dtype=np.uint8)


def to_chw_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array (e.g. a row of the cache) -> 3xHxW uint8 tensor, the input of the v2 transforms."""
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), dtype=np.uint8, order="C"))  # one writable copy


class _CheckSize(torch.nn.Module):
    """Fail clearly when an image reaches the tensor pipeline at the wrong size (it must be resized first)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[0] != 3 or tuple(x.shape[1:]) != self.size:
            raise ValueError(f"image tensor has shape {tuple(x.shape)}, expected (3, {self.size[0]}, {self.size[1]}); "
                             "resize it with Preprocessing.resize_image or lesionlab.data.cached_images first")
        if x.dtype != torch.uint8:
            raise ValueError(f"image tensor has dtype {x.dtype}, expected torch.uint8")
        return x


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model input; saved in every run so evaluation and serving rebuild it exactly."""

    size: tuple[int, int]
    resize: ResizeMode = "square"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    colour_constancy: str = "none"  # or "shades_of_gray" (lesionlab.data.colour), applied before normalisation
    colour_constancy_power: float = 6.0

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"Preprocessing.size must be (height, width) with positive values, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Preprocessing.resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        for field in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, field))
            if len(value) != 3:
                raise ValueError(f"Preprocessing.{field} must have 3 values (R, G, B), got {value}")
            object.__setattr__(self, field, value)
        if min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std}")
        object.__setattr__(self, "size", size)
        from lesionlab.data.colour import colour_step

        colour_step(self.colour_constancy, self.colour_constancy_power)  # validates the setting

    def resize_image(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """The HxWx3 uint8 pixels the model sees (the same function fills the cache)."""
        return resize_image(img, self.size, self.resize)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        """PIL image or HxWx3 uint8 array -> normalised float tensor [3, H, W]."""
        return build_eval_transform(self)(to_chw_tensor(self.resize_image(img)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for ``run.json`` (the colour-constancy keys only when it is on)."""
        out = asdict(self)
        if self.colour_constancy == "none":
            out.pop("colour_constancy")
            out.pop("colour_constancy_power")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors (a run written by another version)."""
        expected = {"size", "resize", "mean", "std"}
        optional = {"colour_constancy", "colour_constancy_power"}
        if not expected <= set(data) <= expected | optional:
            raise ValueError(f"preprocessing record has keys {sorted(data)}, expected {sorted(expected)} "
                             f"(and optionally {sorted(optional)})")
        return cls(size=tuple(data["size"]), resize=data["resize"], mean=tuple(data["mean"]), std=tuple(data["std"]),
                   colour_constancy=data.get("colour_constancy", "none"),
                   colour_constancy_power=float(data.get("colour_constancy_power", 6.0)))


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees, each equally likely: exact pixels, unlike an interpolated rotation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(4, (1,)).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def build_eval_transform(pre: Preprocessing) -> v2.Compose:
    """uint8 [3,H,W] tensor at ``pre.size`` -> normalised float tensor; no randomness."""
    return v2.Compose([_CheckSize(pre.size), *_colour_steps(pre), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(pre.mean), std=list(pre.std))])


def _colour_steps(pre: Preprocessing) -> list[Any]:
    """The preprocessing's colour-constancy step (empty when off): the last step on uint8 pixels."""
    from lesionlab.data.colour import colour_step

    step = colour_step(pre.colour_constancy, pre.colour_constancy_power)
    return [] if step is None else [step]


def build_train_transform(aug: AugmentConfig, pre: Preprocessing) -> v2.Compose:
    """Augmentation on uint8 [3,H,W] tensors, then normalisation; without ``aug.enabled`` the eval transform.

    Geometry (rotation, zoom, shear, translation, flips, quarter turns) then camera-like changes (brightness,
    contrast, colour, blur), as in the HAM10000 study, then an acquisition corruption (``aug.corruptions``), then
    the preprocessing's colour constancy. Rotated-in corners are filled with black, like a dermoscope's vignette.
    Draws come from torch's global generator: use :func:`seeded` for reproducible views.
    """
    if not aug.enabled:
        return build_eval_transform(pre)
    h, w = pre.size
    steps: list[Any] = [_CheckSize(pre.size)]
    if aug.rotation or aug.shear or aug.translate or tuple(aug.zoom) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate),
                                     scale=tuple(aug.zoom), shear=aug.shear,
                                     interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip())
    if aug.rot90:
        if h != w:
            raise ValueError(f"augment.rot90 needs a square input size, got {h}x{w}: a quarter turn would change the "
                             "shape; use augment.rotation for non-square inputs")
        steps.append(RandomRot90())
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        steps.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
                                    hue=aug.hue))
    if aug.blur_p > 0:
        kernel = 2 * max(1, round(0.04 * min(h, w))) + 1  # 7 px at 64, 19 px at 224
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, max(0.5, min(h, w) / 64)))], p=aug.blur_p))
    if aug.corruptions:  # acquisition corruptions act on the final pixels, as on the corrupted test split
        from lesionlab.data.corruptions import RandomCorruption

        steps.append(RandomCorruption(aug.corruptions, aug.corruption_p, tuple(aug.corruption_severity)))
    steps += [*_colour_steps(pre), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
    return v2.Compose(steps)


def sample_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from a base seed and keys (epoch, index), independent of worker order."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, np.uint64)[0] >> 1)


def seeded(transform: Any, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply a random transform with its own generator state, leaving torch's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also seed (and leave changed) any accelerator's generators,
        # which fork_rng(devices=[]) does not restore, and costs ~100x more (114 vs 1.3 us here) per sample
        torch.default_generator.manual_seed(seed)
        return transform(x)
