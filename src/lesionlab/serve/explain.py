"""Grad-CAM heatmaps (pytorch-grad-cam) on the run's PyTorch model, returned as a transparent PNG overlay.

The heatmap is always computed with the PyTorch model, also when predictions are served by ONNX Runtime: Grad-CAM
needs gradients, which an inference-only ONNX session does not have. The class explained is the top-1 class of the
served probabilities unless the caller names another. The overlay is mapped back from the model's input geometry
to the uploaded image's, so the page can stack it over the original picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from lesionlab.serve.backend import TorchBackend

MIN_CAM_CELLS = 4  # smallest side of the feature map Grad-CAM is taken from, when the network has one that size


def find_target_layer(model: torch.nn.Module, example: torch.Tensor, meta: torch.Tensor | None = None
                      ) -> tuple[str, torch.nn.Module]:
    """The Grad-CAM layer: the last module, in execution order, whose 4-D output is at least 4x4 cells.

    Found by running the model once with forward hooks rather than by name, so it works for every timm family
    without a table of layer names. Usually that is the last convolutional stage (EfficientNet ``bn2``, ResNet
    ``layer4``); at small inputs (64 px gives Lite0 a 2x2 final map) it is the last stage that still has 4x4 cells,
    a little less class-specific but not a single blurred blob. Pooling layers (1x1 outputs) never qualify.
    """
    root = getattr(model, "backbone", model)
    names = {m: n for n, m in root.named_modules() if n}
    finished: list[tuple[torch.nn.Module, int]] = []

    def hook(module: torch.nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            finished.append((module, min(int(out.shape[-2]), int(out.shape[-1]))))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(example, meta) if meta is not None else model(example)
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise ValueError(f"{type(model).__name__}: no layer outputs a 4-D feature map; Grad-CAM needs a CNN")
    for minimum in (MIN_CAM_CELLS, 2, 1):
        chosen = [m for m, cells in finished if cells >= minimum]
        if chosen:
            layer = chosen[-1]
            break
    prefix = "backbone." if root is not model else ""
    return prefix + names[layer], layer


class _WithMeta(torch.nn.Module):
    """Binds the metadata row so that Grad-CAM can call the model with the image alone."""

    def __init__(self, model: torch.nn.Module, meta: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, self.meta) if self.meta is not None else self.model(image)


@dataclass(frozen=True)
class Heatmap:
    """A Grad-CAM map in model-input geometry (values 0..1) and the layer it was taken from."""

    cam: np.ndarray  # [H, W] float32
    layer: str
    class_index: int


class GradCamExplainer:
    """Grad-CAM for one model, run on the torch backend's model thread (one model call at a time)."""

    def __init__(self, backend: TorchBackend) -> None:
        self.backend = backend
        self.model = backend.model
        self._layer: tuple[str, torch.nn.Module] | None = None

    def cam(self, image: torch.Tensor, meta: torch.Tensor | None, class_index: int) -> Heatmap:
        """Grad-CAM of ``class_index`` for one preprocessed image ``[C, H, W]`` (and its metadata row ``[D]``)."""
        return self.backend.call(self._cam, image, meta, int(class_index))

    def _cam(self, image: torch.Tensor, meta: torch.Tensor | None, class_index: int) -> Heatmap:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = image.unsqueeze(0).float()
        m = meta.unsqueeze(0).float() if meta is not None else None
        if self._layer is None:
            self._layer = find_target_layer(self.model, x, m)
        name, layer = self._layer
        x = x.clone().requires_grad_(True)  # a graph exists even when every weight is frozen
        with torch.enable_grad(), GradCAM(model=_WithMeta(self.model, m), target_layers=[layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
        return Heatmap(cam=np.asarray(maps[0], dtype=np.float32), layer=name, class_index=class_index)


def to_image_geometry(cam: np.ndarray, image_size: tuple[int, int], resize: str) -> np.ndarray:
    """Map a CAM from the model's input (``resize`` as in ``Preprocessing``) back onto a ``(width, height)`` image.

    ``square`` squashed the whole image, so the map is stretched back over all of it. ``aspect`` scaled the short
    side and centre-cropped the long one, so the map covers the central crop and the cut-off margins get zero.
    """
    width, height = image_size
    h, w = cam.shape
    pil = Image.fromarray(cam.astype(np.float32))
    if resize != "aspect":
        return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    scale = max(w / width, h / height)
    crop_w, crop_h = round(w / scale), round(h / scale)
    out = np.zeros((height, width), dtype=np.float32)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    out[top:top + crop_h, left:left + crop_w] = np.asarray(pil.resize((crop_w, crop_h), Image.Resampling.BILINEAR))
    return out


def overlay_png(cam: np.ndarray, max_side: int = 512, colormap: str = "jet") -> bytes:
    """A transparent RGBA PNG of the map: colour from ``colormap``, opacity rising with the map's value."""
    h, w = cam.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    cam = np.clip(cam, 0.0, 1.0)
    rgba = colormaps[colormap](cam)  # [H, W, 4] floats
    ramp = np.clip((cam - 0.2) / 0.8, 0.0, 1.0)  # the weakest fifth fully transparent, the lesion stays visible
    rgba[..., 3] = 0.65 * ramp * ramp * (3 - 2 * ramp)  # smoothstep: no hard edge where the overlay starts
    buf = io.BytesIO()
    Image.fromarray((rgba * 255).round().astype(np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
