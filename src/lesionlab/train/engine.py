"""The training engine: :func:`fit` turns a :class:`~lesionlab.config.RunConfig` into a run directory.

Built from the small pieces in :mod:`lesionlab.train.pieces`, :mod:`lesionlab.train.loop` and
:mod:`lesionlab.train.embeddings`; the CLI (``lesionlab train``) and the DDP entry point only call :func:`fit`.

Data: the configured source, decoded once into the image cache at ``data.image_size``; training on split ``train``,
model selection on ``val``. The test split is never read here (evaluation is a separate step). The metadata
encoder is fitted on the training rows only and saved in the run.

Modes (``train.mode``):

* ``scratch`` - random initialisation, every layer trained (``model.pretrained`` is ignored and saved as false);
* ``finetune`` - pretrained backbone, every layer trained; with ``train.unfreeze_after = N`` only the head trains
  for the first N epochs (backbone in eval mode), then everything;
* ``frozen`` - the backbone never changes: its embeddings are cached on disk (see
  :mod:`lesionlab.train.embeddings`) and the head trains on them.

Each epoch writes ``history.csv``/``history.json`` and ``last.ckpt``; each new best validation score (``train.monitor``,
balanced accuracy by default) writes ``model.safetensors`` + ``run.json``. Calling :func:`fit` again on a run
directory holding ``last.ckpt`` resumes from it, and ends exactly as an uninterrupted run would on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.config import ModelConfig, RunConfig, default_cache_dir, dump_config
from lesionlab.runs import (
    CONFIG_FILE,
    INFO_FILE,
    RunError,
    atomic_write_json,
    atomic_write_text,
    read_info,
    save_run,
    write_history,
)
from lesionlab.train import distributed as dist_utils
from lesionlab.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lesionlab.train.embeddings import (
    FeatureDataset,
    HeadOnly,
    cache_key,
    cache_path,
    compute_embeddings,
    load_or_compute,
)
from lesionlab.train.loop import (
    Precision,
    epoch_seed,
    predict,
    resolve_device,
    seed_everything,
    train_one_epoch,
    unwrap,
    worker_init,
)
from lesionlab.train.metrics import SELECTION_METRICS, selection_metrics
from lesionlab.train.pieces import (
    EarlyStopping,
    class_counts,
    make_loss,
    make_optimizer,
    make_sampler,
    make_scheduler,
    monitor_mode,
)
from lesionlab.train.precision import choose_precision

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


class TrainError(ValueError):
    """A configuration or data combination that cannot be trained; the message names the setting."""


# --------------------------------------------------------------------------------------------- run directory


def default_run_dir(cfg: RunConfig) -> Path:
    """``<output_dir>/<name>``: the same command always writes (and resumes) the same directory."""
    return Path(cfg.output_dir) / cfg.name


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The config without settings that may change between a run and its resume (where and how fast it runs)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    out.pop("output_dir", None)
    out.pop("name", None)
    for key in ("num_workers", "device"):
        out.get("train", {}).pop(key, None)
    return out


def check_run_dir(run_dir: Path, cfg: RunConfig, resume: bool | None) -> str:
    """What to do with ``run_dir``: ``"fresh"``, ``"resume"`` or ``"complete"`` (raises on a conflicting config).

    ``resume=True`` requires a checkpoint or a complete run; ``resume=False`` refuses a non-empty directory;
    ``None`` (the default) resumes when there is something to resume and starts fresh otherwise.
    """
    ckpt = run_dir / CHECKPOINT_FILE
    info_path = run_dir / INFO_FILE
    has_ckpt = ckpt.is_file()
    complete = False
    if info_path.is_file():
        info = read_info(run_dir)
        complete = info.get("status") == "complete"
        saved = info.get("config", {})
        diff = _config_diff(_comparable(saved), _comparable(cfg.model_dump(mode="json")))
        if diff and (has_ckpt or complete) and resume is not False:
            raise RunError(f"{info_path}: run directory holds a run with a different config ({'; '.join(diff[:6])}); "
                           "choose another --run-dir (or train.name) or delete the directory")
    if resume is False and (has_ckpt or info_path.is_file()):
        raise RunError(f"{run_dir}: already holds a run; resume it (--resume), or choose another --run-dir")
    if complete and not has_ckpt:
        return "complete"
    if has_ckpt:
        return "resume"
    if resume:
        raise RunError(f"{ckpt}: nothing to resume (no checkpoint in {run_dir})")
    return "fresh"


# ------------------------------------------------------------------------------------------------------ data


@dataclass
class PreparedData:
    """Everything :func:`fit` needs from the data layer for one run."""

    source: Any
    table: pd.DataFrame
    images: Any  # uint8 [N, H, W, 3], row-aligned with the table
    train_rows: np.ndarray
    val_rows: np.ndarray
    split_hash: str
    meta_encoder: Any
    meta: np.ndarray | None  # encoded metadata [N, D] for every row (None without fusion)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()[self.train_rows].astype(np.int64)

    @property
    def val_labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()[self.val_rows].astype(np.int64)


def prepare_data(cfg: RunConfig, progress: bool = True) -> PreparedData:
    """Open the source, check the split and metadata, build the image cache and fit the metadata encoder."""
    from lesionlab.data import MetadataEncoder, cached_images, open_source, split_hash

    source = open_source(cfg.data)
    table = source.table
    if not table.index.equals(pd.RangeIndex(len(table))):
        raise TrainError(f"data source {source.name!r}: its table index must be the row numbers 0..N-1 of the images")
    split = table["split"].astype(str).to_numpy()
    train_rows = np.flatnonzero(split == "train")
    val_rows = np.flatnonzero(split == "val")
    where = f"data source {source.name!r} with split {cfg.data.split!r}"
    if len(train_rows) == 0:
        raise TrainError(f"{where}: no training rows")
    if len(val_rows) == 0:
        raise TrainError(f"{where}: no validation rows; model selection needs split 'val'")
    labels = table["label"].to_numpy()
    bad = [int(r) for r in np.concatenate([train_rows, val_rows]) if not 0 <= labels[r] < NUM_CLASSES]
    if bad:
        raise TrainError(f"{where}: row {bad[0]} (image {table['image_id'].iloc[bad[0]]}) has label {labels[bad[0]]}; "
                         f"training needs labels 0..{NUM_CLASSES - 1}")
    encoder = meta = None
    if cfg.model.fusion != "none":
        if not getattr(source, "has_metadata", False):
            raise TrainError(f"model.fusion={cfg.model.fusion!r} needs clinical metadata (age, sex, site), but {where} "
                             "has none; set model.fusion=none or use a source with metadata")
        encoder = MetadataEncoder.fit(table.iloc[train_rows])
        meta = encoder.encode_table(table)
    images = cached_images(source, tuple(cfg.data.image_size), cfg.data.resize, progress=progress)
    info = {"source": source.name, "synthetic": bool(getattr(source, "synthetic", False)),
            "fingerprint": source.fingerprint(), "n_train": len(train_rows), "n_val": len(val_rows),
            "train_class_counts": dict(zip(CLASS_CODES, class_counts(labels[train_rows]).tolist(), strict=True)),
            "source_image_size": source_image_size(source, train_rows)}
    return PreparedData(source=source, table=table, images=images, train_rows=train_rows, val_rows=val_rows,
                        split_hash=split_hash(table), meta_encoder=encoder, meta=meta, info=info)


def source_image_size(source: Any, rows: np.ndarray, samples: int = 32) -> list[int] | None:
    """[height, width] of the training images as stored, when a spread-out sample of them all share one size.

    Saved in the run so that serving can squash a full-size upload to it first, as the training images were (the
    shared HAM10000 set is stored at 64 px: a sharp 600x450 image resized straight to the model input is not what
    the model learnt from). ``None`` when the sizes differ or cannot be read.
    """
    if len(rows) == 0 or not hasattr(source, "load_image"):
        return None
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(samples, len(rows))).round().astype(int))
    sizes = set()
    for i in picks:
        img = source.load_image(int(rows[i]))
        sizes.add(tuple(int(v) for v in np.shape(img)[:2]) if isinstance(img, np.ndarray) else (img.height, img.width))
    return list(sizes.pop()) if len(sizes) == 1 else None


def _image_dataset(data: PreparedData, rows: np.ndarray, transform: Any, seed: int | None = None
                   ) -> torch.utils.data.Dataset:
    """The data layer's sample-dict dataset over some rows (augmentation seeded per sample by seed, epoch, row)."""
    from lesionlab.data import LesionDataset

    return LesionDataset(data.images, data.table.iloc[rows], transform, data.meta_encoder, seed=seed)


# ----------------------------------------------------------------------------------------------------- model


def effective_model_config(cfg: RunConfig) -> ModelConfig:
    """The model config actually built: scratch mode never loads pretrained weights."""
    if cfg.train.mode == "scratch":
        return cfg.model.model_copy(update={"pretrained": False, "weights": None})
    return cfg.model


def build_model(cfg: RunConfig, meta_dim: int) -> nn.Module:
    """The :class:`~lesionlab.models.LesionModel` for this run (frozen backbone in ``frozen`` mode)."""
    from lesionlab.models import create_model, freeze_backbone

    model = create_model(effective_model_config(cfg), num_classes=NUM_CLASSES, meta_dim=meta_dim)
    if cfg.train.mode == "frozen":
        freeze_backbone(model, True)
    return model


def _set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    from lesionlab.models import freeze_backbone

    freeze_backbone(model, not trainable)


def preprocessing_for(cfg: RunConfig, model: nn.Module) -> Any:
    """The saved preprocessing: size, resize mode and colour constancy from the data config, mean/std from the model."""
    from lesionlab.data import Preprocessing

    dc = model.data_config
    return Preprocessing(size=tuple(cfg.data.image_size), resize=cfg.data.resize, mean=tuple(dc["mean"]),
                         std=tuple(dc["std"]), colour_constancy=cfg.data.colour_constancy,
                         colour_constancy_power=cfg.data.colour_constancy_power)


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class Plan:
    """The concrete loaders and module of one run, after mode-specific preparation."""

    module: nn.Module  # what the optimizer trains and the train loader feeds: LesionModel or HeadOnly
    eval_module: nn.Module  # what validation calls
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    images: bool  # True when the train loader yields images (backbone runs every step)
    frozen_part: nn.Module | None  # kept in eval mode during training
    embedding_info: dict[str, Any] = field(default_factory=dict)


def _loader(ds: torch.utils.data.Dataset, batch_size: int, *, num_workers: int, sampler: Any = None,
            shuffle: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
            ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                                       sampler=sampler, num_workers=num_workers, generator=generator,
                                       worker_init_fn=worker_init if num_workers else None, drop_last=drop_last,
                                       persistent_workers=False)


def _embedding_parts(cfg: RunConfig, data: PreparedData, pre: Any) -> dict[str, Any]:
    from lesionlab.models import embedding_key

    return {"embedding": embedding_key(effective_model_config(cfg), tuple(cfg.data.image_size), pre.to_dict()),
            "data": data.info["fingerprint"], "split": data.split_hash, "format": 1}


def plan_frozen(cfg: RunConfig, model: nn.Module, data: PreparedData, pre: Any, precision: Precision,
                progress: bool, is_main: bool) -> Plan:
    """Frozen mode: cached embeddings for validation (and training, unless augmentation bypasses the cache)."""
    from lesionlab.data import build_eval_transform, build_train_transform

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    parts = _embedding_parts(cfg, data, pre)
    if precision.dtype is not None:  # reduced-precision embeddings are other numbers: never share a float32 cache
        parts["precision"] = {k: v for k, v in precision.describe().items() if k in ("autocast", "grouped_conv_fp32")}
    eval_tf = build_eval_transform(pre)
    bs = cfg.train.eval_batch_size
    nw = cfg.train.num_workers
    meta = torch.as_tensor(data.meta) if data.meta is not None else None

    def embed(rows: np.ndarray, transform: Any, flips: bool, desc: str, seed: int | None = None
              ) -> Callable[[], torch.Tensor]:
        def compute() -> torch.Tensor:
            loader = _loader(_image_dataset(data, rows, transform, seed), bs, num_workers=nw)
            return compute_embeddings(model, loader, precision=precision, flips=flips, progress=progress, desc=desc)
        return compute

    info: dict[str, Any] = {}
    aug = cfg.augment.enabled
    k_views = int(cfg.train.embed_cache_views)

    def cached(name: str, rows: np.ndarray, key_parts: dict[str, Any], compute: Callable[[], torch.Tensor]
               ) -> torch.Tensor:
        path = cache_path(cache_dir, cache_key({**parts, **key_parts}))
        start = time.perf_counter()
        if is_main:
            feats, hit = load_or_compute(path, compute, len(rows))
        dist_utils.barrier()
        if not is_main:
            feats, hit = load_or_compute(path, compute, len(rows))
        info[name] = {"path": str(path), "cached": hit, "seconds": time.perf_counter() - start,
                      "shape": list(feats.shape)}
        return feats

    val_feats = cached("val", data.val_rows, {"rows": "val", "views": "flips" if cfg.train.tta else "clean"},
                       embed(data.val_rows, eval_tf, cfg.train.tta, "embed val"))
    val_set = FeatureDataset(val_feats, data.val_labels, meta[data.val_rows] if meta is not None else None,
                             pick_view=False)
    head = HeadOnly(model)
    if aug and k_views == 0:  # bypass: the frozen backbone runs on fresh augmentations every step
        train_set = _image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), cfg.train.seed)
        info["train"] = {"cached": False, "reason": "augmentation with embed_cache_views=0 bypasses the cache"}
        return Plan(model, head, train_set, val_set, True, model.backbone, info)
    if aug:
        train_tf = build_train_transform(cfg.augment, pre)
        views = []
        for v in range(k_views):
            seed = int(np.random.SeedSequence([cfg.train.seed, 7919, v]).generate_state(1)[0])
            views.append(cached(f"train_view{v}", data.train_rows,
                                {"rows": "train", "view": v, "seed": cfg.train.seed,
                                 "augment": cfg.augment.model_dump(mode="json")},
                                embed(data.train_rows, train_tf, False, f"embed train view {v + 1}/{k_views}", seed)))
        train_feats = torch.cat(views, dim=1)
    else:
        train_feats = cached("train", data.train_rows, {"rows": "train", "views": "clean"},
                             embed(data.train_rows, eval_tf, False, "embed train"))
    train_set = FeatureDataset(train_feats, data.train_labels, meta[data.train_rows] if meta is not None else None,
                               pick_view=True, seed=cfg.train.seed)
    return Plan(head, head, train_set, val_set, False, model.backbone, info)


def plan_images(cfg: RunConfig, model: nn.Module, data: PreparedData, pre: Any) -> Plan:
    """Scratch / finetune: image datasets; the whole model is trained (the backbone after ``unfreeze_after``)."""
    from lesionlab.data import build_eval_transform, build_train_transform

    train_set = _image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), cfg.train.seed)
    val_set = _image_dataset(data, data.val_rows, build_eval_transform(pre))
    return Plan(model, model, train_set, val_set, True, None)


def check_monitor(name: str) -> str:
    """The metric name behind ``train.monitor`` (``val_`` prefix optional), or an error listing the choices."""
    key = name.removeprefix("val_")
    if key not in SELECTION_METRICS:
        raise TrainError(f"train.monitor={name!r} is not a validation metric; choose one of "
                         f"{', '.join(SELECTION_METRICS)}")
    return key


def _validate(plan: Plan, cfg: RunConfig, precision: Precision, ctx: dist_utils.DistContext, progress: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """Validation probabilities for every val row (sharded over DDP ranks and gathered in order)."""
    n = len(plan.val_set)
    idx = np.arange(ctx.rank, n, ctx.world_size)
    ds = torch.utils.data.Subset(plan.val_set, idx.tolist()) if ctx.world_size > 1 else plan.val_set
    loader = _loader(ds, cfg.train.eval_batch_size, num_workers=cfg.train.num_workers)
    proba, labels = predict(unwrap(plan.eval_module), loader, precision=precision, tta=cfg.train.tta,
                            progress=progress and ctx.is_main, desc="val")
    if ctx.world_size > 1:
        parts = dist_utils.all_gather_object((idx, proba, labels))
        order = np.concatenate([p[0] for p in parts])
        proba = np.concatenate([p[1] for p in parts])[np.argsort(order)]
        labels = np.concatenate([p[2] for p in parts])[np.argsort(order)]
    return proba, labels


def fit(cfg: RunConfig, *, run_dir: str | Path | None = None, resume: bool | None = None, progress: bool = True,
        callbacks: Sequence[EpochCallback] = ()) -> Path:
    """Train one run and return its directory (see the module docstring).

    ``resume``: ``None`` continues from ``last.ckpt`` when present, ``True`` requires it, ``False`` refuses a used
    directory. ``callbacks`` are called as ``cb(epoch, row)`` after each epoch's checkpoint is written (on rank 0).
    Under ``torchrun`` (``WORLD_SIZE > 1``) this trains with DistributedDataParallel and only rank 0 writes.
    """
    from lesionlab.models import apply_head_preset

    # The saved config is the resolved one: preset head and class weights spelled out, scratch without weights.
    cfg = apply_head_preset(cfg)
    cfg = cfg.model_copy(update={"model": effective_model_config(cfg)})
    check_monitor(cfg.train.monitor)
    if cfg.augment.enabled and cfg.augment.corruptions:  # a misspelt corruption fails now, not after data loading
        from lesionlab.data.corruptions import RandomCorruption

        RandomCorruption(cfg.augment.corruptions, cfg.augment.corruption_p, tuple(cfg.augment.corruption_severity))
    ctx = dist_utils.setup(cfg.train.device)
    try:
        return _fit(cfg, ctx, Path(run_dir) if run_dir else default_run_dir(cfg), resume, progress, callbacks)
    finally:
        dist_utils.teardown(ctx)


def _fit(cfg: RunConfig, ctx: dist_utils.DistContext, run_dir: Path, resume: bool | None, progress: bool,
         callbacks: Sequence[EpochCallback]) -> Path:
    tc = cfg.train
    state = check_run_dir(run_dir, cfg, resume)
    if state == "complete":
        log.info("%s already holds a complete run; nothing to do", run_dir)
        return run_dir
    if ctx.world_size > 1 and tc.sampler != "none":
        raise TrainError("train.sampler=balanced is not supported with DDP; use train.class_weights instead")
    if tc.mode != "finetune" and tc.unfreeze_after is not None:
        raise TrainError(f"train.unfreeze_after only applies to train.mode=finetune (mode is {tc.mode!r})")
    if tc.mode == "frozen" and tc.embed_cache_views < 0:
        raise TrainError("train.embed_cache_views must be >= 0")
    progress = progress and ctx.is_main
    device = ctx.device if ctx.device is not None else resolve_device(tc.device)
    seed_everything(tc.seed)

    data = prepare_data(cfg, progress)
    meta_dim = int(data.meta.shape[1]) if data.meta is not None else 0
    model = build_model(cfg, meta_dim).to(device)
    pre = preprocessing_for(cfg, model)

    ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE) if state == "resume" else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])

    # Precision: image training decides once (saved in the checkpoint so a resume computes identically; under DDP
    # rank 0's decision is used by every rank).
    images_train = tc.mode != "frozen" or (cfg.augment.enabled and tc.embed_cache_views == 0)
    if ckpt is not None:
        prec_report = ckpt["precision"]
    else:
        def sample() -> tuple[torch.Tensor, torch.Tensor | None]:
            from lesionlab.data import build_eval_transform

            ds = _image_dataset(data, data.val_rows[: min(len(data.val_rows), tc.batch_size)],
                                build_eval_transform(pre))
            batch = next(iter(_loader(ds, tc.batch_size, num_workers=0)))
            return batch["image"], batch.get("meta")

        precision, prec_report = choose_precision(tc, device, model, sample, images=images_train)
        prec_report = {**prec_report, "bf16": precision.dtype == torch.bfloat16,
                       "channels_last": precision.channels_last, "grouped_conv_fp32": precision.grouped_conv_fp32}
        prec_report = dist_utils.all_gather_object(prec_report)[0]
    if device.type == "cuda":
        precision, _ = choose_precision(tc, device, images=images_train)
    else:
        # checkpoints from before grouped_conv_fp32 existed ran depthwise convolutions in bf16: resume the same way
        precision = Precision(device, torch.bfloat16 if prec_report.get("bf16") else None,
                              bool(prec_report.get("channels_last")),
                              grouped_conv_fp32=bool(prec_report.get("grouped_conv_fp32", False)))
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)

    if tc.mode == "frozen":
        plan = plan_frozen(cfg, model, data, pre, replace(precision, scaler=None), progress, ctx.is_main)
        # the head on cached embeddings computes in float32
        head_precision = precision if plan.images else Precision(device)
    else:
        plan = plan_images(cfg, model, data, pre)
        head_precision = precision

    generator = torch.Generator()
    labels = data.train_labels
    if ctx.world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(plan.train_set, num_replicas=ctx.world_size,
                                                                  rank=ctx.rank, shuffle=True, seed=tc.seed,
                                                                  drop_last=True)
    else:
        sampler = make_sampler(tc, labels, generator=generator)
    per_rank = len(plan.train_set) // ctx.world_size
    drop_last = per_rank > tc.batch_size
    train_loader = _loader(plan.train_set, tc.batch_size, num_workers=tc.num_workers, sampler=sampler, shuffle=True,
                           generator=generator, drop_last=drop_last)
    steps = len(train_loader) if tc.max_train_batches is None else min(len(train_loader), tc.max_train_batches)

    loss_fn = make_loss(tc, class_counts(labels))
    optimizer = make_optimizer(tc, model)
    scheduler = make_scheduler(tc, optimizer, steps)
    stopper = EarlyStopping(mode=monitor_mode(tc.monitor), patience=tc.patience, min_delta=tc.min_delta)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if precision.scaler is not None and ckpt.get("scaler") is not None:
            precision.scaler.load_state_dict(ckpt["scaler"])
        stopper.load_state_dict(ckpt["early_stopping"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        set_rng_state(ckpt["rng"])
        log.info("resuming %s after epoch %d", run_dir, start_epoch)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))

    split = {"name": str(cfg.data.split), "hash": data.split_hash}
    if getattr(data.source, "split_name", ""):  # what the source actually used, e.g. 'npz': the file's own splits
        split["source"] = str(data.source.split_name)
    extra_base = {"data": data.info, "status": "training", "split": split,
                  "training": {"mode": tc.mode, "precision": prec_report, "world_size": ctx.world_size,
                               "embeddings": plan.embedding_info}}
    ddp_module: nn.Module | None = None
    ddp_phase: bool | None = None
    stopped_early = False
    from tqdm.auto import tqdm

    epochs_bar = tqdm(total=tc.epochs, initial=start_epoch, desc="epochs", disable=not progress, unit="epoch",
                      dynamic_ncols=True)
    for epoch in range(start_epoch, tc.epochs):
        if stopper.should_stop:
            stopped_early = True
            break
        backbone_frozen = tc.mode == "frozen" or (tc.unfreeze_after is not None and epoch < tc.unfreeze_after)
        if tc.mode == "finetune":
            _set_backbone_trainable(model, not backbone_frozen)
        if ddp_module is None or ddp_phase != backbone_frozen:
            ddp_module = dist_utils.wrap(plan.module, ctx)
            ddp_phase = backbone_frozen
        # Every epoch reseeds from (seed, epoch): a resumed run draws the same shuffles and augmentations.
        seed_everything(epoch_seed(tc.seed, epoch, ctx.rank))
        generator.manual_seed(epoch_seed(tc.seed, epoch))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(plan.train_set, "set_epoch"):
            plan.train_set.set_epoch(epoch)
        plan.module.train()  # LesionModel.train keeps a frozen backbone (and frozen BatchNorm) in eval mode
        t0 = time.perf_counter()
        stats = train_one_epoch(ddp_module, train_loader, loss_fn, optimizer, precision=head_precision,
                                scheduler=scheduler, grad_clip=tc.grad_clip, max_batches=tc.max_train_batches,
                                progress=progress, desc=f"epoch {epoch + 1}/{tc.epochs}")
        if ctx.world_size > 1:
            stats["loss"] = dist_utils.mean_across(stats["loss"])
        proba, val_labels = _validate(plan, cfg, head_precision, ctx, progress)
        metrics = selection_metrics(val_labels, proba)
        row = {"epoch": epoch, "train_loss": stats["loss"], "train_steps": stats["steps"],
               "train_samples": stats["samples"] * ctx.world_size, **{f"val_{k}": v for k, v in metrics.items()},
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
               "train_images_per_s": stats["images_per_s"] * ctx.world_size,
               "backbone_frozen": backbone_frozen}
        history.append(row)
        monitored = metrics.get(check_monitor(tc.monitor))
        improved = stopper.step(monitored, epoch)
        if ctx.is_main:
            if improved or not (run_dir / INFO_FILE).is_file():
                best = {"epoch": epoch, "monitor": tc.monitor, **{f"val_{k}": v for k, v in metrics.items()}}
                save_run(run_dir, unwrap(model), cfg, pre, data.meta_encoder, data.split_hash, best,
                         extra=extra_base)
            write_history(run_dir, history)
            save_checkpoint(run_dir / CHECKPOINT_FILE, {
                "epoch": epoch, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
                "early_stopping": stopper.state_dict(), "history": history, "rng": rng_state(),
                "precision": prec_report, "config": cfg.model_dump(mode="json")})
            if progress:
                _print_epoch(row, tc.monitor, improved)
                epochs_bar.update(1)
                epochs_bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=_fmt(monitored),
                                       best=f"{_fmt(stopper.best)} @{stopper.best_epoch + 1}")
            for cb in callbacks:
                cb(epoch, row)
        dist_utils.barrier()
    else:
        stopped_early = stopper.should_stop
    epochs_bar.close()
    if ctx.is_main:
        _finish(run_dir, history, stopper, stopped_early)
    dist_utils.barrier()
    return run_dir


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a" if v is None else str(v)


def _print_epoch(row: dict[str, Any], monitor: str, improved: bool) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"epoch {row['epoch'] + 1}: train loss {_fmt(row['train_loss'])}, val acc {_fmt(row['val_accuracy'])}, "
               f"bal. acc {_fmt(row['val_balanced_accuracy'])}, macro AUC {_fmt(row['val_macro_auc'])} "
               f"({row['seconds']:.1f} s){'  * best ' + monitor if improved else ''}")


def _finish(run_dir: Path, history: list[dict[str, Any]], stopper: EarlyStopping, stopped_early: bool) -> None:
    """Mark the run complete in ``run.json`` and drop ``last.ckpt`` (the best weights are in model.safetensors)."""
    info = read_info(run_dir)
    info["status"] = "complete"
    info["epochs_run"] = len(history)
    info["stopped_early"] = bool(stopped_early)
    info.setdefault("training", {})["seconds"] = float(sum(r["seconds"] for r in history))
    atomic_write_json(run_dir / INFO_FILE, info)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
