"""Robustness to acquisition corruptions: a run scored on the corrupted test split, every corruption x severity.

``lesionlab evaluate RUN --corruptions all [--severities 1-5]`` scores each cell (one corruption at one severity,
applied to every image of the evaluated split; :mod:`lesionlab.data.corruptions`, after MedMNIST-C, Di Salvo et al.
2024) and writes, beside the clean evaluation:

* ``robustness.json`` (also the ``robustness`` block of metrics.json) and ``corruptions.csv`` (one row per cell);
* ``corruption_gallery.png``: one image of the split under every corruption and severity;
* ``corruption_cache/``: the logits of every cell, keyed by weights, preprocessing, images, seed and the corruption
  definitions, so an interrupted or repeated evaluation scores only what is missing (and, for a run whose
  safety checks were fitted, each image's gate score, degradation verdicts and pixel-quality verdict, keyed also by
  the checks).

The safety layer under corruption
    A run fitted with ``--calibrate`` answers "cannot assess" (out of scope, failed image quality or degraded) or
    "uncertain" rather than a class where it should not judge (:func:`lesionlab.core.scope.assessment_state`, the
    service's rule). Each cell then also reports how often each state occurs, the accuracy and balanced accuracy of
    the images still assessed, the share of all images that are assessed and wrong (*confident errors*) and the
    share of melanomas assessed as something else: whether the safety layer takes over where the corruption breaks
    the model. The block ``safety`` holds the clean figures, the mean over cells and the mean per corruption; its
    ``held_out`` part, the same with each corruption judged by the degradation check fitted without that
    corruption's training copies (the check is trained on these very corruptions, so this is the figure for a
    degradation it never saw).

The figures (MedMNIST-C's, for a multi-class task)
    balanced error ``BE = 1 - balanced accuracy`` (arg-max decisions) per cell; per corruption the mean over the
    severities scored; the clean ``BE`` from the same images, path and settings.
    ``relative drop`` of a corruption = ``(BA_clean - mean BA_corrupted) / BA_clean``; the headline robustness
    number is its mean over the corruptions scored (lower is better; 0 means unaffected).
    Normalised against a reference run R: ``nBE = mean_c BE_c / BE_c(R)`` (MedMNIST-C's BE) and
    ``nRBE = sum_c (BE_c - BE_clean) / sum_c (BE_c(R) - BE_clean(R))`` (MedMNIST-C's relative BE as a ratio of the
    summed drops, which stays defined when R is unaffected by one corruption; the per-corruption ratio is given
    where R's drop is at least 0.01). 1.0 means as robust as R, 0.5 means half R's drop.

The reference run
    MedMNIST-C normalises by an AlexNet that cannot be downloaded here. lesionlab normalises by its own best CPU
    preset, ``configs/cpu-lite0-64-clinical.yaml`` (seed 0, ../shared/data, DermaMNIST-C split): anyone with the
    shared data can retrain it in about 15 minutes, it is the model the project ships, and robustness work is
    judged against it (the goal "halve the drop of today's preset" is ``nRBE <= 0.5``). Its figures are in
    :mod:`lesionlab.evaluate.robustness_reference`; ``--robustness-reference`` takes any other evaluation's
    ``robustness.json``. Figures are only normalised when the reference was scored on the same split (name and
    size), at the same input size and with the same corruption definitions; otherwise they are left out with the
    reason.

Inference here runs the model in channels-last memory format (about twice as fast on CPU, float32 as before);
the clean images are scored on the same path and compared with the standard path's predictions
(``clean_check``), so a difference would show.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lesionlab.classes import CLASS_CODES
from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import atomic_write, atomic_write_json, file_sha256, read_json
from lesionlab.core.metrics import confusion_matrix, malignant_score, per_class_rates, softmax
from lesionlab.core.scope import (
    DEGRADATION_FILE,
    QUALITY_LIMITS,
    SCOPE_FILE,
    DegradationCheck,
    assessment_state,
    margins,
    quality_flags,
    quality_measures,
)
from lesionlab.data.corruptions import (
    CITATION,
    CORRUPTIONS,
    CORRUPTIONS_VERSION,
    corrupt,
    corruption_seed,
    gallery,
    parse_corruptions,
    parse_severities,
)
from lesionlab.evaluate.robustness_reference import REFERENCE
from lesionlab.runs import WEIGHTS_FILE, Run, features_and_logits, pooled_features, view_averaged_logits

ROBUSTNESS_FILE = "robustness.json"
CELLS_FILE = "corruptions.csv"
GALLERY_FILE = "corruption_gallery.png"
CACHE_DIR = "corruption_cache"
WORST_K = 3
MIN_REFERENCE_DROP = 0.01


class RobustnessError(LesionlabError, ValueError):
    """A corruption evaluation that cannot run, or a reference file that cannot be used; names the file."""


# ------------------------------------------------------------------------------------------- pure scoring


def cell_scores(y: np.ndarray, logits: np.ndarray, classes: Sequence[str] = CLASS_CODES) -> dict[str, Any]:
    """Balanced accuracy / error, accuracy and per-class recall of arg-max decisions (undefined recall: None)."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(logits).argmax(axis=1)
    rates = per_class_rates(confusion_matrix(y, pred, len(classes)))
    tpr = rates["tpr"]
    ba = float(np.nanmean(tpr)) if np.isfinite(tpr).any() else None
    return {"balanced_accuracy": ba, "balanced_error": None if ba is None else 1.0 - ba,
            "accuracy": float(np.mean(pred == y)),
            "recall": {c: (None if not np.isfinite(v) else float(v)) for c, v in zip(classes, tpr, strict=True)}}


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the defined values (``None`` when there is none)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def comparable(block: dict[str, Any], reference: dict[str, Any] | None) -> str | None:
    """Why ``reference`` cannot normalise ``block`` (``None`` when it can)."""
    if reference is None:
        return "no reference run given"
    for key, what in (("corruptions_version", "corruption definitions"), ("split_name", "split"), ("n", "images"),
                      ("image_size", "input size")):
        a, b = block.get(key), reference.get(key)
        if a != b:
            return f"the reference was scored with other {what} ({key} {b!r}, here {a!r})"
    missing = [c for c in block["per_corruption"] if c not in (reference.get("per_corruption") or {})]
    if missing:
        return f"the reference lacks corruptions {missing}"
    severities = reference.get("severities")
    if severities is not None and list(severities) != list(block.get("severities") or []):
        return f"the reference averaged other severities ({severities}, here {block.get('severities')})"
    return None


def summarise(cells: Sequence[dict[str, Any]], clean: dict[str, Any], classes: Sequence[str] = CLASS_CODES,
              reference: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The robustness block from scored cells and the clean scores (pure).

    ``cells``: dicts with ``corruption``, ``severity`` and :func:`cell_scores`' fields. ``context`` (split name,
    image count and size, seed, ...) is copied in and used for the comparability check of ``reference``.
    """
    if not cells:
        raise RobustnessError("no corruption cells to summarise")
    clean_ba = clean.get("balanced_accuracy")
    clean_be = None if clean_ba is None else 1.0 - clean_ba
    names = list(dict.fromkeys(c["corruption"] for c in cells))
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [c for c in cells if c["corruption"] == name]
        mean_ba = mean_or_none([c["balanced_accuracy"] for c in mine])
        mean_be = None if mean_ba is None else 1.0 - mean_ba
        drop = None if mean_ba is None or not clean_ba else (clean_ba - mean_ba) / clean_ba
        per[name] = {"family": CORRUPTIONS[name].family, "mean_balanced_accuracy": mean_ba,
                     "mean_balanced_error": mean_be, "mean_accuracy": mean_or_none([c["accuracy"] for c in mine]),
                     "absolute_drop": None if mean_ba is None or clean_ba is None else clean_ba - mean_ba,
                     "relative_drop": drop,
                     "worst_severity": max(mine, key=lambda c: c["balanced_error"] or 0.0)["severity"]}
    drops = [p["relative_drop"] for p in per.values()]
    block: dict[str, Any] = {
        **(context or {}),
        "clean_balanced_accuracy": clean_ba, "clean_balanced_error": clean_be,
        "clean_accuracy": clean.get("accuracy"),
        "mean_corrupted_balanced_accuracy": mean_or_none([p["mean_balanced_accuracy"] for p in per.values()]),
        "mean_corrupted_accuracy": mean_or_none([p["mean_accuracy"] for p in per.values()]),
        "mean_relative_drop": mean_or_none(drops),
        "worst_corruptions": sorted(names, key=lambda n: -(per[n]["mean_balanced_error"] or 0.0))[:WORST_K],
        "per_corruption": per,
        "clean_recall": clean.get("recall"),
        "cells": [dict(c) for c in cells],
        "n_cells": len(cells),
    }
    block.update(normalise(block, reference))
    return block


def normalise(block: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """``normalised`` figures against ``reference`` (MedMNIST-C's BE and relative BE), or why they are missing."""
    why = comparable(block, reference)
    if why is None and block.get("clean_balanced_error") is None:
        why = "clean balanced error undefined"
    info = {"name": (reference or {}).get("name"), "source": (reference or {}).get("source")}
    if why is not None:
        return {"normalised": {"reference": info, "balanced_error": None, "relative_balanced_error": None,
                               "undefined": why}}
    assert reference is not None
    ref_per = reference["per_corruption"]
    ref_clean = reference["clean_balanced_error"]
    per: dict[str, dict[str, float | None]] = {}
    mine_drop, ref_drop = 0.0, 0.0
    for name, p in block["per_corruption"].items():
        ref_be = ref_per[name]["mean_balanced_error"]
        be = p["mean_balanced_error"]
        drop = be - block["clean_balanced_error"]
        rdrop = ref_be - ref_clean
        mine_drop += drop
        ref_drop += rdrop
        per[name] = {"balanced_error": be / ref_be if ref_be else None,
                     "relative_balanced_error": drop / rdrop if rdrop >= MIN_REFERENCE_DROP else None}
    be_ratios = [v["balanced_error"] for v in per.values() if v["balanced_error"] is not None]
    return {"normalised": {
        "reference": info,
        "balanced_error": float(np.mean(be_ratios)) if be_ratios else None,
        "relative_balanced_error": mine_drop / ref_drop if ref_drop > 0 else None,
        "per_corruption": per,
        "undefined": None if ref_drop > 0 else "the reference's balanced error does not rise under these corruptions",
    }}


def cells_frame(block: dict[str, Any]) -> pd.DataFrame:
    """One row per cell (corruption, severity, balanced accuracy / error, accuracy, recall per class, and the safety
    layer's figures when the run has fitted checks)."""
    rows = []
    for c in block["cells"]:
        rows.append({"corruption": c["corruption"], "family": CORRUPTIONS[c["corruption"]].family,
                     "severity": c["severity"], "balanced_accuracy": c["balanced_accuracy"],
                     "balanced_error": c["balanced_error"], "accuracy": c["accuracy"],
                     **{f"recall_{k}": v for k, v in c["recall"].items()},
                     **{f"safety_{k}": v for k, v in (c.get("safety") or {}).items()},
                     **{f"safety_held_out_{k}": v for k, v in (c.get("safety_held_out") or {}).items()},
                     **{f"safety_without_check_{k}": v for k, v in (c.get("safety_without_check") or {}).items()
                        if k != "degraded"}})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------- the safety layer

SAFETY_FIGURES = ("cannot_assess", "uncertain", "assessed", "assessed_accuracy", "assessed_balanced_accuracy",
                  "confident_errors", "confident_mel_misses", "unreferred_mel_misses", "degraded")


def assessment_states(scope_scores: np.ndarray | None, threshold: float | None, quality_ok: np.ndarray,
                      margin: np.ndarray, uncertainty_threshold: float | None) -> np.ndarray:
    """Each image's state under the run's checks (``None``: that check was not fitted), by the service's rule."""
    n = len(quality_ok)
    in_scope = [None] * n if scope_scores is None else [bool(s <= threshold) for s in scope_scores]
    uncertain = [None] * n if uncertainty_threshold is None else [bool(m < uncertainty_threshold) for m in margin]
    return np.array([assessment_state(i, bool(q), u) for i, q, u in zip(in_scope, quality_ok, uncertain,
                                                                          strict=True)])


def safety_scores(y: np.ndarray, logits: np.ndarray, states: np.ndarray, classes: Sequence[str] = CLASS_CODES,
                  degraded: np.ndarray | None = None, referred: np.ndarray | None = None) -> dict[str, float | None]:
    """Shares of the three states; accuracy and balanced accuracy of the assessed images; confident errors (the
    share of all images assessed and wrong), confident melanoma misses (of the melanomas, the share assessed as
    another class), those of them that the referral flag (``referred``, per image) does not send on either, which
    nothing on the clinician's screen warns of (``None`` without a flag), and the share the degradation check flags
    (``None`` without one; such images are among those that cannot be assessed)."""
    y = np.asarray(y, dtype=np.int64)
    states = np.asarray(states)
    assessed = states == "assessed"
    wrong = np.asarray(logits).argmax(axis=1) != y
    kept = cell_scores(y[assessed], np.asarray(logits)[assessed], classes) if assessed.any() else None
    mel = y == list(classes).index("mel") if "mel" in classes else np.zeros(len(y), bool)
    return {"cannot_assess": float(np.mean(states == "cannot_assess")),
            "uncertain": float(np.mean(states == "uncertain")), "assessed": float(np.mean(assessed)),
            "assessed_accuracy": None if kept is None else kept["accuracy"],
            "assessed_balanced_accuracy": None if kept is None else kept["balanced_accuracy"],
            "confident_errors": float(np.mean(assessed & wrong)),
            "confident_mel_misses": float(np.mean((assessed & wrong)[mel])) if mel.any() else None,
            "unreferred_mel_misses": None if referred is None or not mel.any()
            else float(np.mean((assessed & wrong & ~np.asarray(referred, dtype=bool))[mel])),
            "degraded": None if degraded is None else float(np.mean(degraded))}


def summarise_safety(cells: Sequence[dict[str, Any]], clean: dict[str, Any], checks: dict[str, Any],
                     clean_without: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``safety`` block (pure): the clean figures, their mean over the cells and per corruption (over its
    severities), and at each corruption's highest severity; ``held_out``: the same means with each corruption judged
    by the degradation detector fitted without it; ``without_check``: the clean figures (``clean_without``) and the
    means with no degradation check at all, the gate, quality limits and margin alone, so that what the check adds
    is read off one evaluation (each ``None`` when not measured)."""
    def mean(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
        return {k: mean_or_none([r.get(k) for r in rows]) for k in SAFETY_FIGURES}

    scored = [c for c in cells if c.get("safety")]
    names = list(dict.fromkeys(c["corruption"] for c in scored))
    per = {}
    for name in names:
        mine = [c for c in scored if c["corruption"] == name]
        top = max(mine, key=lambda c: c["severity"])
        per[name] = {**mean([c["safety"] for c in mine]), "highest_severity": top["severity"],
                     "at_highest_severity": dict(top["safety"])}
    out = {"checks": checks, "clean": dict(clean), "mean": mean([c["safety"] for c in scored]),
           "per_corruption": per, "held_out": None, "without_check": None}
    alone = [c for c in scored if c.get("safety_without_check")]
    if alone:
        out["without_check"] = {
            "clean": None if clean_without is None else dict(clean_without),
            "mean": mean([c["safety_without_check"] for c in alone]),
            "per_corruption": {name: mean([c["safety_without_check"] for c in alone if c["corruption"] == name])
                               for name in dict.fromkeys(c["corruption"] for c in alone)}}
    unseen = [c for c in scored if c.get("safety_held_out")]
    if unseen:  # each corruption judged by the degradation detector fitted without it
        out["held_out"] = {
            "mean": mean([c["safety_held_out"] for c in unseen]),
            "per_corruption": {name: mean([c["safety_held_out"] for c in unseen if c["corruption"] == name])
                               for name in dict.fromkeys(c["corruption"] for c in unseen)}}
    return out


# ---------------------------------------------------------------------------------------------- reference


def load_reference(path: str | Path | None = None) -> dict[str, Any] | None:
    """A reference run's robustness figures: the shipped default, or any ``robustness.json`` / metrics.json."""
    if path is None:
        return None if REFERENCE is None else dict(REFERENCE, source="lesionlab.evaluate.robustness_reference")
    path = Path(path)
    if path.is_dir():
        path = path / ROBUSTNESS_FILE
    if not path.is_file():
        raise RobustnessError(f"robustness reference not found: {path} (give a robustness.json written by "
                              "`lesionlab evaluate RUN --corruptions ...`)")
    data = read_json(path, RobustnessError)
    if isinstance(data, dict) and "robustness" in data and "per_corruption" not in data:
        data = data["robustness"]  # a metrics.json
    if not isinstance(data, dict) or "per_corruption" not in data or "clean_balanced_error" not in data:
        raise RobustnessError(f"{path}: not a robustness record (needs per_corruption and clean_balanced_error)")
    out = {k: data.get(k) for k in ("corruptions_version", "split_name", "n", "image_size", "severities",
                                    "clean_balanced_error", "per_corruption", "seed")}
    out["name"] = data.get("run") or data.get("name") or path.parent.name
    out["source"] = str(path)
    return out


def reference_record(block: dict[str, Any], name: str, note: str = "") -> dict[str, Any]:
    """What a reference file keeps of a robustness block (for :mod:`lesionlab.evaluate.robustness_reference`)."""
    return {"name": name, "note": note, **{k: block.get(k) for k in (
        "corruptions_version", "split_name", "n", "image_size", "severities", "seed", "tta",
        "clean_balanced_error")},
        "per_corruption": {k: {"mean_balanced_error": v["mean_balanced_error"]}
                           for k, v in block["per_corruption"].items()}}


# ----------------------------------------------------------------------------------------------- scoring


def _ids_digest(image_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(map(str, image_ids)).encode()).hexdigest()[:16]


def cache_key(run: Run, image_ids: Sequence[str], name: str, severity: int, seed: int, tta: bool) -> str:
    """Identity of one cell's logits: weights, preprocessing, images (in order), corruption, seed, TTA."""
    weights = Path(run.path) / WEIGHTS_FILE
    parts = {"weights": file_sha256(weights) if weights.is_file() else str(id(run.model)),
             "preprocessing": run.info.get("preprocessing"), "images": _ids_digest(image_ids),
             "corruption": name, "severity": int(severity), "seed": int(seed), "tta": bool(tta),
             **({"tta_views": run.tta_views} if tta and run.tta_views != "flips" else {}),
             "version": CORRUPTIONS_VERSION, "metadata": run.info.get("metadata_encoder") is not None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cached(path: Path, key: str, n: int, names: Sequence[str] = ("logits",)) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of a cache file written under ``key`` for ``n`` images (``None``: score again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key or any(data[k].shape[0] != n for k in names):
                return None
            return {k: np.array(data[k]) for k in names}
    except (OSError, ValueError, KeyError):  # a truncated or foreign file: score the cell again
        return None


def _write_cached(path: Path, key: str, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(key), **arrays)

    atomic_write(path, write)


def _detector_digest(check: DegradationCheck | None) -> str | None:
    """A digest of a detector's threshold and arrays (part of a cell's safety cache key)."""
    if check is None:
        return None
    h = hashlib.sha256(repr(float(check.threshold)).encode())
    for k in sorted(check.arrays):
        h.update(np.ascontiguousarray(check.arrays[k], dtype=np.float32).tobytes())
    return h.hexdigest()[:24]


def safety_checks(run: Run) -> dict[str, Any] | None:
    """The run's fitted checks as the cache key and the block record them (``None``: none fitted)."""
    gate, margin, degradation = run.scope, run.uncertainty_threshold, run.degradation
    if gate is None and margin is None and degradation is None:
        return None
    scope_file, degradation_file = Path(run.path) / SCOPE_FILE, Path(run.path) / DEGRADATION_FILE
    return {"gate": None if gate is None else {"method": gate.method, "threshold": float(gate.threshold),
                                               "file_sha256": file_sha256(scope_file) if scope_file.is_file()
                                               else None},
            "uncertainty_threshold": margin, "temperature": run.temperature,
            "quality_limits": dict(QUALITY_LIMITS),
            "degradation": None if degradation is None else {
                "threshold": float(degradation.threshold),
                "file_sha256": file_sha256(degradation_file) if degradation_file.is_file() else None}}


class _FastPredictor:
    """The run's model in channels-last memory format for the many corrupted copies (float32 as before)."""

    def __init__(self, run: Run, tta: bool, batch_size: int) -> None:
        self.run, self.tta, self.batch_size = run, tta, batch_size
        self.channels_last = run.device.type == "cpu"

    def __enter__(self) -> _FastPredictor:
        if self.channels_last:
            self.run.model.to(memory_format=torch.channels_last)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.channels_last:
            self.run.model.to(memory_format=torch.contiguous_format)

    def __call__(self, images: Sequence[np.ndarray], metas: Sequence[dict[str, Any]] | None) -> np.ndarray:
        return self._predict(images, metas, False)[0]

    def with_features(self, images: Sequence[np.ndarray], metas: Sequence[dict[str, Any]] | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The logits and the safety checks' pooled features of the image itself, one backbone pass per view."""
        logits, feats = self._predict(images, metas, True)
        assert feats is not None
        return logits, feats

    def _batch(self, images: Sequence[np.ndarray], start: int) -> torch.Tensor:
        """Images ``start`` to ``start + batch_size``, prepared as the run prepares them, in this path's layout."""
        x = self.run.prepare_images(images[start:start + self.batch_size]).to(self.run.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def _predict(self, images: Sequence[np.ndarray], metas: Sequence[dict[str, Any]] | None, features: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        out, feats = [], []
        for start in range(0, len(images), self.batch_size):
            x = self._batch(images, start)
            part = metas[start:start + self.batch_size] if metas is not None else None
            meta = self.run.prepare_meta(part, len(x))
            meta = meta.to(self.run.device) if meta is not None else None
            if features:
                f, z = features_and_logits(self.run.model, x, meta, self.tta, self.run.tta_views)
                feats.append(f)
            else:
                z = view_averaged_logits(self.run.model, x, meta, self.tta, self.run.tta_views)
            out.append(z.float().cpu())
        return torch.cat(out).numpy(), (torch.cat(feats).numpy() if features else None)

    @torch.inference_mode()
    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The pooled features the out-of-scope gate reads, of the image itself (one view, as the service)."""
        out = [pooled_features(self.run.model, self._batch(images, s)) for s in range(0, len(images), self.batch_size)]
        return torch.cat(out).numpy()

    def safety(self, images: Sequence[np.ndarray], logits: np.ndarray, held_out: DegradationCheck | None = None,
               feats: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each image's gate score (NaN without a gate), whether its pixels pass the quality limits, whether the
        degradation check flags it (all False without one) and, given ``held_out``, whether that detector does
        (``feats``: the images' pooled features when they came with the logits)."""
        gate, check = self.run.scope, self.run.degradation
        scores = np.full(len(images), np.nan, dtype=np.float32)
        needs = (gate is not None and gate.method in ("mahalanobis", "knn")) or check is not None
        if feats is None:
            feats = self.features(images) if needs else np.zeros((len(images), 0))
        if gate is not None:
            scores = gate.score(feats, logits, softmax(logits, self.run.temperature)).astype(np.float32)
        degraded = check.degraded(check.score(feats)) if check is not None else np.zeros(len(images), dtype=bool)
        pixels_ok = np.array([not quality_flags(quality_measures(np.asarray(im))) for im in images], dtype=bool)
        out = {"scope_scores": scores, "pixels_ok": pixels_ok, "degraded": degraded}
        if held_out is not None:
            out["degraded_held_out"] = held_out.degraded(held_out.score(feats))
        return out

    def states(self, safety: dict[str, np.ndarray], logits: np.ndarray, degraded: str | None = "degraded"
               ) -> np.ndarray:
        """The state of each image from its cached checks and logits (``degraded``: which detector's flags;
        ``None``: the other checks alone, as if no degradation check had been fitted)."""
        gate = self.run.scope
        quality_ok = safety["pixels_ok"] if degraded is None else safety["pixels_ok"] & ~safety[degraded]
        return assessment_states(None if gate is None else safety["scope_scores"],
                                 None if gate is None else gate.threshold, quality_ok,
                                 margins(softmax(logits, self.run.temperature)), self.run.uncertainty_threshold)

    def judged(self, y: np.ndarray, logits: np.ndarray, safety: dict[str, np.ndarray], classes: Sequence[str],
               degraded: str | None = "degraded") -> dict[str, float | None]:
        """:func:`safety_scores` of one set of images under the run's checks (``degraded``: which detector's flags,
        ``None`` for none; the share flagged is ``None`` without a detector)."""
        flags = safety[degraded] if self.run.degradation is not None and degraded is not None else None
        threshold = self.run.info.get("referral_threshold")
        referred = None if threshold is None else \
            malignant_score(softmax(logits, self.run.temperature), classes) >= float(threshold)
        return safety_scores(y, logits, self.states(safety, logits, degraded), classes, flags, referred)


def channels_last_features(run: Run, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The pooled features of many images through the channels-last path (on CPU about 1.7x faster; within 1e-5 of
    the standard path on the reference run)."""
    with _FastPredictor(run, False, batch_size) as predict:
        return predict.features(images)


def gallery_index(labels: np.ndarray, classes: Sequence[str] = CLASS_CODES) -> int:
    """The image the gallery shows: the split's first melanoma (what a user most needs to see), else its first."""
    if "mel" in classes:
        hits = np.flatnonzero(np.asarray(labels) == list(classes).index("mel"))
        if hits.size:
            return int(hits[0])
    return 0


def corrupted_split(images: Sequence[np.ndarray], image_ids: Sequence[str], name: str, severity: int,
                    seed: int) -> list[np.ndarray]:
    """Every image under one corruption at one severity, each seeded by its id (any order, any subset)."""
    return [corrupt(img, name, severity, np.random.default_rng(corruption_seed(seed, name, severity, iid)))
            for img, iid in zip(images, image_ids, strict=True)]


def evaluate_corruptions(run: Run, images: Sequence[np.ndarray], labels: np.ndarray, image_ids: Sequence[str],
                         metas: Sequence[dict[str, Any]] | None, out_dir: str | Path,
                         corruptions: str | Sequence[str] = "all", severities: str | Sequence[int] | None = None,
                         seed: int = 0, tta: bool = True, batch_size: int = 64,
                         reference: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
                         clean_logits: np.ndarray | None = None, progress: bool = True,
                         held_out: dict[str, DegradationCheck] | None = None,
                         held_out_skipped: str | None = None) -> dict[str, Any]:
    """Score every (corruption, severity) cell of ``images`` with ``run``; write the files; return the block.

    ``images`` are the uint8 arrays at the run's input size (the cache's rows), ``labels`` their class indices.
    ``clean_logits``: the standard evaluation path's logits of the same images, for the ``clean_check``.
    ``held_out``: per corruption, the degradation detector fitted without it
    (:func:`lesionlab.evaluate.scope.fit_held_out_degradation`); each cell is then also judged with it.
    ``held_out_skipped``: why they could not be fitted (recorded in the block instead).
    """
    names = parse_corruptions(corruptions)
    levels = parse_severities(severities)
    if len(images) != len(labels) or len(images) != len(image_ids):
        raise RobustnessError(f"{len(images)} images, {len(labels)} labels and {len(image_ids)} ids do not line up")
    if not len(images):
        raise RobustnessError("no images to corrupt")
    out = Path(out_dir)
    cache = out / CACHE_DIR
    y = np.asarray(labels, dtype=np.int64)
    classes = list(run.classes)
    cells: list[dict[str, Any]] = []
    reused = 0
    start = time.perf_counter()
    checks = safety_checks(run)
    held_out = held_out or {}
    with _FastPredictor(run, tta, batch_size) as predict:
        clean, clean_feats = predict.with_features(list(images), metas) if checks is not None else \
            (predict(list(images), metas), None)
        clean_scores = cell_scores(y, clean, classes)
        clean_safety, clean_without = None, None
        if checks is not None:
            arrays = predict.safety(list(images), clean, feats=clean_feats)
            clean_safety = predict.judged(y, clean, arrays, classes)
            if run.degradation is not None:  # what the other checks do alone: what the degradation check adds
                clean_without = predict.judged(y, clean, arrays, classes, None)
        check: dict[str, Any] = {"path": "channels-last" if predict.channels_last else "standard"}
        if clean_logits is not None:
            same = clean.argmax(1) == np.asarray(clean_logits).argmax(1)
            check.update(argmax_agreement=float(same.mean()),
                         max_abs_logit_difference=float(np.max(np.abs(clean - clean_logits))))
        # the cached per-image checks do not depend on the abstention margin (applied to the logits when judged), so
        # refitting the margin alone does not send every cell through the backbone again
        arrays_key = {k: v for k, v in (checks or {}).items() if k != "uncertainty_threshold"}
        jobs = [(n, s) for n in names for s in levels]
        bar = tqdm(jobs, desc="corrupted test split", unit="cell", disable=not progress)
        for name, severity in bar:
            bar.set_postfix_str(f"{name} s{severity}")
            key = cache_key(run, image_ids, name, severity, seed, tta)
            path = cache / f"{name}-s{severity}.npz"
            cached = _read_cached(path, key, len(images))
            corrupted: list[np.ndarray] | None = None
            feats: np.ndarray | None = None
            if cached is None:
                corrupted = corrupted_split(images, image_ids, name, severity, seed)
                logits, feats = predict.with_features(corrupted, metas) if checks is not None else \
                    (predict(corrupted, metas), None)
                _write_cached(path, key, logits=logits.astype(np.float32))
            else:
                logits = cached["logits"]
                reused += 1
            cell = {"corruption": name, "severity": severity, **cell_scores(y, logits, classes)}
            if checks is not None:
                unseen = held_out.get(name)
                skey = hashlib.sha256(json.dumps([key, arrays_key, _detector_digest(unseen)],
                                                 sort_keys=True).encode()).hexdigest()[:24]
                spath = cache / f"{name}-s{severity}-safety.npz"
                stored = ("pixels_ok", "scope_scores", "degraded") + (("degraded_held_out",) if unseen else ())
                safety = _read_cached(spath, skey, len(images), stored)
                if safety is None:
                    if corrupted is None:
                        corrupted = corrupted_split(images, image_ids, name, severity, seed)
                    safety = predict.safety(corrupted, logits, unseen, feats)
                    _write_cached(spath, skey, **safety)
                cell["safety"] = predict.judged(y, logits, safety, classes)
                if unseen is not None:
                    cell["safety_held_out"] = predict.judged(y, logits, safety, classes, "degraded_held_out")
                if run.degradation is not None:
                    cell["safety_without_check"] = predict.judged(y, logits, safety, classes, None)
            cells.append(cell)
    first = gallery_index(y, classes)
    picture = gallery(np.asarray(images[first]), names, levels, seed=seed, key=str(image_ids[first]),
                      scale=2 if min(np.asarray(images[first]).shape[:2]) < 96 else 1)
    gallery_path = atomic_write(out / GALLERY_FILE, lambda tmp: picture.save(tmp, format="PNG"))
    ctx = {"corruptions_version": CORRUPTIONS_VERSION, "corruptions": list(names), "severities": list(levels),
           "seed": seed, "tta": tta, "tta_views": run.tta_views if tta else None, "citation": CITATION,
           **(context or {})}
    block = summarise(cells, clean_scores, classes, reference, ctx)
    block["safety"] = None if clean_safety is None else summarise_safety(cells, clean_safety, checks or {},
                                                                         clean_without)
    if block["safety"] is not None:  # the service's flag, as the unreferred melanoma misses were judged by
        block["safety"]["referral_threshold"] = run.info.get("referral_threshold")
    if block["safety"] is not None and held_out_skipped:
        block["safety"]["held_out_skipped"] = held_out_skipped
    block["clean_check"] = check
    block["gallery"] = {"file": GALLERY_FILE, "image_id": str(image_ids[first]),
                        "class": classes[int(y[first])]}
    block["cells_reused"] = reused
    block["timing"] = {"seconds": round(time.perf_counter() - start, 1), "cells_scored": len(cells) - reused,
                       "images_per_cell": len(images), "threads": torch.get_num_threads()}
    atomic_write_json(out / ROBUSTNESS_FILE, block)
    atomic_write(out / CELLS_FILE, lambda tmp: cells_frame(block).to_csv(tmp, index=False, float_format="%.6g"))
    assert gallery_path.is_file()
    return block


def clean_check_warnings(block: dict[str, Any]) -> list[str]:
    """The evaluation warning when the benchmark's fast inference path disagrees with the standard one."""
    check = block.get("clean_check") or {}
    if check.get("argmax_agreement", 1.0) >= 1.0:
        return []
    return [f"the corruption benchmark's {check['path']} inference path disagrees with the standard path on "
            f"{100 * (1 - check['argmax_agreement']):.1f}% of the clean images"]
