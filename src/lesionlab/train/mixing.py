"""Batch mixing for training: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Each mixed batch pairs every sample with another of the same batch (a random permutation) and a weight ``lam`` drawn
from Beta(alpha, alpha). MixUp blends the two images; CutMix pastes a box of the partner into the image, and ``lam``
becomes the share of the image left unchanged. The loss is ``lam * loss(y) + (1 - lam) * loss(y_partner)``, so the
project's own loss (class weights, label smoothing, distillation) is used unchanged.

Why not timm's or torchvision's batch mixers: they mix only the image and the labels. lesionlab's fusion models
also take the clinical vector (age, sex, site), which must be mixed with the same partner and weight, or the model
would learn from a blended image whose clinical data belong to one of the two lesions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lesionlab.config import AugmentConfig
from lesionlab.train.pieces import TrainError


@dataclass(frozen=True)
class Mixed:
    """One batch after mixing: inputs, the partner of each sample (``perm``) and the weight of the original."""

    x: torch.Tensor
    meta: torch.Tensor | None
    perm: torch.Tensor | None  # None: the batch was left unmixed (lam = 1)
    lam: float


@dataclass(frozen=True)
class BatchMixer:
    """MixUp and/or CutMix settings (``augment.mixup``, ``augment.cutmix``, ``augment.mix_p``,
    ``augment.mix_switch_p``); call with a batch and a NumPy generator."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, aug: AugmentConfig) -> BatchMixer | None:
        """The mixer an augment section asks for, or None when mixing is off (also when augmentation is off)."""
        if not aug.enabled or (aug.mixup <= 0 and aug.cutmix <= 0) or aug.mix_p <= 0:
            return None
        return cls(aug.mixup, aug.cutmix, aug.mix_p, aug.mix_switch_p)

    def __call__(self, x: torch.Tensor, meta: torch.Tensor | None, rng: np.random.Generator) -> Mixed:
        if len(x) < 2 or rng.random() >= self.prob:
            return Mixed(x, meta, None, 1.0)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        perm = torch.as_tensor(rng.permutation(len(x)), device=x.device)
        if use_cutmix:
            if x.ndim != 4:
                raise TrainError(f"augment.cutmix needs image batches [B, C, H, W], got shape {list(x.shape)}; "
                                 "use augment.mixup for cached features")
            mixed, lam = _paste_box(x, perm, lam, rng)
        else:
            mixed = lam * x + (1.0 - lam) * x[perm]
        if meta is not None:
            meta = lam * meta + (1.0 - lam) * meta[perm]
        return Mixed(mixed, meta, perm, lam)


def _paste_box(x: torch.Tensor, perm: torch.Tensor, lam: float, rng: np.random.Generator
               ) -> tuple[torch.Tensor, float]:
    """CutMix: a box covering about ``1 - lam`` of the image, centred uniformly and clipped at the borders, taken
    from each sample's partner; returns the images and the weight recomputed from the clipped box's area."""
    h, w = x.shape[-2:]
    side = (1.0 - lam) ** 0.5
    bh, bw = round(h * side), round(w * side)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm, ..., y0:y1, x0:x1]  # only the box of each partner is gathered
    return out, 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)


def mixed_loss(loss_fn: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None,
               mixed: Mixed) -> torch.Tensor:
    """``lam * loss(original targets) + (1 - lam) * loss(partners' targets)``; the plain loss for an unmixed batch."""
    def loss(idx: torch.Tensor | None) -> torch.Tensor:
        yy = y if idx is None else y[idx]
        if soft is None:
            return loss_fn(logits, yy)
        return loss_fn(logits, yy, soft if idx is None else soft[idx])

    if mixed.perm is None or mixed.lam >= 1.0:
        return loss(None)
    return mixed.lam * loss(None) + (1.0 - mixed.lam) * loss(mixed.perm)
