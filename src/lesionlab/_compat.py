"""Compatibility shims applied before third-party imports.

torchvision 0.28.0 on PyPI is a CUDA build. Beside the CPU build of torch 2.13.0 its C extension cannot load, and
``import torchvision`` (hence ``import timm``) fails with "operator torchvision::nms does not exist", because
torchvision registers fake (meta) kernels for operators that only its extension defines. When - and only when -
the extension cannot load, we define the two operator schemas it needs so the pure-Python parts (transforms v2,
model definitions used by timm) import normally. The detection ops themselves stay unavailable and raise if called.
On a normal install the extension loads and this module does nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive; dropping it would unregister the schemas
patched = False


def _extension_loads(package_dir: str) -> bool:
    import torch

    libs = glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(os.path.join(package_dir, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas iff torchvision's C extension cannot load. Idempotent."""
    global _library, patched
    if patched or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    if _extension_loads(os.path.dirname(spec.origin)):
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")  # kept alive at module level
    for schema in _SCHEMAS.values():
        _library.define(schema)
    patched = True


def configure_hub_offline_default() -> None:
    """Make Hugging Face hub look-ups fail fast instead of retrying for ~46 s when there is no network.

    We never override a value the user set. Timeouts are shortened so that an offline ``pretrained=True`` fails in
    about a second with lesionlab's own message (see ``lesionlab.models.weights``).
    """
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "2")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


ensure_torchvision_importable()
configure_hub_offline_default()
