"""Clinical-data fusion: joining the image with the encoded metadata (age, sex, site and their missing flags).

Two published ways, chosen with ``model.fusion``:

* ``concat`` - late fusion: the head's image embedding is concatenated with a small MLP's encoding of the metadata
  and passed through one more dense layer before the classifier.
* ``metablock`` - MetaBlock (Pacheco & Krohling, IEEE JBHI 2021): the metadata produce a per-channel scale ``g`` and
  shift ``h`` (each a linear layer with batch norm) that gate the image features before the head,
  ``sigmoid(tanh(features * g) + h)``, so the metadata decide which visual channels matter rather than adding a few
  numbers beside two thousand image features.

Robustness to missing values lives in :class:`lesionlab.models.LesionModel`: NaNs are read as "missing" (zero), and
during training a share of samples (``model.meta_dropout``) have their whole metadata vector blanked, so the model
learns to answer from the image alone when nothing is known. The encoder's missing-value flags carry the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from lesionlab.config import ConfigError


class NoFusion(nn.Module):
    """Image only; ``meta`` is ignored."""

    needs_meta = False

    def out_dim(self, embed_dim: int) -> int:
        """Width of what reaches the classifier."""
        return embed_dim

    def before_embed(self, features: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """Pass features through unchanged."""
        return features

    def after_embed(self, embedding: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """Pass the embedding through unchanged."""
        return embedding


class ConcatFusion(NoFusion):
    """Late fusion by concatenation: ``dense([embedding, mlp(meta)])``."""

    needs_meta = True

    def __init__(self, embed_dim: int, meta_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.meta_mlp = nn.Sequential(nn.Linear(meta_dim, hidden), nn.ReLU(inplace=True))
        self.joint = nn.Sequential(nn.Linear(embed_dim + hidden, hidden), nn.ReLU(inplace=True))
        self.hidden = hidden

    def out_dim(self, embed_dim: int) -> int:
        """The joint layer's width."""
        return self.hidden

    def after_embed(self, embedding: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """Join the image embedding with the encoded metadata."""
        assert meta is not None
        return self.joint(torch.cat([embedding, self.meta_mlp(meta)], dim=1))


class MetaBlock(NoFusion):
    """Metadata-driven gating of the image features, after Pacheco & Krohling (2021)."""

    needs_meta = True

    def __init__(self, channels: int, meta_dim: int) -> None:
        super().__init__()
        self.scale = nn.Sequential(nn.Linear(meta_dim, channels), nn.BatchNorm1d(channels))
        self.shift = nn.Sequential(nn.Linear(meta_dim, channels), nn.BatchNorm1d(channels))

    def before_embed(self, features: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """Gate each feature channel (of a ``[B, C]`` embedding or a ``[B, C, H, W]`` map) by the metadata."""
        assert meta is not None
        g, h = self.scale(meta), self.shift(meta)
        if features.ndim == 4:
            g, h = g[:, :, None, None], h[:, :, None, None]
        return torch.sigmoid(torch.tanh(features * g) + h)


def build_fusion(kind: str, channels: int, embed_dim: int, meta_dim: int, hidden: int = 64) -> NoFusion:
    """The fusion block for ``model.fusion``; asking for fusion without metadata is an error, not a silent no-op."""
    if kind == "none":
        return NoFusion()
    if kind not in ("concat", "metablock"):
        raise ConfigError(f"model.fusion: unknown fusion {kind!r}; expected none, concat or metablock")
    if meta_dim <= 0:
        raise ConfigError(f"model.fusion={kind}: metadata fusion asked for on a dataset without metadata (meta_dim=0); "
                         "use model.fusion=none or a source with age/sex/site")
    if kind == "concat":
        return ConcatFusion(embed_dim, meta_dim, hidden)
    return MetaBlock(channels, meta_dim)
