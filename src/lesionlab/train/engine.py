"""The training engine: :func:`fit` turns a :class:`~lesionlab.config.RunConfig` into a run directory.

:func:`fit` prepares the run (data, model, preprocessing, precision, plan, optimizer) and hands it to
:func:`run_epochs`, a short loop whose side effects live in :mod:`lesionlab.train.handlers`. Training reads split
``train`` from the decode-once cache, selects on ``val`` and never reads ``test``; the metadata encoder is fitted
on the training rows. Modes (``train.mode``, :mod:`lesionlab.train.plans`): ``scratch`` (random initialisation),
``finetune`` (pretrained; ``train.unfreeze_after = N`` trains the head alone for N epochs) and ``frozen`` (the
head trains on cached backbone embeddings). Each epoch writes ``history.csv``/``history.json`` and ``last.ckpt``;
each new best ``train.monitor`` writes ``model.safetensors`` + ``run.json``. Calling :func:`fit` again on a run
directory holding ``last.ckpt`` resumes, and ends exactly as an uninterrupted run would on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.config import RunConfig, computation_dict, dump_config
from lesionlab.core.io import atomic_write_text, sweep_stale_temporaries
from lesionlab.data.corruptions import parse_corruptions
from lesionlab.models import apply_head_preset
from lesionlab.runs import CONFIG_FILE, INFO_FILE, RunError, read_info
from lesionlab.train import distributed as dist_utils
from lesionlab.train import handlers as H
from lesionlab.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lesionlab.train.distill import DistillLoss, check_distillation, teacher_targets
from lesionlab.train.ensemble import fit_seed_ensemble
from lesionlab.train.loop import (
    Precision,
    epoch_seed,
    predict,
    resolve_device,
    seed_everything,
    train_one_epoch,
    unwrap,
)
from lesionlab.train.mixing import BatchMixer
from lesionlab.train.pieces import (
    EarlyStopping,
    TrainError,
    check_monitor,
    class_counts,
    make_ema,
    make_loss,
    make_optimizer,
    make_sampler,
    make_scheduler,
    monitor_mode,
    selection_metrics,
)
from lesionlab.train.plans import (
    Plan,
    PreparedData,
    build_model,
    effective_model_config,
    image_dataset,
    make_loader,
    plan_frozen,
    plan_images,
    prepare_data,
    preprocessing_for,
    source_image_size,  # noqa: F401  (re-exported: its former home)
)
from lesionlab.train.precision import choose_precision

log = logging.getLogger(__name__)

MIX_STREAM = 1  # the batch mixer's own seed stream beside (seed, epoch, rank): its draws leave the others unchanged

EpochCallback = H.EpochCallback


# --------------------------------------------------------------------------------------------- run directory


def default_run_dir(cfg: RunConfig) -> Path:
    """``<output_dir>/<name>``: the same command always writes (and resumes) the same directory."""
    return Path(cfg.output_dir) / cfg.name


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


RESOLVED_ONCE = ("channels_last", "bf16")  # train settings whose 'auto' is resolved at the start and saved


def _adopt_resolved(saved: dict[str, Any], requested: dict[str, Any]) -> dict[str, Any]:
    """``requested`` with its ``auto`` precision settings replaced by what the saved run resolved them to."""
    train, done = requested.get("train") or {}, saved.get("train") or {}
    for key in RESOLVED_ONCE:
        if train.get(key) == "auto" and done.get(key) in ("on", "off"):
            train[key] = done[key]
    return requested


def resolve_precision_config(cfg: RunConfig, precision: Precision) -> RunConfig:
    """The config with ``train.channels_last`` / ``train.bf16`` ``auto`` replaced by the decision, so the saved
    config says how the run computed (and a resume or a repeat computes the same, whatever the machine's load)."""
    update = {}
    if cfg.train.channels_last == "auto":
        update["channels_last"] = "on" if precision.channels_last else "off"
    if cfg.train.bf16 == "auto" and precision.device.type == "cpu":
        update["bf16"] = "on" if precision.dtype == torch.bfloat16 else "off"
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)}) if update else cfg


def check_run_dir(run_dir: Path, cfg: RunConfig, resume: bool | None) -> str:
    """What to do with ``run_dir``: ``"fresh"``, ``"resume"`` or ``"complete"`` (raises on a conflicting config).

    ``resume=True`` requires a checkpoint or a complete run; ``resume=False`` refuses a non-empty directory;
    ``None`` (the default) resumes when there is something to resume and starts fresh otherwise. Settings that do
    not change what a run computes (:data:`lesionlab.config.EXECUTION_ONLY`) may differ.
    """
    ckpt = run_dir / CHECKPOINT_FILE
    info_path = run_dir / INFO_FILE
    has_ckpt = ckpt.is_file()
    complete = False
    if info_path.is_file():
        info = read_info(run_dir)
        complete = info.get("status") == "complete"
        saved = computation_dict(info.get("config", {}))
        diff = _config_diff(saved, _adopt_resolved(saved, computation_dict(cfg)))
        if diff and (has_ckpt or complete) and resume is not False:
            raise RunError(f"{info_path}: run directory holds a run with a different config ({'; '.join(diff[:6])}); "
                           "choose another run directory (or train.name) or delete the directory")
    if resume is False and (has_ckpt or info_path.is_file()):
        raise RunError(f"{run_dir}: already holds a run; resume it (--resume), or choose another run directory")
    if complete and not has_ckpt:
        return "complete"
    if has_ckpt:
        return "resume"
    if resume:
        raise RunError(f"{ckpt}: nothing to resume (no checkpoint in {run_dir})")
    return "fresh"


def _check_settings(cfg: RunConfig, ctx: dist_utils.DistContext) -> None:
    tc = cfg.train
    if ctx.world_size > 1 and tc.sampler != "none":
        raise TrainError("train.sampler=balanced is not supported with DDP; use train.class_weights instead")
    if tc.mode != "finetune" and tc.unfreeze_after is not None:
        raise TrainError(f"train.unfreeze_after only applies to train.mode=finetune (mode is {tc.mode!r})")
    if tc.mode == "frozen" and tc.embed_cache_views < 0:
        raise TrainError("train.embed_cache_views must be >= 0")
    if tc.mode == "frozen" and BatchMixer.from_config(cfg.augment) is not None:
        raise TrainError("augment.mixup / augment.cutmix mix image batches; they apply to train.mode finetune or "
                         "scratch, not to a frozen backbone's cached embeddings")
    if tc.ema_decay is not None and tc.mode == "frozen":
        raise TrainError("train.ema_decay averages the weights of the whole network; it applies to train.mode "
                         "finetune or scratch (a frozen backbone's head trains in seconds, without it)")
    h, w = cfg.data.image_size
    if tc.tta and tc.tta_views == "dihedral" and h != w:
        raise TrainError(f"train.tta_views=dihedral needs a square data.image_size, got {h}x{w}: quarter turns would "
                         "change the shape; use train.tta_views=flips")


# ---------------------------------------------------------------------------------------------------- precision


def _decide_precision(cfg: RunConfig, device: torch.device, model: torch.nn.Module, data: PreparedData,
                      pre: Any, ckpt: dict[str, Any] | None) -> tuple[Precision, dict[str, Any]]:
    """How image training computes, decided once (saved in the checkpoint so a resume computes identically; under
    DDP rank 0's decision is used by every rank)."""
    tc = cfg.train
    images_train = tc.mode != "frozen" or (cfg.augment.enabled and tc.embed_cache_views == 0)
    if ckpt is not None:
        report = ckpt["precision"]
    else:
        def sample() -> tuple[torch.Tensor, torch.Tensor | None]:
            ds = image_dataset(data, data.val_rows[: min(len(data.val_rows), tc.batch_size)], pre.normalize)
            batch = next(iter(make_loader(ds, tc.batch_size, num_workers=0)))
            return batch["image"], batch.get("meta")

        precision, report = choose_precision(tc, device, model, sample, images=images_train)
        report = {**report, "bf16": precision.dtype == torch.bfloat16, "channels_last": precision.channels_last,
                  "grouped_conv_fp32": precision.grouped_conv_fp32}
        report = dist_utils.all_gather_object(report)[0]
    if device.type == "cuda":
        precision, _ = choose_precision(tc, device, images=images_train)
    else:
        # checkpoints from before grouped_conv_fp32 existed ran depthwise convolutions in bf16: resume the same way
        precision = Precision(device, torch.bfloat16 if report.get("bf16") else None, bool(report.get("channels_last")),
                              grouped_conv_fp32=bool(report.get("grouped_conv_fp32", False)))
    return precision, report


def _restore(run_dir: Path, restore: Callable[[], Any]) -> None:
    """Apply a part of the checkpoint; a state that does not fit this run is an error naming the file."""
    try:
        restore()
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"{run_dir / CHECKPOINT_FILE}: the checkpoint does not fit this run ({type(err).__name__}: "
                       f"{first}); delete it to start the run over") from None


# ------------------------------------------------------------------------------------------------------- the loop


def _validate(plan: Plan, cfg: RunConfig, precision: Precision, ctx: dist_utils.DistContext, progress: bool,
              model: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validation probabilities for every val row (sharded over DDP ranks and gathered in order) of ``model``
    (default: the plan's evaluation module)."""
    n = len(plan.val_set)
    idx = np.arange(ctx.rank, n, ctx.world_size)
    ds = torch.utils.data.Subset(plan.val_set, idx.tolist()) if ctx.world_size > 1 else plan.val_set
    loader = make_loader(ds, cfg.train.eval_batch_size, num_workers=cfg.train.num_workers)
    proba, labels = predict(unwrap(model or plan.eval_module), loader, precision=precision, tta=cfg.train.tta,
                            views=cfg.train.tta_views, progress=progress and ctx.is_main, desc="val")
    if ctx.world_size > 1:
        parts = dist_utils.all_gather_object((idx, proba, labels))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        proba, labels = np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]
    return proba, labels


def _train_and_validate(state: H.TrainState, loader: torch.utils.data.DataLoader, loss_fn: torch.nn.Module,
                        generator: torch.Generator, progress: bool, mixer: BatchMixer | None = None) -> None:
    """One epoch: reseed from (seed, epoch), train, validate; fills ``state.metrics`` and ``state.row``."""
    tc, ctx, plan, epoch = state.cfg.train, state.ctx, state.plan, state.epoch
    # Every epoch reseeds from (seed, epoch): a resumed run draws the same shuffles and augmentations.
    seed_everything(epoch_seed(tc.seed, epoch, ctx.rank))
    generator.manual_seed(epoch_seed(tc.seed, epoch))
    for part in (loader.sampler, plan.train_set):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
    plan.module.train()  # LesionModel.train keeps a frozen backbone (and frozen BatchNorm) in eval mode
    t0 = time.perf_counter()
    # the mixer's own stream from (seed, epoch, rank): mixing leaves the other draws unchanged
    mix = partial(mixer, rng=np.random.default_rng([tc.seed, epoch, ctx.rank, MIX_STREAM])) if mixer else None
    stats = train_one_epoch(state.module, loader, loss_fn, state.optimizer, precision=state.precision,
                            scheduler=state.scheduler, grad_clip=tc.grad_clip, max_batches=tc.max_train_batches,
                            progress=progress, desc=f"epoch {epoch + 1}/{tc.epochs}",
                            on_step=(lambda: state.ema.update_parameters(state.model)) if state.ema else None,
                            mix=mix)
    if ctx.world_size > 1:
        stats["loss"] = dist_utils.mean_across(stats["loss"])
    proba, val_labels = _validate(plan, state.cfg, state.precision, ctx, progress,
                                  state.ema.module if state.ema is not None else None)
    state.metrics = selection_metrics(val_labels, proba)
    state.row = {"epoch": epoch, "train_loss": stats["loss"], "train_steps": stats["steps"],
                 "train_samples": stats["samples"] * ctx.world_size,
                 "train_grad_norm": stats["grad_norm"], "train_clipped": stats["clipped"],
                 **{f"val_{k}": v for k, v in state.metrics.items()},
                 "lr": max(g["lr"] for g in state.optimizer.param_groups),  # the head's rate under train.layer_decay
                 "seconds": time.perf_counter() - t0, "train_images_per_s": stats["images_per_s"] * ctx.world_size,
                 "backbone_frozen": state.backbone_frozen}
    state.history.append(state.row)


def run_epochs(state: H.TrainState, handlers: Sequence[H.Handler], step: Callable[[H.TrainState], None]) -> None:
    """The loop: epochs from ``state.start_epoch`` until ``train.epochs`` or early stopping, handlers around
    each ``step`` (see :mod:`lesionlab.train.handlers`)."""
    for epoch in range(state.start_epoch, state.cfg.train.epochs):
        if state.stopper.should_stop:
            state.stopped_early = True
            break
        state.epoch = epoch
        for handler in handlers:
            handler.epoch_started(state)
        step(state)
        for handler in handlers:
            handler.epoch_completed(state)
        dist_utils.barrier()
    else:
        state.stopped_early = state.stopper.should_stop
    for handler in handlers:
        handler.completed(state)
    dist_utils.barrier()


# -------------------------------------------------------------------------------------------------------- fit


def fit(cfg: RunConfig, *, run_dir: str | Path | None = None, resume: bool | None = None, progress: bool = True,
        callbacks: Sequence[EpochCallback] = ()) -> Path:
    """Train one run and return its directory (see the module docstring).

    ``resume``: ``None`` continues from ``last.ckpt`` when present, ``True`` requires it, ``False`` refuses a used
    directory. With ``train.ensemble_seeds`` the config is trained once per seed (see
    :func:`lesionlab.train.ensemble.fit_seed_ensemble`) and the returned directory holds their ensemble.
    ``callbacks`` are called as ``cb(epoch, row)`` after each epoch's checkpoint is written (on rank 0).
    Under ``torchrun`` (``WORLD_SIZE > 1``) this trains with DistributedDataParallel and only rank 0 writes.
    """
    # The saved config is the resolved one: preset head and class weights spelled out, scratch without weights.
    cfg = apply_head_preset(cfg)
    cfg = cfg.model_copy(update={"model": effective_model_config(cfg)})
    check_monitor(cfg.train.monitor)
    if cfg.augment.enabled and cfg.augment.corruptions:  # a misspelt corruption fails now, not after data loading
        parse_corruptions(cfg.augment.corruptions)
    check_distillation(cfg, cfg.train.distill_from)
    if cfg.train.ensemble_seeds:
        return fit_seed_ensemble(cfg, Path(run_dir) if run_dir else default_run_dir(cfg), resume, progress, callbacks,
                                 fit_member=fit, check_run_dir=check_run_dir)
    ctx = dist_utils.setup(cfg.train.device)
    try:
        return _fit(cfg, ctx, Path(run_dir) if run_dir else default_run_dir(cfg), resume, progress, callbacks)
    finally:
        dist_utils.teardown(ctx)


def _fit(cfg: RunConfig, ctx: dist_utils.DistContext, run_dir: Path, resume: bool | None, progress: bool,
         callbacks: Sequence[EpochCallback]) -> Path:
    """Prepare everything the loop needs, in the order that makes a resumed run end as an uninterrupted one."""
    tc = cfg.train
    what = check_run_dir(run_dir, cfg, resume)
    if ctx.is_main and run_dir.is_dir():  # one trainer per run directory: its temporaries were left by a kill
        for tmp in sweep_stale_temporaries(run_dir, older_than_s=0):
            log.warning("removed %s, left by a training process that was killed mid-write", tmp)
    if what == "complete":
        log.info("%s already holds a complete run; nothing to do", run_dir)
        return run_dir
    _check_settings(cfg, ctx)
    progress = progress and ctx.is_main
    device = ctx.device if ctx.device is not None else resolve_device(tc.device)
    seed_everything(tc.seed)
    data = prepare_data(cfg, progress)
    model = build_model(cfg, int(data.meta.shape[1]) if data.meta is not None else 0).to(device)
    pre = preprocessing_for(cfg, model, data.source_size)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE) if what == "resume" else None
    if ckpt is not None:
        _restore(run_dir, lambda: model.load_state_dict(ckpt["model"]))
    precision, prec_report = _decide_precision(cfg, device, model, data, pre, ckpt)
    cfg = resolve_precision_config(cfg, precision)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = make_ema(model, tc.ema_decay)
    if tc.mode == "frozen":
        plan = plan_frozen(cfg, model, data, pre, replace(precision, scaler=None), progress, ctx.is_main)
        head_precision = precision if plan.images else Precision(device)  # a head on embeddings: float32
    else:
        soft, distill_info = teacher_targets(cfg, data, device, progress) if tc.distill_from else (None, None)
        plan, head_precision = plan_images(cfg, model, data, pre, soft), precision
    generator = torch.Generator()
    labels = data.train_labels
    sampler = (torch.utils.data.distributed.DistributedSampler(plan.train_set, num_replicas=ctx.world_size,
                                                               rank=ctx.rank, shuffle=True, seed=tc.seed,
                                                               drop_last=True)
               if ctx.world_size > 1 else make_sampler(tc, labels, generator=generator))
    loader = make_loader(plan.train_set, tc.batch_size, num_workers=tc.num_workers, sampler=sampler, shuffle=True,
                         generator=generator, drop_last=len(plan.train_set) // ctx.world_size > tc.batch_size)
    steps = len(loader) if tc.max_train_batches is None else min(len(loader), tc.max_train_batches)
    optimizer = make_optimizer(tc, model)
    split = {"name": str(cfg.data.split), "hash": data.split_hash}
    if data.source.split_name:  # what the source actually used, e.g. 'npz': the file's own splits
        split["source"] = str(data.source.split_name)
    state = H.TrainState(
        cfg=cfg, run_dir=run_dir, model=model, plan=plan, pre=pre, data=data, optimizer=optimizer,
        scheduler=make_scheduler(tc, optimizer, steps), precision=head_precision, ctx=ctx,
        stopper=EarlyStopping(mode=monitor_mode(tc.monitor), patience=tc.patience, min_delta=tc.min_delta), ema=ema,
        run_info={"data": data.info, "status": "training", "split": split,
                  "training": {"mode": tc.mode, "precision": prec_report, "world_size": ctx.world_size,
                               "embeddings": plan.embedding_info,
                               **({"distillation": distill_info} if tc.distill_from else {})}})
    if ckpt is not None:
        _restore(run_dir, lambda: H.Checkpoint.restore(state, ckpt))
        log.info("resuming %s after epoch %d", run_dir, state.start_epoch)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    loss_fn = make_loss(tc, class_counts(labels))
    if tc.distill_from:
        loss_fn = DistillLoss(loss_fn, tc.distill_weight, tc.distill_temperature)
    handlers = [H.Unfreezing(), H.DataParallel(), H.Stopping(), H.BestRun(), H.History(), H.Checkpoint(),
                H.Progress(state, progress), H.Callbacks(callbacks)]
    mixer = BatchMixer.from_config(cfg.augment)
    run_epochs(state, handlers, lambda s: _train_and_validate(s, loader, loss_fn, generator, progress, mixer))
    return run_dir
