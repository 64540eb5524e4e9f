"""Test-time views of a batch and the model's outputs averaged over them: the one definition used by training,
evaluation and serving (re-exported by :mod:`lesionlab.runs`), and the pooled image features the scope gate reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lesionlab.core.errors import UsageError

#: The test-time view sets (``train.tta_views``): flips (identity, horizontal, vertical) or all 8 dihedral symmetries.
TTA_VIEWS: tuple[str, ...] = ("flips", "dihedral")

Forward = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def flip_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The views averaged at test time: identity, horizontal and vertical flip (lesions have no orientation)."""
    return [x, torch.flip(x, dims=[-1]), torch.flip(x, dims=[-2])]


class ViewsError(UsageError):
    """Test-time views that do not exist or do not fit the input."""


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """All eight symmetries of the square: the four quarter turns of the image and of its mirror image (exact pixel
    moves, no interpolation; the square inputs only)."""
    mirror = torch.flip(x, dims=[-1])
    return [torch.rot90(v, k, dims=(-2, -1)) if k else v for v in (x, mirror) for k in range(4)]


def views_of(x: torch.Tensor, kind: str = "flips") -> list[torch.Tensor]:
    """The test-time views of ``train.tta_views``: ``flips`` (3) or ``dihedral`` (8, square inputs)."""
    if kind == "flips":
        return flip_views(x)
    if kind == "dihedral":
        if x.shape[-1] != x.shape[-2]:
            raise ViewsError(f"dihedral test-time views need a square input, got {x.shape[-2]}x{x.shape[-1]}")
        return dihedral_views(x)
    raise ViewsError(f"test-time views {kind!r} are not one of {', '.join(TTA_VIEWS)}")


def mean_logits(forward: Forward, views: Sequence[torch.Tensor], meta: torch.Tensor | None = None,
                batched: bool = False) -> torch.Tensor:
    """``forward(view, meta)`` averaged over ``views``: the one definition of view averaging (flips at test time,
    cached augmented views in frozen training). ``batched`` sends every view through one call (cheaper at batch 1).
    """
    if batched:
        n = len(views[0])
        m = meta.repeat(len(views), 1) if meta is not None else None
        return forward(torch.cat(list(views)), m).float().reshape(len(views), n, -1).mean(dim=0)
    total = None
    for v in views:
        out = forward(v, meta).float()
        total = out if total is None else total + out
    assert total is not None
    return total / len(views)


def _pool(feats: torch.Tensor) -> torch.Tensor:
    feats = feats.float()
    return (feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.flatten(1)).cpu()


def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.forward_features`` averaged over space when it is a map: ``[N, C]`` float32 on the CPU."""
    return _pool(model.forward_features(x))


def view_averaged_logits(model: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor | None, tta: bool,
                         views: str = "flips") -> torch.Tensor:
    """Model logits, averaged over :func:`views_of` (``views``: flips or dihedral) when ``tta``."""
    return mean_logits(lambda v, m: model(v, m) if m is not None else model(v), views_of(x, views) if tta else [x],
                       meta)


def features_and_logits(model: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor | None, tta: bool,
                        views: str = "flips", batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pooled_features` of ``x`` and :func:`view_averaged_logits`, with one backbone pass per view instead of
    an extra pass for the features: the gate and the degradation check read the image's own features, the classifier
    its views. The same numbers as the two calls (the same operations on the same batch; ``batched``, every view in
    one call as the service sends them, computes the features inside that larger batch). A model without a
    ``forward_head`` (an ensemble) takes the two calls."""
    head = getattr(model, "forward_head", None)
    if head is None:
        return pooled_features(model, x), view_averaged_logits(model, x, meta, tta, views)
    pooled: list[torch.Tensor] = []
    n = len(x)

    def forward(v: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        feats = model.forward_features(v)
        if v is x or (batched and not pooled):  # batched: the identity view is the first n rows of the one call
            pooled.append(_pool(feats[:n]))
        return head(feats, m) if m is not None else head(feats)

    all_views = views_of(x, views) if tta else [x]
    if all_views[0] is not x:
        return pooled_features(model, x), view_averaged_logits(model, x, meta, tta, views)
    logits = mean_logits(forward, all_views, meta, batched=batched)
    return pooled[0], logits
