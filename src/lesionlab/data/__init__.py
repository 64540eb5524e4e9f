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
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # sources
    "DataSource": "sources", "open_source": "sources", "open_unsplit": "sources", "split_source": "sources",
    "open_ham10000": "sources", "open_npz": "sources", "open_isic": "sources", "open_synthetic": "sources",
    "parse_ham_metadata": "sources", "shared_data_dir": "sources", "class_split_counts": "sources",
    "missingness": "sources", "with_split": "sources",
    # images
    "DataError": "images", "decode_image": "images", "decode_bytes": "images",
    # synthetic
    "generate_synthetic": "synthetic", "write_synthetic": "synthetic",
    # splits
    "SPLITS": "splits", "lesion_split": "splits", "kfold_split": "splits", "read_split_csv": "splits",
    "write_split_csv": "splits", "split_hash": "splits", "split_frame": "splits", "apply_split": "splits",
    # audit
    "AuditResult": "audit", "audit_split": "audit", "NEAR_THRESHOLD": "audit",
    # metadata
    "MetadataEncoder": "metadata", "SEXES": "metadata", "SITES": "metadata",
    # transforms
    "Preprocessing": "transforms", "resize_image": "transforms", "build_train_transform": "transforms",
    "build_eval_transform": "transforms", "to_chw_tensor": "transforms",
    # cache, datasets
    "cached_images": "cache", "LesionDataset": "datasets",
}

__all__ = [
    "NEAR_THRESHOLD",
    "SEXES",
    "SITES",
    "SPLITS",
    "AuditResult",
    "DataError",
    "DataSource",
    "LesionDataset",
    "MetadataEncoder",
    "Preprocessing",
    "apply_split",
    "audit_split",
    "build_eval_transform",
    "build_train_transform",
    "cached_images",
    "class_split_counts",
    "decode_bytes",
    "decode_image",
    "generate_synthetic",
    "kfold_split",
    "lesion_split",
    "missingness",
    "open_ham10000",
    "open_isic",
    "open_npz",
    "open_source",
    "open_synthetic",
    "open_unsplit",
    "parse_ham_metadata",
    "read_split_csv",
    "resize_image",
    "shared_data_dir",
    "split_frame",
    "split_hash",
    "split_source",
    "to_chw_tensor",
    "with_split",
    "write_split_csv",
    "write_synthetic",
]

if TYPE_CHECKING:
    from lesionlab.data.audit import NEAR_THRESHOLD, AuditResult, audit_split
    from lesionlab.data.cache import cached_images
    from lesionlab.data.datasets import LesionDataset
    from lesionlab.data.images import DataError, decode_bytes, decode_image
    from lesionlab.data.metadata import SEXES, SITES, MetadataEncoder
    from lesionlab.data.sources import (
        DataSource,
        class_split_counts,
        missingness,
        open_ham10000,
        open_isic,
        open_npz,
        open_source,
        open_synthetic,
        open_unsplit,
        parse_ham_metadata,
        shared_data_dir,
        split_source,
        with_split,
    )
    from lesionlab.data.splits import (
        SPLITS,
        apply_split,
        kfold_split,
        lesion_split,
        read_split_csv,
        split_frame,
        split_hash,
        write_split_csv,
    )
    from lesionlab.data.synthetic import generate_synthetic, write_synthetic
    from lesionlab.data.transforms import (
        Preprocessing,
        build_eval_transform,
        build_train_transform,
        resize_image,
        to_chw_tensor,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lesionlab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lesionlab.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
