"""Classification heads: what sits between the backbone's features and the seven logits.

Each head is an ``embed`` part (features -> embedding vector) and a ``classifier`` (one linear layer -> logits). The
split lets clinical-data fusion act between the two (see :mod:`lesionlab.models.fusion`). Heads return logits;
softmax belongs to the loss and to the predict step, where Keras models would put a softmax layer.

============  ========  ===============================================================================
head          consumes  layers
============  ========  ===============================================================================
``linear``    pooled    dropout -> linear (timm's usual head)
``mlp``       pooled    dropout 0.5 -> dense(hidden) + ReLU -> dropout 0.5 -> linear (HAM10000 study)
``simple``    map       pool to grid x grid -> Flatten -> BN -> dense 64 + ReLU -> BN -> linear (Effv3 of the
                        DermaMNIST study: Flatten, BatchNorm, Dense 64, BatchNorm, softmax)
``conv``      map       two conv3x3-BN-ReLU blocks -> global average pool -> dropout -> dense(hidden) + ReLU
                        -> linear (Effv1: extra convolution blocks on the feature map)
============  ========  ===============================================================================

``pooled`` heads take the backbone's globally pooled embedding ``[B, C]``; ``map`` heads take its last feature map
``[B, C, H, W]``. The ``simple`` head pools the map adaptively to ``grid x grid`` before flattening so that it does
not depend on the input size: when the map already is ``grid x grid`` (64 px inputs and ``grid=2`` for the usual
stride-32 backbones; 224 px and ``grid=7``) the pooling is the identity and the head is exactly Effv3's Flatten.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lesionlab.config import ConfigError

HeadKind = Literal["linear", "simple", "conv", "mlp"]
FEATURE_KIND: dict[str, Literal["pooled", "map"]] = {"linear": "pooled", "mlp": "pooled", "simple": "map",
                                                      "conv": "map"}
DEFAULT_DROPOUT: dict[str, float] = {"linear": 0.0, "mlp": 0.5, "simple": 0.0, "conv": 0.0}


class Head(nn.Module):
    """``embed`` (features -> ``[B, embed_dim]``) followed by ``classifier`` (-> logits)."""

    def __init__(self, kind: str, embed: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.kind = kind
        self.embed = embed
        self.embed_dim = embed_dim
        self.classifier = nn.Linear(embed_dim, num_classes)  # create_model widens it for concat fusion

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from backbone features (no fusion)."""
        return self.classifier(self.embed(features))


def _linear_embed(channels: int, dropout: float) -> tuple[nn.Module, int]:
    return nn.Dropout(dropout), channels


def _mlp_embed(channels: int, hidden: int, dropout: float) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout)), hidden


def _simple_embed(channels: int, hidden: int, grid: int, dropout: float) -> tuple[nn.Module, int]:
    flat = channels * grid * grid
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten(1), nn.BatchNorm1d(flat)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden)]
    return nn.Sequential(*layers), hidden


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_embed(channels: int, hidden: int, dropout: float) -> tuple[nn.Module, int]:
    wide, narrow = 4 * hidden, 2 * hidden
    return nn.Sequential(_conv_block(channels, wide), _conv_block(wide, narrow), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(1), nn.Dropout(dropout), nn.Linear(narrow, hidden), nn.ReLU(inplace=True)), hidden


def build_head(kind: str, channels: int, num_classes: int, hidden: int = 64, dropout: float | None = None,
               grid: int = 2) -> Head:
    """A head for backbone features with ``channels`` channels (map or pooled, as ``FEATURE_KIND[kind]`` says)."""
    if kind not in FEATURE_KIND:
        raise ConfigError(f"model.head: unknown head {kind!r}; expected one of {', '.join(FEATURE_KIND)}")
    if hidden < 1 or grid < 1:
        raise ConfigError(f"model.head_hidden ({hidden}) and model.head_grid ({grid}) must be positive")
    drop = DEFAULT_DROPOUT[kind] if dropout is None else float(dropout)
    if not 0.0 <= drop < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {drop}")
    if kind == "linear":
        embed, dim = _linear_embed(channels, drop)
    elif kind == "mlp":
        embed, dim = _mlp_embed(channels, hidden, drop)
    elif kind == "simple":
        embed, dim = _simple_embed(channels, hidden, grid, drop)
    else:
        embed, dim = _conv_embed(channels, hidden, drop)
    return Head(kind, embed, dim, num_classes)
