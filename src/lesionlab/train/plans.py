"""What one run trains: its data, its model and preprocessing, and the mode-specific plan of module and datasets.

* The data (:func:`prepare_data`): open and check the source, fill the decode-once image cache (the run's
  ``Preprocessing.resize_image`` pixels, with the stored size of the training images as its ``source_size``, so
  training reads what serving computes), fit the metadata encoder; :func:`image_dataset` and :func:`make_loader`
  feed a model exactly as :func:`lesionlab.train.fit` does (the training benchmarks use them too).
* ``scratch`` / ``finetune`` (:func:`plan_images`): image datasets; the whole model is trained.
* ``frozen`` (:func:`plan_frozen`): the backbone's embeddings are computed once and cached on disk
  (:class:`EmbeddingCache`, see :mod:`lesionlab.train.embeddings`); the head trains on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.config import ModelConfig, RunConfig
from lesionlab.core.paths import cache_dir as default_cache_dir
from lesionlab.data.cache import cached_images
from lesionlab.data.datasets import LesionDataset
from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.sources import DataSource, open_source
from lesionlab.data.splits import split_hash
from lesionlab.data.transforms import Preprocessing, build_train_transform
from lesionlab.models import LesionModel, create_model, embedding_key, freeze_backbone
from lesionlab.train import distributed as dist_utils
from lesionlab.train.embeddings import (
    FeatureDataset,
    HeadOnly,
    cache_key,
    cache_path,
    compute_embeddings,
    load_or_compute,
)
from lesionlab.train.loop import Precision, worker_init
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
    images, stored = training_image_cache(source, cfg, train_rows, progress)
    labels = table["label"].to_numpy()
    info = {"source": source.name, "synthetic": source.synthetic, "fingerprint": source.fingerprint(),
            "n_train": len(train_rows), "n_val": len(val_rows),
            "train_class_counts": dict(zip(CLASS_CODES, class_counts(labels[train_rows]).tolist(), strict=True)),
            "source_image_size": stored}
    return PreparedData(source=source, table=table, images=images, train_rows=train_rows, val_rows=val_rows,
                        split_hash=split_hash(table), meta_encoder=encoder, meta=meta, info=info)


def training_image_cache(source: DataSource, cfg: RunConfig, train_rows: np.ndarray, progress: bool = True
                         ) -> tuple[np.ndarray, list[int] | None]:
    """The decode-once cache that training reads (built on first use) and the training images' stored size, which
    is part of its key (see :func:`source_image_size`)."""
    stored = source_image_size(source, train_rows)
    images = cached_images(source, tuple(cfg.data.image_size), cfg.data.resize, cache_dir=cfg.data.cache_dir,
                           progress=progress, source_size=tuple(stored) if stored else None)
    return images, stored


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


def effective_model_config(cfg: RunConfig) -> ModelConfig:
    """The model config actually built: scratch mode never loads pretrained weights."""
    if cfg.train.mode == "scratch":
        return cfg.model.model_copy(update={"pretrained": False, "weights": None})
    return cfg.model


def build_model(cfg: RunConfig, meta_dim: int) -> LesionModel:
    """The :class:`~lesionlab.models.LesionModel` for this run (frozen backbone in ``frozen`` mode)."""
    model = create_model(effective_model_config(cfg), num_classes=NUM_CLASSES, meta_dim=meta_dim)
    if cfg.train.mode == "frozen":
        freeze_backbone(model, True)
    return model


def preprocessing_for(cfg: RunConfig, model: LesionModel, source_size: tuple[int, int] | None = None
                      ) -> Preprocessing:
    """The saved preprocessing: model input size, resize mode and colour constancy from the data config, mean/std
    from the model, and the stored size of the training images (:attr:`PreparedData.source_size`)."""
    dc = model.data_config
    return Preprocessing(size=tuple(cfg.data.image_size), resize=cfg.data.resize, mean=tuple(dc["mean"]),
                         std=tuple(dc["std"]), source_size=source_size, colour_constancy=cfg.data.colour_constancy,
                         colour_constancy_power=cfg.data.colour_constancy_power)


@dataclass
class Plan:
    """The concrete module and datasets of one run, after mode-specific preparation."""

    module: nn.Module  # what the optimizer trains and the train loader feeds: LesionModel or HeadOnly
    eval_module: nn.Module  # what validation calls
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    images: bool  # True when the train loader yields images (backbone runs every step)
    frozen_part: nn.Module | None  # kept in eval mode during training
    embedding_info: dict[str, Any] = field(default_factory=dict)


class WithSoftTargets(torch.utils.data.Dataset):
    """A training dataset whose samples also carry ``soft``: their row of the teachers' soft targets."""

    def __init__(self, base: torch.utils.data.Dataset, soft: torch.Tensor) -> None:
        if len(base) != len(soft):
            raise TrainError(f"{len(soft)} soft targets for {len(base)} training samples")
        self.base, self.soft = base, soft

    def set_epoch(self, epoch: int) -> None:
        """New augmented views each epoch (the targets stay)."""
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], "soft": self.soft[i]}


def plan_images(cfg: RunConfig, model: nn.Module, data: PreparedData, pre: Preprocessing,
                soft: torch.Tensor | None = None) -> Plan:
    """Scratch / finetune: image datasets; the whole model is trained (the backbone after ``unfreeze_after``).

    ``soft``: distillation targets of the training rows (:mod:`lesionlab.train.distill`), carried by each sample."""
    train_set = image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), cfg.train.seed)
    if soft is not None:
        train_set = WithSoftTargets(train_set, soft)
    val_set = image_dataset(data, data.val_rows, pre.normalize)
    return Plan(model, model, train_set, val_set, True, None)


class EmbeddingCache:
    """The frozen backbone's embeddings of some rows, computed once (rank 0 first under DDP) and kept on disk."""

    def __init__(self, cfg: RunConfig, model: LesionModel, data: PreparedData, pre: Preprocessing,
                 precision: Precision, progress: bool, is_main: bool) -> None:
        self.model, self.data, self.precision, self.progress, self.is_main = model, data, precision, progress, is_main
        self.cfg = cfg
        self.folder = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        self.parts: dict[str, Any] = {
            "embedding": embedding_key(effective_model_config(cfg), tuple(cfg.data.image_size), pre.to_dict()),
            "data": data.info["fingerprint"], "split": data.split_hash, "format": 1}
        if precision.dtype is not None:  # reduced-precision embeddings are other numbers: never share float32 ones
            self.parts["precision"] = {k: v for k, v in precision.describe().items()
                                       if k in ("autocast", "grouped_conv_fp32")}
        self.info: dict[str, Any] = {}

    def _compute(self, rows: np.ndarray, transform: Any, views: str | None, desc: str, seed: int | None
                 ) -> torch.Tensor:
        loader = make_loader(image_dataset(self.data, rows, transform, seed), self.cfg.train.eval_batch_size,
                             num_workers=self.cfg.train.num_workers)
        return compute_embeddings(self.model, loader, precision=self.precision, views=views,
                                  progress=self.progress, desc=desc)

    def get(self, name: str, rows: np.ndarray, key_parts: dict[str, Any], transform: Any, views: str | None = None,
            seed: int | None = None, desc: str = "") -> torch.Tensor:
        """The embeddings ``[len(rows), V, ...]`` keyed by the model, data and ``key_parts``; recorded in ``info``."""
        path = cache_path(self.folder, cache_key({**self.parts, **key_parts}))
        start = time.perf_counter()

        def compute() -> torch.Tensor:
            return self._compute(rows, transform, views, desc or f"embed {name}", seed)

        if self.is_main:
            feats, hit = load_or_compute(path, compute, len(rows))
        dist_utils.barrier()
        if not self.is_main:
            feats, hit = load_or_compute(path, compute, len(rows))
        self.info[name] = {"path": str(path), "cached": hit, "seconds": time.perf_counter() - start,
                           "shape": list(feats.shape)}
        return feats


def _meta(data: PreparedData, rows: np.ndarray) -> torch.Tensor | None:
    return torch.as_tensor(data.meta)[rows] if data.meta is not None else None


def plan_frozen(cfg: RunConfig, model: LesionModel, data: PreparedData, pre: Preprocessing, precision: Precision,
                progress: bool, is_main: bool) -> Plan:
    """Frozen mode: cached embeddings for validation (and training, unless augmentation bypasses the cache)."""
    cache = EmbeddingCache(cfg, model, data, pre, precision, progress, is_main)
    tta, k_views, seed = cfg.train.tta, int(cfg.train.embed_cache_views), cfg.train.seed
    views = cfg.train.tta_views if tta else None
    val_feats = cache.get("val", data.val_rows, {"rows": "val", "views": views or "clean"}, pre.normalize, views=views)
    val_set = FeatureDataset(val_feats, data.val_labels, _meta(data, data.val_rows), pick_view=False)
    head = HeadOnly(model)
    if cfg.augment.enabled and k_views == 0:  # bypass: the frozen backbone runs on fresh augmentations every step
        train_set = image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), seed)
        cache.info["train"] = {"cached": False, "reason": "augmentation with embed_cache_views=0 bypasses the cache"}
        return Plan(model, head, train_set, val_set, True, model.backbone, cache.info)
    if cfg.augment.enabled:
        train_tf = build_train_transform(cfg.augment, pre)
        augment = cfg.augment.model_dump(mode="json")
        train_feats = torch.cat([
            cache.get(f"train_view{v}", data.train_rows, {"rows": "train", "view": v, "seed": seed, "augment": augment},
                      train_tf, seed=int(np.random.SeedSequence([seed, 7919, v]).generate_state(1)[0]),
                      desc=f"embed train view {v + 1}/{k_views}")
            for v in range(k_views)], dim=1)
    else:
        train_feats = cache.get("train", data.train_rows, {"rows": "train", "views": "clean"}, pre.normalize)
    train_set = FeatureDataset(train_feats, data.train_labels, _meta(data, data.train_rows), pick_view=True,
                               seed=seed)
    return Plan(head, head, train_set, val_set, False, model.backbone, cache.info)
