"""The data layer: sources -> sample table, splits, leakage audit, metadata encoder, transforms, cache, datasets.

Public API (see ``docs/ARCHITECTURE.md`` for the contracts)::

    source = open_source(cfg.data)                       # DataSource: .table .name .synthetic .load_image(i) ...
    images = cached_images(source, (64, 64), "square")   # uint8 [N, 64, 64, 3], memory-mapped
    pre = Preprocessing(size=(64, 64), mean=..., std=...)
    train = source.table[source.table.split == "train"]
    encoder = MetadataEncoder.fit(train)
    ds = LesionDataset(images, train, build_train_transform(cfg.augment, pre), encoder, seed=0)

Names are imported on first use, so ``import lesionlab.data`` (and ``lesionlab --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # sources
    "DataSource": "sources", "open_source": "sources", "open_unsplit": "sources", "split_source": "sources",
    "open_ham10000": "sources", "open_npz": "sources", "open_isic": "sources", "open_synthetic": "sources",
    "parse_ham_metadata": "metadata", "shared_data_dir": "sources", "class_split_counts": "splits",
    "missingness": "metadata", "with_split": "sources", "FileImages": "images", "ArrayImages": "images",
    # images
    "DataError": "images", "decode_image": "images",
    # synthetic
    "generate_synthetic": "synthetic",
    # splits
    "SPLITS": "splits", "lesion_split": "splits", "kfold_split": "splits", "read_split_csv": "splits",
    "write_split_csv": "splits", "split_hash": "splits", "split_frame": "splits", "apply_split": "splits",
    # audit
    "AuditResult": "audit", "audit_split": "audit", "NEAR_THRESHOLD": "audit",
    # metadata
    "MetadataEncoder": "metadata", "SEXES": "metadata", "SITES": "metadata",
    # transforms
    "Preprocessing": "transforms", "resize_image": "transforms", "model_pixels": "transforms",
    "build_train_transform": "transforms",
    "to_chw_tensor": "transforms",
    # cache, datasets
    "cached_images": "cache", "LesionDataset": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lesionlab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lesionlab.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
