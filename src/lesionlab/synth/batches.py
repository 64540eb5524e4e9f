"""What the critic sees of the real data: the training split cached at the generator's resolution, sampled per class,
flipped and transposed, brought to the current stage, and (optionally) DiffAugment-ed like the generated images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.synth.codes import CodeLayout, Labels, labels_from_table, sampling_weights
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError


@dataclass
class TrainingData:
    """The real training images at the final resolution and their labels."""

    images: np.ndarray  # uint8 [N, R, R, 3]
    table: pd.DataFrame  # training rows of the source table (index 0..N-1)
    labels: Labels
    weights: torch.Tensor  # per-row sampling probabilities
    info: dict[str, Any]


def prepare_training_data(cfg: SynthConfig, progress: bool = True) -> TrainingData:
    """Open the configured source, keep its training split and cache its images at the generator's resolution."""
    from lesionlab.data import cached_images, open_source

    source = open_source(cfg.data)
    table = source.table
    rows = np.flatnonzero(table["split"].astype(str).to_numpy() == "train")
    if len(rows) == 0:
        raise SynthError(f"data source {source.name!r} (split {cfg.data.split!r}) has no training rows")
    res = cfg.model.resolution
    all_images = cached_images(source, (res, res), cfg.data.resize, progress=progress)
    images = np.ascontiguousarray(all_images[rows])
    train = table.iloc[rows].reset_index(drop=True)
    labels = labels_from_table(train, cfg.codes.free)
    counts = np.bincount(labels.label.numpy(), minlength=NUM_CLASSES)
    weights = torch.as_tensor(sampling_weights(labels.label.numpy(), cfg.train.class_sampling))
    has_meta = bool(getattr(source, "has_metadata", True))
    info = {"source": source.name, "kind": getattr(source, "kind", ""), "synthetic": bool(source.synthetic),
            "fingerprint": source.fingerprint(), "split": getattr(source, "split_name", "") or str(cfg.data.split),
            "n_train": len(rows), "train_class_counts": dict(zip(CLASS_CODES, counts.tolist(), strict=True)),
            "has_metadata": has_meta, "resolution": res}
    return TrainingData(images, train, labels, weights, info)


def effective_layout(cfg: SynthConfig, has_metadata: bool) -> tuple[CodeLayout, list[str]]:
    """The code layout; without clinical metadata in the source the sex, site and age codes are switched off."""
    notes = []
    sex, site, age = cfg.codes.sex, cfg.codes.site, cfg.codes.age
    if not has_metadata and (sex or site or age):
        notes.append("the data source has no clinical metadata: sex, site and age codes are off")
        sex = site = age = False
    return CodeLayout(sex=sex, site=site, age=age, free=cfg.codes.free), notes


def real_batch(data: TrainingData, idx: torch.Tensor, augment: str, gen: torch.Generator) -> torch.Tensor:
    """Real images ``idx`` as float [-1, 1] NCHW at the final resolution, randomly flipped/transposed."""
    x = torch.from_numpy(data.images[idx.numpy()]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if augment == "dihedral":
        bits = torch.rand(3, len(x), generator=gen) < 0.5
        x = torch.where(bits[0].view(-1, 1, 1, 1), x.flip(3), x)
        x = torch.where(bits[1].view(-1, 1, 1, 1), x.flip(2), x)
        x = torch.where(bits[2].view(-1, 1, 1, 1), x.transpose(2, 3), x)
    return x.contiguous()


def at_stage(x: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Real images brought to a stage: box-downsampled, and during fade-in blended with the previous stage's
    (upsampled) version exactly as the generator blends its two outputs."""
    factor = x.shape[-1] // resolution
    if factor > 1:
        x = F.avg_pool2d(x, factor)
    if alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(low, x, alpha)
    return x


def diff_augment(x: torch.Tensor, ops: list[str], translation: float, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment: random colour (brightness, saturation, contrast) and translation, differentiable in ``x``.

    Applied with independent draws to every image the critic sees, real or generated, in both steps.
    """
    n = len(x)
    if not ops:
        return x
    dev = x.device
    if "color" in ops:
        x = x + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5).to(dev)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=gen) * 2).to(dev) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=gen) + 0.5).to(dev) + mean
    if "translation" in ops and translation > 0:
        h, w = x.shape[-2:]
        sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
        if sh or sw:
            dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=gen).to(dev)
            dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=gen).to(dev)
            gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
            gy = (gy.unsqueeze(0) + dy).clamp(-1, h)  # one step outside the image reads the zero padding
            gx = (gx.unsqueeze(0) + dx).clamp(-1, w)
            padded = F.pad(x, (1, 1, 1, 1))
            flat = padded.flatten(2)
            idx = ((gy + 1) * (w + 2) + (gx + 1)).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
            x = flat.gather(2, idx).view_as(x)
    return x



__all__ = ["TrainingData", "at_stage", "diff_augment", "effective_layout", "prepare_training_data", "real_batch"]
