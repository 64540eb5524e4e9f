"""Knowledge distillation: one fast student learns from the soft predictions of teacher runs (an ensemble).

``train.distill_from`` names teacher run directories. Before training, each teacher scores the student's training
images (clean, through the teacher's own preprocessing and test-time views, as it would be served); their
probabilities at temperature ``T`` (``train.distill_temperature``), averaged over the teachers, are the soft
targets. The student then sees its usual augmented views and minimises

    ``(1 - w) * CE(student, label) + w * T^2 * KL(soft target || softmax(student / T))``

(Hinton, Vinyals & Dean 2015), ``w`` = ``train.distill_weight``; the hard part keeps the run's class weights and
label smoothing. Teachers must have been trained on the student's split (same split hash): a teacher that saw
the student's validation or test images would leak them into its soft targets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lesionlab.classes import CLASS_CODES
from lesionlab.config import RunConfig
from lesionlab.core.io import file_sha256
from lesionlab.data.cache import cached_images
from lesionlab.runs import WEIGHTS_FILE, load_run
from lesionlab.train.pieces import TrainError
from lesionlab.train.plans import PreparedData

META_FIELDS = ("age", "sex", "site")


class DistillLoss(nn.Module):
    """The distillation loss above around the run's own ``base`` loss (used alone for batches without targets)."""

    def __init__(self, base: nn.Module, weight: float, temperature: float) -> None:
        super().__init__()
        self.base, self.weight, self.temperature = base, float(weight), float(temperature)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        hard = self.base(logits, labels)
        if soft is None or self.weight == 0.0:
            return hard
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * t * t
        return (1.0 - self.weight) * hard + self.weight * kl


def _teacher_logits(teacher: Path, data: PreparedData, rows: np.ndarray, device: torch.device, batch_size: int,
                    progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    run = load_run(teacher, device=device)
    where = f"train.distill_from: {teacher}"
    if tuple(run.classes) != CLASS_CODES:
        raise TrainError(f"{where}: the teacher's classes {list(run.classes)} differ from {list(CLASS_CODES)}")
    teacher_split = (run.info.get("split") or {}).get("hash")
    if teacher_split != data.split_hash:
        raise TrainError(f"{where}: trained on split {teacher_split}, the student trains on {data.split_hash}; a "
                         "teacher must share the student's split, or it leaks validation or test images into the "
                         "soft targets")
    pre = run.preprocessing
    if pre is None:
        raise TrainError(f"{where}: run.json has no preprocessing")
    images = cached_images(data.source, pre.size, pre.resize, cache_dir=data.source.cache_dir, progress=progress,
                           source_size=pre.source_size)
    metas = data.table[list(META_FIELDS)].iloc[rows].to_dict("records") if run.meta_encoder is not None else None
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"teacher {teacher.name}", unit="batch",
                      disable=not progress, leave=False):
        part = rows[start:start + batch_size]
        out.append(run.predict_logits(np.asarray(images[part]), metas[start:start + batch_size] if metas else None,
                                      batch_size=batch_size))
    weights = teacher / WEIGHTS_FILE
    info = {"run": str(teacher), "weights_sha256": file_sha256(weights)[:12], "tta": run.tta,
            "tta_views": run.tta_views if run.tta else None}
    return np.concatenate(out), info


def teacher_targets(cfg: RunConfig, data: PreparedData, device: torch.device, progress: bool = True
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The soft targets ``[len(train_rows), K]`` of ``train.distill_from`` and what made them (for run.json)."""
    tc = cfg.train
    start = time.perf_counter()
    probs, teachers = [], []
    for name in tc.distill_from:
        path = Path(name)
        logits, info = _teacher_logits(path, data, data.train_rows, device, tc.eval_batch_size, progress)
        probs.append(torch.softmax(torch.as_tensor(logits, dtype=torch.float32) / tc.distill_temperature, dim=1))
        teachers.append(info)
    soft = torch.stack(probs).mean(dim=0)
    agreement = float((soft.argmax(1).numpy() == data.train_labels).mean())
    return soft, {"teachers": teachers, "weight": tc.distill_weight, "temperature": tc.distill_temperature,
                  "train_accuracy_of_targets": agreement, "seconds": round(time.perf_counter() - start, 1)}


def check_distillation(cfg: RunConfig, teachers: Sequence[str]) -> None:
    """Settings distillation cannot use, before any data is read."""
    if not teachers:
        return
    if cfg.train.mode == "frozen":
        raise TrainError("train.distill_from needs a trained image model (train.mode finetune or scratch); a frozen "
                         "head on cached embeddings has no per-image soft targets")
    missing = [t for t in teachers if not (Path(t) / WEIGHTS_FILE).is_file()]
    if missing:
        raise TrainError(f"train.distill_from: no trained run at {', '.join(missing)} (expected {WEIGHTS_FILE})")
