"""The frozen-backbone embedding cache: run the backbone once per image, then train the head on the tensors.

A frozen backbone in eval mode maps each image to the same embedding every epoch, so recomputing it (what a
Keras-style model with ``trainable = False`` layers does) wastes nearly all of the time. Here the embeddings of
every needed split are computed once and saved under ``<cache>/embeddings/<key>.safetensors``, keyed by
the model's :func:`~lesionlab.models.embedding_key` (architecture, weights, input size, preprocessing), the data
fingerprint, the split hash and the views. Later runs with the same key - other heads, learning rates, seeds - load
them in a second.

Views:

* evaluation splits: the clean image, plus its horizontal and vertical flip when ``train.tta`` (averaged at
  prediction time exactly like image-mode flip averaging);
* training, augmentation off: the clean image only;
* training, augmentation on, ``train.embed_cache_views = K > 0``: K augmented views per image, drawn once with a
  fixed seed and cached; each epoch every image uses one of its K views, picked at random;
* training, augmentation on, ``train.embed_cache_views = 0``: the cache is bypassed for training and the frozen
  backbone runs on freshly augmented images at every step (slow, but exactly Keras-style).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lesionlab.runs import RunError, atomic_save_state_dict, read_weights, views_of
from lesionlab.train.loop import Precision

CACHE_FORMAT = 1


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the JSON of ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """Where the embeddings with this key live."""
    return Path(cache_dir) / "embeddings" / f"{key}.safetensors"


@torch.inference_mode()
def compute_embeddings(model: nn.Module, loader: Any, *, precision: Precision, views: str | None = None,
                       progress: bool = True, desc: str = "embed") -> torch.Tensor:
    """Backbone features ``[N, V, ...]`` in eval mode: the test-time ``views`` (flips: V = 3, dihedral: 8) or the
    clean image alone (``None``, V = 1)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress,
                          unit="batch", dynamic_ncols=True):
            x = precision.to_input(batch["image"])
            with precision.autocast():
                feats = [model.forward_features(v).float() for v in (views_of(x, views) if views else [x])]
            out.append(torch.stack(feats, dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError(f"{desc}: no images to embed")
    return torch.cat(out)


def load_or_compute(path: Path, compute: Any, expected_rows: int) -> tuple[torch.Tensor, bool]:
    """The cached tensor at ``path`` (checked for its row count) or ``compute()`` saved there atomically.

    Returns ``(features, was_cached)``. A damaged cache file is an error naming it (delete it to recompute).
    """
    if path.is_file():
        try:
            feats = read_weights(path)["features"]
        except KeyError:
            raise RunError(f"{path}: embedding cache file has no 'features' tensor; delete it to recompute") from None
        if feats.ndim < 3 or feats.shape[0] != expected_rows:
            raise RunError(f"{path}: embedding cache holds {tuple(feats.shape)} for {expected_rows} images; "
                           "delete it to recompute")
        return feats, True
    feats = compute()
    atomic_save_state_dict(path, {"features": feats}, metadata={"format": str(CACHE_FORMAT)})
    return feats, False


class FeatureDataset(torch.utils.data.Dataset):
    """Cached embeddings ``[N, V, ...]`` as samples ``{"features" | "feature_views", "label", "meta"?}``.

    ``pick_view=True`` (training): each sample is one view ``features`` - the only one, or with K cached augmented
    views one chosen per epoch by :meth:`set_epoch` (deterministic in seed and epoch). ``pick_view=False``
    (validation): each sample holds all its views as ``feature_views``, averaged at prediction time.
    """

    def __init__(self, features: torch.Tensor, labels: np.ndarray, meta: torch.Tensor | None = None,
                 pick_view: bool = True, seed: int = 0) -> None:
        if features.shape[0] != len(labels):
            raise ValueError(f"{features.shape[0]} embeddings for {len(labels)} labels")
        self.features = features
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.meta = meta
        self.pick_view = pick_view
        self.seed = seed
        self.choice = torch.zeros(len(labels), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's view per sample (deterministic in seed and epoch)."""
        if self.pick_view and self.features.shape[1] > 1:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self.choice = torch.randint(self.features.shape[1], (len(self.labels),), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.pick_view:
            item: dict[str, Any] = {"features": self.features[i, self.choice[i]]}
        else:
            item = {"feature_views": self.features[i]}
        item["label"] = self.labels[i]
        if self.meta is not None:
            item["meta"] = self.meta[i]
        return item


class HeadOnly(nn.Module):
    """The model's head as a module of its own: ``forward(features, meta)`` = ``model.forward_head``.

    Training through this wrapper (not by calling ``forward_head`` on a DDP-wrapped model) keeps
    DistributedDataParallel's gradient synchronisation working.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_head(features, meta)
