"""The data side of a training run: open and check the source, fill the image cache, build datasets and loaders.

Public, so that the training benchmarks (``lesionlab train-bench``) and other engines feed a model exactly as
:func:`lesionlab.train.fit` does. The cache rows are the run's ``Preprocessing.resize_image`` pixels (with the
stored size of the training images as its ``source_size``), so training reads what serving computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.config import RunConfig
from lesionlab.data.cache import cached_images
from lesionlab.data.datasets import LesionDataset
from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.sources import DataSource, open_source
from lesionlab.data.splits import split_hash
from lesionlab.train.loop import worker_init
from lesionlab.train.pieces import TrainError, class_counts


@dataclass
class PreparedData:
    """Everything :func:`lesionlab.train.fit` needs from the data layer for one run."""

    source: DataSource
    table: pd.DataFrame
    images: np.ndarray  # uint8 [N, H, W, 3], row-aligned with the table
    train_rows: np.ndarray
    val_rows: np.ndarray
    split_hash: str
    meta_encoder: MetadataEncoder | None
    meta: np.ndarray | None  # encoded metadata [N, D] for every row (None without fusion)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()[self.train_rows].astype(np.int64)

    @property
    def val_labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()[self.val_rows].astype(np.int64)

    @property
    def source_size(self) -> tuple[int, int] | None:
        """The stored size of the training images (the preprocessing's ``source_size``), when they share one."""
        size = self.info.get("source_image_size")
        return (int(size[0]), int(size[1])) if size else None


def _split_rows(table: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows, with the checks training needs (both present, labels 0..6)."""
    split = table["split"].astype(str).to_numpy()
    train_rows, val_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train_rows) == 0:
        raise TrainError(f"{where}: no training rows")
    if len(val_rows) == 0:
        raise TrainError(f"{where}: no validation rows; model selection needs split 'val'")
    labels = table["label"].to_numpy()
    bad = [int(r) for r in np.concatenate([train_rows, val_rows]) if not 0 <= labels[r] < NUM_CLASSES]
    if bad:
        raise TrainError(f"{where}: row {bad[0]} (image {table['image_id'].iloc[bad[0]]}) has label {labels[bad[0]]}; "
                         f"training needs labels 0..{NUM_CLASSES - 1}")
    return train_rows, val_rows


def prepare_data(cfg: RunConfig, progress: bool = True) -> PreparedData:
    """Open the source, check the split and metadata, build the image cache and fit the metadata encoder."""
    source = open_source(cfg.data)
    table = source.table
    if not table.index.equals(pd.RangeIndex(len(table))):
        raise TrainError(f"data source {source.name!r}: its table index must be the row numbers 0..N-1 of the images")
    where = f"data source {source.name!r} with split {cfg.data.split!r}"
    train_rows, val_rows = _split_rows(table, where)
    encoder = meta = None
    if cfg.model.fusion != "none":
        if not source.has_metadata:
            raise TrainError(f"model.fusion={cfg.model.fusion!r} needs clinical metadata (age, sex, site), but {where} "
                             "has none; set model.fusion=none or use a source with metadata")
        encoder = MetadataEncoder.fit(table.iloc[train_rows])
        meta = encoder.encode_table(table)
    stored = source_image_size(source, train_rows)
    images = cached_images(source, tuple(cfg.data.image_size), cfg.data.resize, progress=progress,
                           source_size=tuple(stored) if stored else None)
    labels = table["label"].to_numpy()
    info = {"source": source.name, "synthetic": source.synthetic, "fingerprint": source.fingerprint(),
            "n_train": len(train_rows), "n_val": len(val_rows),
            "train_class_counts": dict(zip(CLASS_CODES, class_counts(labels[train_rows]).tolist(), strict=True)),
            "source_image_size": stored}
    return PreparedData(source=source, table=table, images=images, train_rows=train_rows, val_rows=val_rows,
                        split_hash=split_hash(table), meta_encoder=encoder, meta=meta, info=info)


def source_image_size(source: DataSource, rows: np.ndarray, samples: int = 32) -> list[int] | None:
    """[height, width] of the training images as stored, when a spread-out sample of them all share one size.

    Saved in the run (and in its preprocessing) so that a full-size image is squashed to it first, as the training
    images were (the shared HAM10000 set is stored at 64 px: a sharp 600x450 image resized straight to the model
    input is not what the model learnt from). ``None`` when the sizes differ.
    """
    if len(rows) == 0:
        return None
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(samples, len(rows))).round().astype(int))
    sizes = set()
    for i in picks:
        img = source.load_image(int(rows[i]))
        sizes.add(tuple(int(v) for v in np.shape(img)[:2]) if isinstance(img, np.ndarray) else (img.height, img.width))
    return list(sizes.pop()) if len(sizes) == 1 else None


def image_dataset(data: PreparedData, rows: np.ndarray, transform: Any, seed: int | None = None) -> LesionDataset:
    """The data layer's sample-dict dataset over some rows (augmentation seeded per sample by seed, epoch, row)."""
    return LesionDataset(data.images, data.table.iloc[rows], transform, data.meta_encoder, seed=seed)


def make_loader(ds: torch.utils.data.Dataset, batch_size: int, *, num_workers: int, sampler: Any = None,
                shuffle: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
                ) -> torch.utils.data.DataLoader:
    """A DataLoader as the engine uses it (worker seeds derived from the loader's generator)."""
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                                       sampler=sampler, num_workers=num_workers, generator=generator,
                                       worker_init_fn=worker_init if num_workers else None, drop_last=drop_last,
                                       persistent_workers=False)
