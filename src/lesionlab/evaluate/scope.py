"""Fitting and measuring the decision-support safety checks of a run: the out-of-scope gate, abstention and the
image-quality check (the pure parts are in :mod:`lesionlab.core.scope`).

``evaluate --calibrate`` fits the gate's statistics on the training split and its threshold on the validation split
(``RUN/scope.safetensors`` + ``run.json`` ``scope``), and the abstention margin on validation (``run.json``
``uncertainty``), and the degradation detector on the training split and its copies under random acquisition
corruptions, its threshold on the clean validation images (``RUN/degradation.safetensors`` + ``run.json``
``degradation``). Every evaluation then reports, on the evaluated split, how many real images the gate rejects
(false rejections), how many are uncertain or flagged for quality, and the gate's AUROC against the out-of-scope
sets of :mod:`lesionlab.evaluate.ood` (all four scores side by side, so the chosen method is seen in context).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from lesionlab.core.metrics import softmax
from lesionlab.core.scope import (
    DEFAULT_DEGRADATION_FALSE_REJECTION,
    DEFAULT_MAX_FALSE_REJECTION,
    DEFAULT_SCOPE_METHOD,
    DEGRADATION_FILE,
    SCOPE_FILE,
    SCOPE_METHODS,
    DegradationCheck,
    ScopeError,
    ScopeGate,
    degradation_arrays,
    fit_arrays,
    fit_scope_gate,
    fit_uncertainty,
    margins,
    quality_flags,
    quality_measures,
    save_degradation,
    save_gate_arrays,
    threshold_for,
)
from lesionlab.data.corruptions import CORRUPTION_NAMES, CORRUPTIONS_VERSION, SEVERITIES, corrupt, corruption_seed
from lesionlab.evaluate.ood import ood_sets
from lesionlab.evaluate.predictions import load_images, meta_rows, split_rows
from lesionlab.evaluate.robustness import channels_last_features

if TYPE_CHECKING:
    from lesionlab.data.sources import DataSource
    from lesionlab.runs import Run




class Scored:
    """Features, logits and model pixels of a set of images, computed once and scored by every method."""

    def __init__(self, run: Run, images: Sequence[Any], metas: list[dict[str, Any]] | None, tta: bool,
                 logits: bool = True) -> None:
        pre = run.preprocessing
        assert pre is not None
        self.pixels = [pre.resize_image(im) for im in images]
        if run.meta_encoder is not None and metas is None:
            metas = [{"age": None, "sex": "unknown", "site": "unknown"}] * len(images)
        # the training split needs features only (the gates' statistics); scores of logits need the logits, which
        # come from the same backbone pass
        if logits:
            self.features, self.logits = run.predict_features_and_logits(self.pixels, metas, tta=tta)
        else:
            self.features, self.logits = run.predict_features(self.pixels), np.zeros((len(images), 0))
        self.proba = softmax(self.logits, run.temperature) if logits else self.logits

    def scores(self, gate: ScopeGate) -> np.ndarray:
        return gate.score(self.features, self.logits, self.proba)


_SCORED: dict[tuple[Any, ...], tuple[Scored, np.ndarray]] = {}


def _split(run: Run, source: DataSource, split: str, tta: bool, progress: bool) -> tuple[Scored, np.ndarray]:
    """A split scored once per run, source and temperature (fitting and then measuring need the same features)."""
    key = (str(run.path), run.info.get("created"), source.name, len(source), split, run.temperature, tta)
    if key not in _SCORED:
        while len(_SCORED) >= 3:  # train, val and the evaluated split of one evaluation, no more
            _SCORED.pop(next(iter(_SCORED)))
        _SCORED[key] = _score_split(run, source, split, tta, progress)
    return _SCORED[key]


def _score_split(run: Run, source: DataSource, split: str, tta: bool, progress: bool
                 ) -> tuple[Scored, np.ndarray]:
    rows = split_rows(source, split)
    images = load_images(source, rows, run.preprocessing, progress)
    metas = meta_rows(source, rows) if run.meta_encoder is not None and split != "train" else None
    return Scored(run, images, metas, tta, logits=split != "train"), source.table["label"].to_numpy()[rows]


def fit_run_scope(run: Run, source: DataSource, tta: bool, method: str = DEFAULT_SCOPE_METHOD,
                  max_false_rejection: float = DEFAULT_MAX_FALSE_REJECTION, progress: bool = False
                  ) -> dict[str, Any]:
    """Fit the gate (training split) and its threshold and the abstention margin (validation split); write
    ``scope.safetensors`` and return the ``run.json`` fields ``scope`` and ``uncertainty``."""
    train, train_y = _split(run, source, "train", tta, progress)
    val, val_y = _split(run, source, "val", tta, progress)
    gate = fit_scope_gate(method, train.features, train_y, val.scores, max_false_rejection)
    save_gate_arrays(run.path / SCOPE_FILE, gate)
    run.scope = gate
    uncertainty = fit_uncertainty(val_y, val.proba)
    return {"scope": {**gate.record(), "split": "val", "statistics": "train", "file": SCOPE_FILE},
            "uncertainty": {**uncertainty, "split": "val"}}


#: Inverse regularisation of the degradation detector's logistic regression, chosen on the validation split of the
#: reference run (clean against corrupted validation images at the 2% false rejection): 0.003-0.01 detect the most,
#: 0.1 and 1 less (docs/BENCHMARKS.md, "The degradation check").
DEGRADATION_C = 0.01


def degraded_copies(pixels: Sequence[Any], seed: int, progress: bool = False
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One copy of each image under a random corruption at a random severity (seeded per image), with the chosen
    corruption indices and severities: the degradation detector's positive examples."""
    rng = np.random.default_rng(seed)
    names = rng.integers(len(CORRUPTION_NAMES), size=len(pixels))
    levels = rng.integers(min(SEVERITIES), max(SEVERITIES) + 1, size=len(pixels))
    out = []
    for i, px in enumerate(tqdm(pixels, desc="degraded copies", unit="image", disable=not progress)):
        name, level = CORRUPTION_NAMES[int(names[i])], int(levels[i])
        out.append(corrupt(np.asarray(px), name, level, np.random.default_rng(corruption_seed(seed, name, level, i))))
    return out, names, levels


def fit_degradation(clean: np.ndarray, degraded: np.ndarray, val_clean: np.ndarray,
                    max_false_rejection: float = DEFAULT_DEGRADATION_FALSE_REJECTION) -> DegradationCheck:
    """A logistic regression (standardised features, :data:`DEGRADATION_C`) of ``degraded`` against ``clean``
    features; its threshold keeps all but ``max_false_rejection`` of ``val_clean``."""
    x = np.r_[clean, degraded]
    y = np.r_[np.zeros(len(clean)), np.ones(len(degraded))]
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=DEGRADATION_C, max_iter=2000).fit(scaler.transform(x), y)
    check = DegradationCheck(float("inf"), degradation_arrays(scaler.mean_, scaler.scale_, model.coef_,
                                                              float(model.intercept_[0])))
    check.threshold = threshold_for(check.score(val_clean), max_false_rejection)
    return check


def fit_run_degradation(run: Run, source: DataSource, tta: bool,
                        max_false_rejection: float = DEFAULT_DEGRADATION_FALSE_REJECTION, seed: int = 0,
                        progress: bool = False) -> dict[str, Any]:
    """Fit the degradation detector: a logistic regression on the penultimate features of the training images
    (clean) against one corrupted copy of each; its threshold keeps all but ``max_false_rejection`` of the clean
    validation images, and one corrupted copy of each validation image measures what it detects. Writes
    ``degradation.safetensors``, sets ``run.degradation`` and returns the ``run.json`` field ``degradation``."""
    train, _ = _split(run, source, "train", tta, progress)
    val, _ = _split(run, source, "val", tta, progress)
    copies, _, _ = degraded_copies(train.pixels, seed, progress)
    check = fit_degradation(train.features, channels_last_features(run, copies), val.features, max_false_rejection)
    clean = check.score(val.features)
    val_copies, names, _ = degraded_copies(val.pixels, seed + 1, progress)
    caught = check.degraded(check.score(channels_last_features(run, val_copies)))
    by_name = {name: float(caught[names == k].mean()) for k, name in enumerate(CORRUPTION_NAMES) if (names == k).any()}
    check.fit = {"score": "logistic regression on the penultimate features (log-odds of degraded)",
                 "max_false_rejection": max_false_rejection, "C": DEGRADATION_C, "n_train": len(train.features),
                 "n_val": len(clean), "val_false_rejection": float(check.degraded(clean).mean()),
                 "val_detection": float(caught.mean()), "val_detection_by_corruption": by_name,
                 "corruptions_version": CORRUPTIONS_VERSION, "seed": seed}
    save_degradation(run.path / DEGRADATION_FILE, check)
    run.degradation = check
    return {"degradation": {**check.record(), "split": "val", "statistics": "train", "file": DEGRADATION_FILE}}


def fit_held_out_degradation(run: Run, source: DataSource, tta: bool, names: Sequence[str], seed: int = 0,
                             progress: bool = False) -> dict[str, DegradationCheck]:
    """For each corruption in ``names``, the run's degradation detector fitted again without that corruption's
    training copies (same copies, seed, regularisation and validation share): how the check does on a degradation it
    never saw, which the corrupted test split would otherwise overstate."""
    if run.degradation is None:
        raise ScopeError(f"{run.path}: no degradation check fitted (lesionlab evaluate RUN --calibrate)")
    fit = run.degradation.fit
    share = float(fit.get("max_false_rejection", DEFAULT_DEGRADATION_FALSE_REJECTION))
    seed = int(fit.get("seed", seed))
    train, _ = _split(run, source, "train", tta, progress)
    val, _ = _split(run, source, "val", tta, progress)
    copies, which, _ = degraded_copies(train.pixels, seed, progress)
    features = channels_last_features(run, copies)
    out = {}
    for name in tqdm(names, desc="degradation check, each corruption held out", disable=not progress):
        keep = which != CORRUPTION_NAMES.index(name)
        out[name] = fit_degradation(train.features, features[keep], val.features, share)
        out[name].fit = {"held_out": name, "n_degraded": int(keep.sum())}
    return out


def quality_summary(pixels: Sequence[np.ndarray]) -> dict[str, Any]:
    """How many images each quality flag catches."""
    flags = [quality_flags(quality_measures(p)) for p in pixels]
    names = ("too_dark", "too_bright", "blurred", "one_colour")
    return {"n": len(flags), "flagged": sum(bool(f) for f in flags),
            **{name: sum(name in f for f in flags) for name in names}}


def comparison_gates(run: Run, source: DataSource, tta: bool, progress: bool) -> dict[str, ScopeGate]:
    """All four scores with thresholds fitted on validation as the run's own gate is (the run's gate for its
    method), so the benchmark compares like with like."""
    train, train_y = _split(run, source, "train", tta, progress)
    val, _ = _split(run, source, "val", tta, progress)
    rejection = float((run.scope.fit if run.scope else {}).get("max_false_rejection", DEFAULT_MAX_FALSE_REJECTION))
    gates = {}
    for method in SCOPE_METHODS:
        if run.scope is not None and run.scope.method == method:
            gates[method] = run.scope
            continue
        gate = ScopeGate(method, float("inf"), fit_arrays(method, train.features, train_y))
        gate.threshold = threshold_for(val.scores(gate), rejection)
        gates[method] = gate
    return gates


def scope_report(run: Run, source: DataSource, split: str | None, tta: bool, n_ood: int = 60, seed: int = 0,
                 compare: bool = True, progress: bool = False) -> dict[str, Any]:
    """The ``scope`` block of metrics.json: false rejections, abstention and quality flags on the evaluated split,
    and the AUROC / detection rate of each score against each out-of-scope set."""
    rows = split_rows(source, split)
    images = load_images(source, rows, run.preprocessing, progress)
    metas = meta_rows(source, rows) if run.meta_encoder is not None else None
    real = Scored(run, images, metas, tta)
    y = source.table["label"].to_numpy()[rows]
    out: dict[str, Any] = {"n": len(rows), "quality": quality_summary(real.pixels)}
    if run.degradation is not None:
        flagged = run.degradation.degraded(run.degradation.score(real.features))
        out["degradation"] = {**run.degradation.record(), "flagged": int(flagged.sum()),
                              "flagged_rate": float(flagged.mean())}
    threshold = run.uncertainty_threshold
    if threshold is not None:
        m = margins(real.proba)
        correct = real.proba.argmax(axis=1) == y
        unsure = m < threshold
        out["uncertainty"] = {"threshold": threshold, "uncertain_rate": float(unsure.mean()),
                              "accuracy_uncertain": float(correct[unsure].mean()) if unsure.any() else None,
                              "accuracy_certain": float(correct[~unsure].mean()) if (~unsure).any() else None}
    if run.scope is None:
        out["gate"] = None
        return out
    gates = comparison_gates(run, source, tta, progress) if compare else {run.scope.method: run.scope}
    real_scores = {m: real.scores(g) for m, g in gates.items()}
    sets = ood_sets(n_ood, seed, real_images=[source.load_image(int(i)) for i in rows[:n_ood]])
    out["gate"] = {**run.scope.record(), "false_rejection": float((~run.scope.in_scope(
        real_scores[run.scope.method])).mean())}
    out["ood_sets"] = {name: len(images) for name, images in sets.items()}
    table = []
    for name, images in sets.items():
        scored = Scored(run, images, None, tta)
        for method, gate in gates.items():
            ood = scored.scores(gate)
            truth = np.r_[np.zeros(len(real_scores[method])), np.ones(len(ood))]
            table.append({"set": name, "method": method, "gate": method == run.scope.method,
                          "auroc": float(roc_auc_score(truth, np.r_[real_scores[method], ood])),
                          "detected": float((~gate.in_scope(ood)).mean()),
                          "false_rejection": float((~gate.in_scope(real_scores[method])).mean())})
    out["ood"] = table
    return out
