"""Training benchmarks recorded in docs/BENCHMARKS.md, each measured in one process on the same model and data.

``frozen``: a frozen backbone with a trainable head. Time per training epoch when the head trains on the cached
embeddings, against running the frozen backbone on every image every epoch (what a Keras model with
``trainable = False`` layers does). The one-off cost of building the cache is reported beside them.

``throughput``: fine-tuning images/s of the engine's input path (decode-once uint8 cache, per-sample augmentation,
the precision settings of the config, the fused optimizer) against a plain loop that opens and decodes each JPEG
every epoch and trains in float32 with the default memory format and optimizer implementation - same network, same
initial weights, same augmentation (flips). The plain loop runs with PyTorch's default ``num_workers=0`` and, when
the config uses workers, again with as many.
The sides alternate over a few rounds; the speed-up is the median of the rounds' ratios (a shared machine's slow
spells move single figures by 20% and more).

``precision``: fine-tuning images/s of the engine's training step on the same data and initial weights in float32,
float32 channels-last, and bf16 autocast on channels-last (depthwise convolutions in float32, as ``train.bf16=on``
computes where the CPU has native bf16), alternating over a few rounds. It says whether this CPU has native bf16:
without it, bf16 is emulated, and the engine trains in float32 whatever the config asks
(:mod:`lesionlab.train.precision`); the benchmark shows why.

Run alone on the machine (``flock -x /tmp/lesionlab-cpu.lock`` on a shared one)::

    lesionlab train-bench frozen --config configs/frozen-simple-64.yaml
    lesionlab train-bench throughput --config configs/cpu-lite0-64.yaml data.image_size=64
    lesionlab train-bench precision --config configs/cpu-lite0-64-robust.yaml

The data and model are prepared with the engine's own public functions (:mod:`lesionlab.train.plans`), so both
sides measure what training does.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lesionlab.config import RunConfig
from lesionlab.data.transforms import build_train_transform
from lesionlab.train.embeddings import FeatureDataset, HeadOnly, compute_embeddings
from lesionlab.train.loop import Precision, seed_everything, train_one_epoch
from lesionlab.train.pieces import class_counts, make_loss, make_optimizer
from lesionlab.train.plans import build_model, image_dataset, make_loader, prepare_data, preprocessing_for
from lesionlab.train.precision import choose_precision, cpu_has_native_bf16


def _environment() -> dict[str, Any]:
    import platform

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine()}


def bench_frozen(cfg: RunConfig, epochs: int = 5, keras_epochs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Seconds per head-training epoch: cached embeddings vs the frozen backbone on every image (see module doc)."""
    tc = cfg.train
    seed_everything(tc.seed)
    data = prepare_data(cfg, progress)
    model = build_model(cfg.model_copy(update={"train": tc.model_copy(update={"mode": "frozen"})}),
                        int(data.meta.shape[1]) if data.meta is not None else 0)
    pre = preprocessing_for(cfg, model, data.source_size)
    precision = Precision(torch.device("cpu"))
    labels = data.train_labels
    loss_fn = make_loss(tc, class_counts(labels))
    images = image_dataset(data, data.train_rows, pre.normalize)

    start = time.perf_counter()
    feats = compute_embeddings(model, make_loader(images, tc.eval_batch_size, num_workers=tc.num_workers),
                               precision=precision, progress=progress, desc="embed train")
    build_s = time.perf_counter() - start

    meta = torch.as_tensor(data.meta[data.train_rows]) if data.meta is not None else None
    features = FeatureDataset(feats, labels, meta, pick_view=True)
    head = HeadOnly(model)
    init = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(tc, model)
    g = torch.Generator().manual_seed(tc.seed)
    cached = []
    for e in range(epochs):
        head.train()
        stats = train_one_epoch(head, make_loader(features, tc.batch_size, shuffle=True, generator=g, num_workers=0),
                                loss_fn, optimizer, precision=precision, progress=progress,
                                desc=f"cached epoch {e + 1}")
        cached.append(stats["seconds"])

    model.load_state_dict(init)  # same starting head for the Keras-style epochs
    optimizer = make_optimizer(tc, model)
    keras = []
    for e in range(keras_epochs):
        model.train()  # the frozen backbone stays in eval mode (LesionModel.train)
        stats = train_one_epoch(model, make_loader(images, tc.batch_size, shuffle=True, generator=g,
                                               num_workers=tc.num_workers),
                                loss_fn, optimizer, precision=precision, progress=progress,
                                desc=f"backbone-every-epoch epoch {e + 1}")
        keras.append(stats["seconds"])
    cached_s = float(np.median(cached))
    keras_s = float(np.median(keras))
    return {"benchmark": "frozen", "model": cfg.model.name, "head": cfg.model.head,
            "input_size": list(cfg.data.image_size), "train_images": len(labels), "batch_size": tc.batch_size,
            "feature_shape": list(feats.shape[2:]), "cache_build_s": build_s, "cached_epoch_s": cached_s,
            "cached_epochs_s": cached, "backbone_epoch_s": keras_s, "backbone_epochs_s": keras,
            "speedup": keras_s / cached_s, "breakeven_epochs": build_s / max(keras_s - cached_s, 1e-9),
            **_environment()}


class PlainJPEGDataset(torch.utils.data.Dataset):
    """The plain baseline: open and decode the JPEG every time, flip, scale and normalise (torchvision v2)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: tuple[int, int], mean: tuple, std: tuple,
                 hflip: bool, vflip: bool) -> None:
        from torchvision.transforms import v2

        self.paths = paths
        self.labels = labels
        steps: list[Any] = [v2.ToImage()]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if vflip:
            steps.append(v2.RandomVerticalFlip())
        steps += [v2.Resize(list(size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                  v2.Normalize(list(mean), list(std))]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with Image.open(self.paths[i]) as img:
            x = self.transform(img.convert("RGB"))
        return {"image": x, "label": int(self.labels[i])}


def _data_rate(loader: Any, batches: int) -> float:
    """Images/s of a loader alone (no model): the input pipeline's own ceiling."""
    n = 0
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def _train_rate(model: nn.Module, loader: Any, tc: Any, counts: np.ndarray, precision: Precision, batches: int,
                warmup: int, progress: bool, desc: str, plain: bool = False) -> float:
    """Training images/s over ``batches`` batches after ``warmup`` untimed ones (``plain``: PyTorch's default
    optimizer implementation, as a plain script gets it, instead of the engine's fused one)."""
    loss_fn = make_loss(tc, counts)
    optimizer = make_optimizer(tc, model, fused=False if plain else None)
    model.train()
    train_one_epoch(model, loader, loss_fn, optimizer, precision=precision, max_batches=warmup, progress=False)
    stats = train_one_epoch(model, loader, loss_fn, optimizer, precision=precision, max_batches=batches,
                            progress=progress, desc=desc)
    return float(stats["images_per_s"])


def bench_throughput(cfg: RunConfig, batches: int = 30, warmup: int = 3, progress: bool = True,
                     rounds: int = 3) -> dict[str, Any]:
    """Fine-tuning images/s: the engine's input path and precision vs a plain JPEG-decoding float32 loop.

    The sides alternate for ``rounds`` rounds (plain, [plain with workers,] engine); ``speedup`` is the median of the
    rounds' ratios, each from two back-to-back measurements, so one slow spell of a shared machine cannot decide it.
    """
    tc = cfg.train
    seed_everything(tc.seed)
    data = prepare_data(cfg, progress)
    device = torch.device("cpu")
    model = build_model(cfg, 0)
    init = copy.deepcopy(model.state_dict())
    pre = preprocessing_for(cfg, model, data.source_size)
    counts = class_counts(data.train_labels)
    g = torch.Generator().manual_seed(tc.seed)

    paths = [Path(data.source.images.paths[i]) for i in data.train_rows]
    plain_ds = PlainJPEGDataset(paths, data.train_labels, tuple(cfg.data.image_size), pre.mean, pre.std,
                                cfg.augment.hflip, cfg.augment.vflip)
    # The plain loop as PyTorch's defaults give it (no worker processes), and with the engine's worker count.
    plain_loader = make_loader(plain_ds, tc.batch_size, shuffle=True, generator=g, num_workers=0, drop_last=True)
    plain_w_loader = make_loader(plain_ds, tc.batch_size, shuffle=True, generator=g, num_workers=tc.num_workers,
                             drop_last=True)
    ours_ds = image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), tc.seed)
    ours_loader = make_loader(ours_ds, tc.batch_size, shuffle=True, generator=g, num_workers=tc.num_workers,
                          drop_last=True)

    def sample() -> tuple[torch.Tensor, None]:
        return next(iter(ours_loader))["image"], None

    precision, report = choose_precision(tc, device, model, sample)
    plain_data = _data_rate(plain_loader, batches)
    ours_data = _data_rate(ours_loader, batches)

    plain_model = copy.deepcopy(model)
    plain_w_model = copy.deepcopy(model) if tc.num_workers else None
    model.load_state_dict(init)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plain, plain_w, ours = [], [], []
    for r in range(rounds):
        tag = f" (round {r + 1}/{rounds})"
        plain.append(_train_rate(plain_model, plain_loader, tc, counts, Precision(device), batches, warmup, progress,
                                 "plain JPEG loop" + tag, plain=True))
        if plain_w_model is not None:
            plain_w.append(_train_rate(plain_w_model, plain_w_loader, tc, counts, Precision(device), batches, warmup,
                                       progress, f"plain JPEG loop, {tc.num_workers} worker(s)" + tag, plain=True))
        ours.append(_train_rate(model, ours_loader, tc, counts, precision, batches, warmup, progress,
                                "lesionlab engine" + tag))
    plain_med, ours_med = float(np.median(plain)), float(np.median(ours))
    plain_w_med = float(np.median(plain_w)) if plain_w else plain_med
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    ratios_w = [o / p for o, p in zip(ours, plain_w or plain, strict=True)]
    return {"benchmark": "throughput", "model": cfg.model.name, "input_size": list(cfg.data.image_size),
            "batch_size": tc.batch_size, "batches": batches, "rounds": rounds, "num_workers": tc.num_workers,
            "plain_images_per_s": plain_med, "plain_with_workers_images_per_s": plain_w_med,
            "engine_images_per_s": ours_med, "speedup": float(np.median(ratios)),
            "speedup_vs_plain_with_workers": float(np.median(ratios_w)),
            "per_round": {"plain": plain, "plain_with_workers": plain_w or plain, "engine": ours, "speedup": ratios},
            "plain_data_only_images_per_s": plain_data, "engine_data_only_images_per_s": ours_data,
            "engine_precision": precision.describe(), "precision_check": report, **_environment()}


PRECISIONS = {"float32": (None, False), "float32_channels_last": (None, True),
              "bf16_channels_last": (torch.bfloat16, True)}


def bench_precision(cfg: RunConfig, batches: int = 10, warmup: int = 2, progress: bool = True,
                    rounds: int = 3) -> dict[str, Any]:
    """Fine-tuning images/s of the engine's step under each of :data:`PRECISIONS`, on the config's data, model and
    augmentation, every side from the same initial weights; the sides alternate for ``rounds`` rounds and each
    figure is the median over the rounds. bf16 is measured even where the CPU emulates it (that is the question)."""
    tc = cfg.train
    seed_everything(tc.seed)
    data = prepare_data(cfg, progress)
    device = torch.device("cpu")
    model = build_model(cfg, int(data.meta.shape[1]) if data.meta is not None else 0)
    pre = preprocessing_for(cfg, model, data.source_size)
    counts = class_counts(data.train_labels)
    dataset = image_dataset(data, data.train_rows, build_train_transform(cfg.augment, pre), tc.seed)
    loader = make_loader(dataset, tc.batch_size, shuffle=True, generator=torch.Generator().manual_seed(tc.seed),
                         num_workers=tc.num_workers, drop_last=True)
    models = {name: copy.deepcopy(model).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
              for name, (_, cl) in PRECISIONS.items()}
    rates: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for r in range(rounds):
        for name, (dtype, cl) in PRECISIONS.items():
            rates[name].append(_train_rate(models[name], loader, tc, counts, Precision(device, dtype, cl), batches,
                                           warmup, progress, f"{name} (round {r + 1}/{rounds})"))
    medians = {name: float(np.median(v)) for name, v in rates.items()}
    base = medians["float32"]
    return {"benchmark": "precision", "model": cfg.model.name, "input_size": list(cfg.data.image_size),
            "batch_size": tc.batch_size, "batches": batches, "rounds": rounds, "native_bf16": cpu_has_native_bf16(),
            "images_per_s": medians, "per_round": rates,
            "relative_to_float32": {name: v / base for name, v in medians.items()},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), **_environment()}
