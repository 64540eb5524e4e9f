"""Evaluate a run on a split (or an external ISIC-format test set): predictions, metrics, calibration, timing.

``evaluate_run`` writes one evaluation directory (default ``RUN/eval-<split>/``; its files: docs/ARCHITECTURE.md,
"Evaluation directory"); ``metrics.json`` holds :func:`~lesionlab.core.metrics.compute_metrics` at the top level
(so grid aggregation reads ``accuracy``, ``per_class.mel.tpr`` directly) beside its context blocks.
With ``calibrate`` the temperature and the referral threshold are fitted on the *validation* split of the run's
own data only and stored in ``run.json`` (``temperature``, ``referral_threshold``, ``calibration``, ``referral``),
where the service reads them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.classes import CLASS_CODES
from lesionlab.config import DataConfig
from lesionlab.core.card import INTENDED_USE, KNOWN_LIMITS
from lesionlab.core.errors import LesionlabError, UsageError
from lesionlab.core.io import atomic_write_json
from lesionlab.core.metrics import (
    brier_score,
    compute_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    softmax,
)
from lesionlab.core.scope import DEFAULT_DEGRADATION_FALSE_REJECTION, DEFAULT_MAX_FALSE_REJECTION, DEFAULT_SCOPE_METHOD
from lesionlab.data.audit import audit_split
from lesionlab.data.corruptions import parse_corruptions, parse_severities
from lesionlab.data.sources import DataSource, open_source
from lesionlab.data.splits import split_hash
from lesionlab.evaluate.calibration import (
    DEFAULT_TARGET_SENSITIVITY,
    fit_referral_threshold,
    fit_temperature,
    referral_rates,
)
from lesionlab.evaluate.decision import balanced_predictions, decision_rules, run_training_prior
from lesionlab.evaluate.predictions import (
    PredictionsError,
    arrays,
    load_images,
    meta_rows,
    predict_split,
    split_rows,
    time_inference,
    write_predictions,
)
from lesionlab.evaluate.report import METRICS_FILE, PREDICTIONS_FILE
from lesionlab.evaluate.robustness import (
    RobustnessError,
    clean_check_warnings,
    evaluate_corruptions,
    load_reference,
)
from lesionlab.evaluate.robustness_report import card_summary as robustness_card
from lesionlab.evaluate.scope import fit_held_out_degradation, fit_run_degradation, fit_run_scope, scope_report
from lesionlab.evaluate.subgroups import card_summary as subgroups_card
from lesionlab.evaluate.subgroups import subgroup_analysis, subgroup_warnings
from lesionlab.runs import Run, check_run_use, load_run, seal_enclosing_run, update_run_info, views_of

MODEL_CARD_FILE = "model_card.json"
AUDIT_FILE = "audit.json"


@dataclass(frozen=True)
class ScopeOptions:
    """How ``--calibrate`` fits the out-of-scope gate, and what each evaluation measures of it."""

    method: str = DEFAULT_SCOPE_METHOD
    max_false_rejection: float = DEFAULT_MAX_FALSE_REJECTION
    compare: bool = False  # also score the other methods against the out-of-scope sets (fits each on train + val)
    ood_images: int = 60  # images per out-of-scope set (0: do not measure)
    degradation_false_rejection: float = DEFAULT_DEGRADATION_FALSE_REJECTION  # clean validation images it may flag


@dataclass
class EvaluationResult:
    """Where an evaluation wrote its files, and the metrics document it wrote."""

    out_dir: Path
    metrics: dict[str, Any]
    predictions_path: Path
    metrics_path: Path
    card_path: Path


def default_out_dir(run_dir: Path, split: str | None, external: bool) -> Path:
    """``RUN/eval-<split>`` (``RUN/eval-isic`` for an external set)."""
    return Path(run_dir) / ("eval-isic" if external else f"eval-{split or 'all'}")


def now() -> str:
    """UTC timestamp for provenance fields."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_context(run: Run) -> dict[str, Any]:
    """The ``run`` block: which model, from where, trained on what."""
    info = run.info
    model = info.get("model") or {}
    data_cfg = (info.get("config") or {}).get("data") or {}
    data = info.get("data") or {}
    split = info.get("split") or {}
    sizes = ", ".join(f"{data[k]} {k[2:]}" for k in ("n_train", "n_val") if data.get(k) is not None)
    return {"name": Path(run.path).name, "path": str(run.path), "model": model.get("name"),
            "parameters": model.get("parameters"), "head": model.get("head"), "fusion": model.get("fusion"),
            "created": info.get("created"), "classes": list(run.classes),
            "training_data": f"{data.get('source') or data_cfg.get('source', 'unknown')}"
                             f"{' (SYNTHETIC)' if data.get('synthetic') else ''}"
                             f"{f'; {sizes} images' if sizes else ''}; split hash {split.get('hash') or 'n/a'}",
            "train_split_hash": split.get("hash")}


def source_context(source: DataSource, split: str | None, split_name: str, split_hash: str | None
                   ) -> dict[str, Any]:
    """The ``data`` block: which images, which split, under which licence."""
    return {"source": source.name, "kind": source.kind, "synthetic": source.synthetic, "split": split or "all",
            "split_name": split_name, "split_hash": split_hash, "licence": source.licence, "notes": list(source.notes)}


def metrics_document(y: np.ndarray, proba: np.ndarray, raw_proba: np.ndarray | None = None,
                     classes: tuple[str, ...] | list[str] = CLASS_CODES, bootstrap: int = 1000, seed: int = 0,
                     referral_threshold: float | None = None, referral_source: str | None = None,
                     context: dict[str, Any] | None = None, referral_fit: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The metrics.json content (pure): metrics with CIs, uncalibrated calibration figures, referral, context."""
    doc = compute_metrics(y, proba, classes, bootstrap=bootstrap, seed=seed)
    if raw_proba is not None:
        doc["uncalibrated"] = {"ece": expected_calibration_error(y, raw_proba),
                               "nll": negative_log_likelihood(y, raw_proba), "brier": brier_score(y, raw_proba)}
    if referral_threshold is not None:
        rates = referral_rates(y, proba, referral_threshold, classes)
        fitted = {k: referral_fit[k] for k in ("target_sensitivity", "val_sensitivity", "val_specificity",
                                                "val_referral_rate", "fitted") if k in (referral_fit or {})}
        doc["referral"] = {**rates, **fitted, "source": referral_source or "run.json"}
    doc.update(context or {})
    return doc


def card_document(doc: dict[str, Any]) -> dict[str, Any]:
    """``model_card.json``: data, split, audit, licence, intended use, limits and headline results with CIs."""
    ci = doc.get("ci") or {}
    return {
        "model": doc.get("run"), "data": doc.get("data"), "audit": doc.get("audit"),
        "evaluation": doc.get("evaluation"),
        "results": {name: {"value": doc.get(name), "ci95": [ci[name]["low"], ci[name]["high"]] if name in ci
                           and ci[name].get("low") is not None else None}
                    for name in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")},
        "malignant": doc.get("malignant"), "referral": doc.get("referral"), "timing": doc.get("timing"),
        "scope": {k: (doc.get("scope") or {}).get(k) for k in ("gate", "uncertainty", "quality", "degradation")},
        "decision_rules": _card_rules(doc.get("decision_rules")), **_card_extras(doc),
        "intended_use": INTENDED_USE, "known_limits": list(KNOWN_LIMITS),
    }


def _card_rules(rules: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model card's view of the two decision rules: what each decides, and its headline figures."""
    if not rules:
        return None
    keep = ("rule", "accuracy", "balanced_accuracy", "balanced_accuracy_ci", "malignant", "prior_source", "undefined")
    return {name: {k: v for k, v in block.items() if k in keep} | {"mel_recall": (block.get("recall") or {}).get("mel")}
            for name, block in rules.items()}


def _card_extras(doc: dict[str, Any]) -> dict[str, Any]:
    """The model card's subgroup and robustness summaries, when the evaluation has them."""
    out: dict[str, Any] = {}
    if doc.get("subgroups"):
        out["subgroups"] = subgroups_card(doc["subgroups"])
    if doc.get("robustness"):
        out["robustness"] = robustness_card(doc["robustness"])
    return out


def audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    """The compact part of the data layer's audit that metrics.json and the model card carry."""
    return {"status": audit.get("status"), "verdict": audit.get("verdict"), "split": audit.get("split"),
            "lesion_disjoint": audit.get("lesion_disjoint"), "split_sizes": audit.get("split_sizes"),
            "images_hashed": audit.get("images_hashed"),
            "exact_across": sum(bool(p.get("across")) for p in audit.get("exact") or []),
            "near_across": sum(bool(p.get("across")) for p in audit.get("near") or []),
            "known_across": sum(bool(p.get("across")) for p in audit.get("known") or [])}


def run_audit(source: DataSource, mode: str, progress: bool) -> dict[str, Any] | None:
    """The data layer's leakage audit of the split: ``lesions`` (metadata only, instant), ``full`` (also exact and
    near-duplicate images, hashing every image) or ``none``."""
    if mode == "none":
        return None
    if mode not in ("lesions", "full"):
        raise ValueError(f"audit mode {mode!r} is not one of none, lesions, full")
    return audit_split(source, hash_images=mode == "full", progress=progress).to_dict()


def open_eval_source(run: Run, data_cfg: DataConfig | None = None, isic_csv: Path | None = None,
                     isic_images: Path | None = None) -> tuple[DataSource, DataConfig]:
    """The data to evaluate on and its config: an ISIC ground truth + folder, the given config, or the run's own."""
    if (isic_csv is None) != (isic_images is None):
        raise PredictionsError("an external ISIC test set needs both --isic-csv and --isic-images")
    if isic_csv is not None:
        base = run.config.data
        cfg = DataConfig(source="isic", metadata_csv=Path(isic_csv), image_dirs=[Path(isic_images)],
                         image_size=base.image_size, resize=base.resize, cache_dir=base.cache_dir)
    else:
        cfg = data_cfg if data_cfg is not None else run.config.data
    return open_source(cfg), cfg


def calibrate_run(run: Run, source: DataSource, tta: bool, target_sensitivity: float, batch_size: int,
                  progress: bool, scope: ScopeOptions | None = None) -> dict[str, Any]:
    """Fit temperature and referral threshold on the validation split of ``source``, then the scope gate and the
    abstention margin (:func:`~lesionlab.evaluate.scope.fit_run_scope`) and the degradation detector
    (:func:`~lesionlab.evaluate.scope.fit_run_degradation`); store them in run.json."""
    frame, logits = predict_split(run, source, "val", tta=tta, batch_size=batch_size, temperature=1.0,
                                  progress=progress, return_logits=True)
    y, _ = arrays(frame, run.classes)
    fit = fit_temperature(y, softmax(logits), run.classes)
    referral = fit_referral_threshold(y, softmax(logits, fit["temperature"]), run.classes, target_sensitivity)
    provenance = {"split": "val", "source": source.name, "tta": tta, "fitted": now(),
                  "split_hash": split_hash(source.table)}
    calibration = {**fit, **provenance}
    referral = {**referral, **provenance, "applies_to": "probabilities after temperature scaling"}
    run.info = update_run_info(run.path, temperature=fit["temperature"], referral_threshold=referral["threshold"],
                               calibration=calibration, referral=referral)
    scope = scope or ScopeOptions()
    safety = fit_run_scope(run, source, tta, scope.method, scope.max_false_rejection, progress)
    safety.update(fit_run_degradation(run, source, tta, scope.degradation_false_rejection, progress=progress))
    run.info = update_run_info(run.path, **{k: {**v, "fitted": provenance["fitted"]} for k, v in safety.items()})
    return {"calibration": calibration, "referral_fit": referral}


def _evaluation_block(run: Run, use_tta: bool, calibrate: bool, bootstrap: int, seed: int) -> dict[str, Any]:
    temperature = run.temperature
    return {"tta": use_tta, "tta_views": run.tta_views if use_tta else None, "temperature": temperature,
            "temperature_source": "fitted on val (this evaluation)" if calibrate
            else ("run.json" if temperature else "none (raw softmax)"),
            "bootstrap": bootstrap, "seed": seed, "created": now(),
            "lesionlab_version": run.info.get("lesionlab_version"), "device": str(run.device), "warnings": []}


def _split_warnings(context: dict[str, Any], calibrate: bool, eval_split: str | None) -> list[str]:
    """Why the figures of this split may be optimistic: another split than training's, or calibrated on itself."""
    warnings = []
    train_hash, this_hash = context["run"]["train_split_hash"], context["data"]["split_hash"]
    if this_hash and train_hash and this_hash != train_hash:
        warnings.append(f"split hash {this_hash} differs from the run's training split {train_hash}: test images "
                        "may have been seen in training")
    if calibrate and eval_split == "val":
        warnings.append("temperature and referral threshold were fitted on this same validation split: its "
                        "calibration figures are optimistic")
    return warnings


def _write_evaluation(out: Path, doc: dict[str, Any], frame: Any, full_audit: dict[str, Any] | None
                      ) -> EvaluationResult:
    out.mkdir(parents=True, exist_ok=True)
    if full_audit is not None:
        atomic_write_json(out / AUDIT_FILE, full_audit)
    pred_path = write_predictions(frame, out / PREDICTIONS_FILE)
    metrics_path = atomic_write_json(out / METRICS_FILE, doc)
    card_path = atomic_write_json(out / MODEL_CARD_FILE, card_document(doc))
    seal_enclosing_run(out)
    return EvaluationResult(out, doc, pred_path, metrics_path, card_path)


def evaluate_run(run_dir: str | Path, data_cfg: DataConfig | None = None, split: str | None = "test",
                 tta: bool | None = None, calibrate: bool = False, tta_views: str | None = None,
                 target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY, isic_csv: str | Path | None = None,
                 isic_images: str | Path | None = None, out_dir: str | Path | None = None, bootstrap: int = 1000,
                 seed: int = 0, batch_size: int = 64, device: str = "cpu", timing_images: int = 64,
                 audit: str = "lesions", progress: bool = True, corruptions: str | list[str] | None = None,
                 severities: str | list[int] | None = None, corruption_seed: int = 0,
                 robustness_reference: str | Path | None = None, scope: ScopeOptions | None = None,
                 allow_unfinished: bool = False, allow_synthetic: bool = False) -> EvaluationResult:
    """Score ``split`` of the run's data (or ``data_cfg``, or an ISIC set) and write the evaluation directory.

    ``audit``: see :func:`run_audit`; the full audit is written to ``audit.json``, its summary into metrics.json.
    An external ISIC set is not a split, so it is not audited. Every evaluation reports subgroups
    (:mod:`lesionlab.evaluate.subgroups`); with ``corruptions`` (``"all"`` or names) it also scores the corrupted
    test split (:mod:`lesionlab.evaluate.robustness`) at ``severities`` (default 1-5). An unfinished run, or one
    trained on synthetic data, is refused unless allowed; its report then carries the warning.
    """
    if corruptions:  # a misspelt corruption fails before any model work
        parse_corruptions(corruptions)
        parse_severities(severities)
    run = load_run(run_dir, device=device)
    run_warnings = check_run_use(run.path, run.info, "evaluate", allow_unfinished, allow_synthetic)
    scope = scope or ScopeOptions()
    use_tta = run.tta if tta is None else bool(tta)
    if tta_views is not None:  # checked here, before any model work
        views_of(torch.zeros(1, 1, 2, 2), tta_views)
        if not use_tta:  # the views would be silently unused
            raise UsageError(f"--tta-views {tta_views} needs test-time views, which are off "
                             + ("(--no-tta)" if tta is not None else "for this run (its train.tta is off); add --tta"))
        if calibrate and tta_views != run.tta_views:
            raise UsageError(f"--calibrate stores a temperature in run.json for the run's own test-time views "
                             f"({run.tta_views}); fitting it on {tta_views} views would mis-calibrate the service")
        run.tta_views = tta_views
    external = isic_csv is not None
    source, cfg = open_eval_source(run, data_cfg, Path(isic_csv) if isic_csv else None,
                                   Path(isic_images) if isic_images else None)
    eval_split = None if external else split
    rows = split_rows(source, eval_split)  # fail on an empty split before any model work
    extra: dict[str, Any] = {}
    if calibrate:
        own = not external and (data_cfg is None or data_cfg == run.config.data)
        cal_source = source if own else open_eval_source(run)[0]  # the run's own validation split, never test data
        extra.update(calibrate_run(run, cal_source, use_tta, target_sensitivity, batch_size, progress, scope))
    frame, logits = predict_split(run, source, eval_split, tta=use_tta, batch_size=batch_size,
                                  temperature=run.temperature or 1.0, progress=progress, return_logits=True)
    y, proba = arrays(frame, run.classes)
    context: dict[str, Any] = {
        "run": run_context(run),
        "data": source_context(source, eval_split, source.split_name or str(cfg.split), split_hash(source.table)),
        "audit": None, "evaluation": _evaluation_block(run, use_tta, calibrate, bootstrap, seed), **extra}
    context["evaluation"]["warnings"] += run_warnings + ([] if external else _split_warnings(context, calibrate,
                                                                                             eval_split))
    if scope.ood_images > 0:
        context["scope"] = scope_report(run, source, eval_split, use_tta, n_ood=scope.ood_images, seed=seed,
                                        compare=scope.compare, progress=progress)
    if timing_images > 0:
        timed = rows[:timing_images]
        images = load_images(source, timed, run.preprocessing, False)
        metas = meta_rows(source, timed) if run.meta_encoder is not None else None
        context["timing"] = time_inference(run, images, metas, tta=use_tta, batch_size=batch_size)
    doc = metrics_document(y, proba, softmax(logits) if run.temperature else None, run.classes, bootstrap, seed,
                           run.info.get("referral_threshold"),
                           "fitted on val (this evaluation)" if calibrate else "run.json", context,
                           referral_fit=run.info.get("referral"))
    out = Path(out_dir) if out_dir else default_out_dir(run.path, eval_split, external)
    prior, prior_source = run_training_prior(run)
    doc["decision_rules"] = decision_rules(y, proba, prior, run.classes, prior_source, bootstrap, seed)
    balanced = balanced_predictions(proba, prior)
    if balanced is not None:
        frame.insert(int(frame.columns.get_loc("pred")) + 1, "pred_balanced", np.asarray(run.classes)[balanced])
    doc["subgroups"] = subgroup_analysis(source.table.iloc[rows], y, proba, run.classes, bootstrap=bootstrap,
                                         seed=seed)
    context["evaluation"]["warnings"] += subgroup_warnings(doc["subgroups"])
    if corruptions:
        doc["robustness"] = _robustness(run, source, rows, y, logits, out, use_tta, batch_size, progress,
                                        context["data"]["split_name"], corruptions=corruptions,
                                        severities=severities, seed=corruption_seed, reference=robustness_reference)
        context["evaluation"]["warnings"] += clean_check_warnings(doc["robustness"])
        skipped = (doc["robustness"].get("safety") or {}).get("held_out_skipped")
        if skipped:
            context["evaluation"]["warnings"].append(f"the degradation check was not measured on corruptions held "
                                                     f"out of its training: {skipped}")
    full_audit = None if external else run_audit(source, audit, progress)
    if external:
        doc["audit"] = {"status": "n/a", "verdict": "external test set, not a split of the training data; overlap "
                                                    "with the training images was not checked"}
    elif full_audit is not None:
        doc["audit"] = audit_summary(full_audit)
    return _write_evaluation(out, doc, frame, full_audit)


def _robustness(run: Run, source: DataSource, rows: np.ndarray, y: np.ndarray, logits: np.ndarray, out: Path,
                tta: bool, batch_size: int, progress: bool, split_name: str, corruptions: Any, severities: Any,
                seed: int, reference: str | Path | None) -> dict[str, Any]:
    """The corrupted test split: the same images as the clean evaluation, at the run's input size."""
    if run.preprocessing is None:
        raise RobustnessError(f"{run.path}: run.json has no preprocessing, so the input size to corrupt at is unknown")
    images = [np.asarray(im) for im in load_images(source, rows, run.preprocessing, progress)]
    metas = meta_rows(source, rows) if run.meta_encoder is not None else None
    context = {"run": Path(run.path).name, "split_name": split_name, "n": len(rows),
               "image_size": [int(v) for v in images[0].shape[:2]]}
    held_out, skipped = None, None
    if run.degradation is not None:  # the degradation check on corruptions it never saw: refit on the run's data
        try:
            held_out = fit_held_out_degradation(run, open_source(run.config.data), tta,
                                                parse_corruptions(corruptions), progress=progress)
        except LesionlabError as err:  # e.g. the training data is not on this machine: say so in the block
            skipped = str(err)
    return evaluate_corruptions(run, images, y, source.table["image_id"].iloc[rows].astype(str).tolist(), metas,
                                out, corruptions, severities, seed, tta, batch_size, load_reference(reference),
                                context, clean_logits=logits, progress=progress, held_out=held_out,
                                held_out_skipped=skipped)
