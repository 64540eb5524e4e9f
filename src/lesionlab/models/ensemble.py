"""An ensemble of trained networks as one module: the members' logits averaged.

Saved as one run directory (:func:`lesionlab.train.ensemble.make_ensemble`), it loads, evaluates, serves and exports
to ONNX like a single network, through the same preprocessing: every member must share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lesionlab.core.errors import UsageError


class EnsembleModel(nn.Module):
    """``forward(x[, meta])`` = the mean of the members' logits (each member a ``LesionModel``)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise UsageError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def data_config(self) -> dict[str, Any]:
        """The members' input convention (they share it)."""
        return self.members[0].data_config  # type: ignore[return-value]

    @property
    def meta_dim(self) -> int:
        return int(getattr(self.members[0], "meta_dim", 0) or 0)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        outs = [m(x, meta) if meta is not None else m(x) for m in self.members]
        return torch.stack([o.float() for o in outs]).mean(dim=0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' image features, each averaged over space, side by side ``[N, sum of C]``: what the
        out-of-scope gate reads, so that an image unlike the training data to any member counts."""
        feats = []
        for m in self.members:
            f = m.forward_features(x).float()  # type: ignore[operator]
            feats.append(f.mean(dim=(2, 3)) if f.ndim == 4 else f.flatten(1))
        return torch.cat(feats, dim=1)
