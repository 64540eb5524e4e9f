"""The image pipeline: one way from a decoded image to the model input, and seeded augmentation for training.

:class:`Preprocessing` owns every step from a decoded image to the model's input tensor, and every entry point
uses it: the decode-once cache that training and evaluation read (:meth:`Preprocessing.resize_image`, through
:func:`model_pixels`), ``Run.predict_proba``, ``lesionlab evaluate`` (split and external), ``lesionlab predict``,
the service and the ONNX path. The steps:

1. ``source_size`` (optional): squash the image to the size the training images were *stored* at (the shared
   HAM10000 copy is 64 px), bicubic, as they were made, unless it already has that size or the model input size;
2. resize to the model input ``size``, in one of two modes:

   - ``square``: squash the whole image to H x W, as MedMNIST does (DermaMNIST is the full 600x450 dermoscopy
     squashed to a square);
   - ``aspect``: keep the aspect ratio, scale so the image covers H x W, then crop the centre, as the 300x224 and
     600x450 inputs of the HAM10000 study (whose 4:3 images lose at most a few pixels at the sides);

3. ``colour_constancy`` (optional): Shades of Gray (:mod:`lesionlab.data.colour`) on the uint8 pixels at the model
   size, so in training it follows every augmentation and acquisition corruption;
4. scale to [0, 1] and normalise with the backbone's mean and std (steps 3-4: a v2 transform built once per object).

Both resizes use Pillow's bicubic filter (antialiased when shrinking). Steps 1-2 are idempotent: pixels already at
the model size pass unchanged, so a cached row and the decoded image it came from give the same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from lesionlab.config import AugmentConfig, ConfigError
from lesionlab.data.images import DataError

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
            raise DataError(f"expected an HxWx3 uint8 RGB array, got shape {img.shape} dtype {img.dtype}")
        if img.shape[:2] == (h, w):
            return img
        img = Image.fromarray(img)
    if img.mode != "RGB":
        raise DataError(f"expected an RGB image, got mode {img.mode} (decode with lesionlab.data.decode_image)")
    if resize == "square":
        out = img.resize((w, h), Image.Resampling.BICUBIC)
    else:
        scale = max(w / img.width, h / img.height)
        new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        left, top = (new_w - w) // 2, (new_h - h) // 2
        out = img.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + w, top + h))
    return np.array(out, dtype=np.uint8)


def _hw(img: Image.Image | np.ndarray) -> tuple[int, int]:
    return (int(img.shape[0]), int(img.shape[1])) if isinstance(img, np.ndarray) else (img.height, img.width)


def model_pixels(img: Image.Image | np.ndarray, size: tuple[int, int], resize: str = "square",
                 source_size: tuple[int, int] | None = None) -> np.ndarray:
    """Steps 1-2 of the module docstring: the HxWx3 uint8 pixels the model sees for a decoded image."""
    hw = _hw(img)
    if source_size is not None and hw not in (tuple(source_size), tuple(size)):
        pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
        img = pil.resize((int(source_size[1]), int(source_size[0])), Image.Resampling.BICUBIC)
    return resize_image(img, size, resize)


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


def _pair(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"Preprocessing.{name} must be (height, width) with positive values, got {value}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes model input (see the module docstring); saved in every run's ``run.json``."""

    size: tuple[int, int]
    resize: ResizeMode = "square"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source_size: tuple[int, int] | None = None  # (height, width) the training images were stored at
    colour_constancy: str = "none"  # or "shades_of_gray" (lesionlab.data.colour): step 3
    colour_constancy_power: float = 6.0
    _normalize: v2.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size, "size"))
        object.__setattr__(self, "source_size", _pair(self.source_size, "source_size"))
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Preprocessing.resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"Preprocessing.{name} must have 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std}")
        object.__setattr__(self, "_normalize", v2.Compose([
            _CheckSize(self.size), *_colour_steps(self.colour_constancy, self.colour_constancy_power),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(self.mean), std=list(self.std))]))

    def resize_image(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Steps 1-2: the HxWx3 uint8 pixels the model sees (the same function fills the cache)."""
        return model_pixels(img, self.size, self.resize, self.source_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 3-4: uint8 [3, H, W] at ``size`` -> normalised float tensor; no randomness."""
        return self._normalize(x)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        """PIL image or HxWx3 uint8 array -> normalised float tensor [3, H, W]."""
        return self.normalize(to_chw_tensor(self.resize_image(img)))

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """A float batch ``[N, 3, H, W]`` of decoded images."""
        return torch.stack([self(img) for img in images])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for ``run.json`` (the colour-constancy keys only when it is on)."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if self.colour_constancy == "none":
            out.pop("colour_constancy")
            out.pop("colour_constancy_power")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source_size: Sequence[int] | None = None) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors (a run written by another version).

        ``source_size`` is used when the record has none: records written before it was part of the preprocessing
        lack it, and their run's ``data.source_image_size`` (which the service applied to them) takes its place.
        """
        required = {"size", "resize", "mean", "std"}
        optional = {"source_size", "colour_constancy", "colour_constancy_power"}
        if not required <= set(data) <= required | optional:
            raise ValueError(f"preprocessing record has keys {sorted(data)}, expected {sorted(required)} "
                             f"(and optionally {sorted(optional)})")
        source = data.get("source_size") or source_size
        return cls(size=tuple(data["size"]), resize=data["resize"], mean=tuple(data["mean"]), std=tuple(data["std"]),
                   source_size=tuple(source) if source else None,
                   colour_constancy=data.get("colour_constancy", "none"),
                   colour_constancy_power=float(data.get("colour_constancy_power", 6.0)))


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees, each equally likely: exact pixels, unlike an interpolated rotation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(4, (1,)).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _colour_steps(method: str, power: float) -> list[Any]:
    """Step 3, colour constancy (empty when off): the last step on uint8 pixels, after any augmentation."""
    from lesionlab.data.colour import colour_step

    step = colour_step(method, power)
    return [] if step is None else [step]


def build_train_transform(aug: AugmentConfig, pre: Preprocessing) -> v2.Compose:
    """Augmentation on uint8 [3,H,W] tensors, then ``pre``'s normalisation; without ``aug.enabled`` just that.

    Geometry (rotation, zoom, shear, translation, flips, quarter turns) then camera-like changes (brightness,
    contrast, colour, blur), as in the HAM10000 study, then an acquisition corruption (``aug.corruptions``), then
    the preprocessing's colour constancy. Rotated-in corners are filled with black, like a dermoscope's vignette.
    Draws come from torch's global generator: use :func:`seeded` for reproducible views.
    """
    if not aug.enabled:
        return pre.normalize
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
            raise ConfigError(f"augment.rot90 needs a square input size, got {h}x{w}: a quarter turn would change the "
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
    return v2.Compose([*steps, pre.normalize])


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
