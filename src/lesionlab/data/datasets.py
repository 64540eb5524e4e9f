"""The training/evaluation dataset: cached pixels + the sample table -> the sample dicts of the data contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.transforms import sample_seed, seeded, to_chw_tensor


class LesionDataset(Dataset):
    """Sample dicts ``{image, label, image_id, lesion_id, age, sex, site[, meta]}`` for the rows of ``table``.

    ``images`` is row-aligned with the *source* table (e.g. :func:`lesionlab.data.cached_images`); ``table`` may be
    any subset of that table that keeps its index, whose labels are the rows of ``images`` - so
    ``LesionDataset(images, source.table[source.table.split == "train"], ...)`` reads without copying the cache.

    ``transform`` takes a uint8 [3,H,W] tensor (see :mod:`lesionlab.data.transforms`). With ``seed``, each sample's
    random augmentation is drawn from its own generator seeded by (seed, epoch, row), so the same seed gives the
    same views whatever the worker count or order; call :meth:`set_epoch` to get new views each epoch.
    """

    def __init__(self, images: np.ndarray, table: pd.DataFrame, transform: Callable[[torch.Tensor], torch.Tensor],
                 meta_encoder: MetadataEncoder | None = None, seed: int | None = None) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 [N, H, W, 3] array, got shape {images.shape} {images.dtype}")
        rows = table.index.to_numpy()
        if len(rows) and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= len(images)):
            raise ValueError(f"table index must hold row numbers of images (0..{len(images) - 1}); keep the source "
                             "table's index when selecting rows (no reset_index)")
        self.images = images
        self.rows = rows.astype(np.int64)
        self.table = table
        self.transform = transform
        self.meta_encoder = meta_encoder
        self.meta = torch.from_numpy(meta_encoder.encode_table(table)) if meta_encoder is not None else None
        self.labels = table["label"].to_numpy(dtype=np.int64)
        self.seed = seed
        self.epoch = 0
        self._text = table[["image_id", "lesion_id", "sex", "site"]].astype(str).to_numpy()
        self._age = table["age"].to_numpy(dtype=np.float64)

    def set_epoch(self, epoch: int) -> None:
        """Use a new set of augmented views (only matters with a ``seed``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = to_chw_tensor(self.images[self.rows[i]])
        if self.seed is None:
            image = self.transform(x)
        else:
            image = seeded(self.transform, x, sample_seed(self.seed, self.epoch, int(self.rows[i])))
        image_id, lesion_id, sex, site = self._text[i]
        sample: dict[str, Any] = {"image": image, "label": int(self.labels[i]), "image_id": image_id,
                                  "lesion_id": lesion_id, "age": float(self._age[i]), "sex": sex, "site": site}
        if self.meta is not None:
            sample["meta"] = self.meta[i]
        return sample
