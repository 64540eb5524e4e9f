"""``lesionlab synth evaluate``: what a generator's images are worth, measured on class-balanced samples.

Writes ``RUN/eval/`` (or ``--out``): ``synth-eval.json`` (every figure), ``report.html`` (self-contained, figures
inline) and ``report.md``, plus the usefulness runs under ``usefulness/`` when asked for.

Sets compared (all at the generator's resolution): the real training split (the reference), real held-out images
(validation + test: the real-vs-real reference), the same held-out images pixelated (the degraded reference), and
``n_per_class`` generated images per class whose clinical codes are drawn from real training rows of that class.
Real sets are class-weighted (each class the same total weight) so that they match a class-balanced sample; the
compared sets have the same size.

1. Fidelity and diversity: FD-lite0, KID-lite0, improved precision and recall, per set and per stage.
2. Label fidelity: an independent classifier (a lesionlab run trained on real images) on the generated images, next to
   the same classifier on the real test images at the generator's resolution; and a linear probe on Lite0 features.
3. Code recovery: age, sex and site predicted from the images by probes trained on *real* images (do the codes mean
   the real thing?), by probes trained on *generated* images (does the code change the image at all?), and by the
   critic's own Q head (not independent: it was trained with the generator).
4. Memorisation: each sample's nearest real training image in feature space; the share of samples closer to a
   training image than any real held-out image is; the closest pairs shown side by side.
5. Usefulness (``--usefulness``): see :mod:`lesionlab.synth.usefulness`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.core.io import atomic_write_json
from lesionlab.synth.codes import Labels, labels_from_table
from lesionlab.synth.config import SynthEvalConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.fidelity import (
    Reference,
    class_weights,
    fd_to,
    kid_to,
    pairwise_min,
    pixelate,
    precision_recall_to,
    upsample_nearest,
)
from lesionlab.synth.networks import stage_resolutions
from lesionlab.synth.probes import (
    apply_probes,
    code_targets,
    controllability,
    fit_probes,
    free_code_controllability,
    q_head_recovery,
)
from lesionlab.synth.run import SynthRun, load_synth_run, stage_name

log = logging.getLogger(__name__)
EVAL_FILE = "synth-eval.json"


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``n`` rows with the classes as equal as ``labels`` allows (sorted)."""
    present = np.unique(labels)
    per = max(1, n // len(present))
    out = []
    for c in present:
        rows = np.flatnonzero(labels == c)
        out.append(rng.choice(rows, size=min(per, len(rows)), replace=False))
    return np.sort(np.concatenate(out))


def distribution_measures(ref: Reference, x: np.ndarray, x_w: np.ndarray, k: int) -> dict[str, float]:
    """FD, KID, precision and recall of one weighted set against the reference."""
    p, r = precision_recall_to(ref, x, k=k, w_fake=x_w)
    return {"fd": fd_to(ref, x, x_w), "kid": kid_to(ref, x, x_w), "precision": p, "recall": r, "n": len(x)}


def _real_labels(table: pd.DataFrame) -> Labels:
    return labels_from_table(table.reset_index(drop=True), 0)


def classifier_scores(classifier: Path, images: np.ndarray, labels: Labels, bootstrap: int, seed: int,
                      allow_synthetic: bool = False) -> dict[str, Any]:
    """An independent lesionlab run on some images: balanced accuracy with CI, per-class recall.

    The classifier must be a finished run trained on real images: one trained on synthetic images (or interrupted)
    would judge the generator by its own kind, so it is refused, unless ``allow_synthetic`` (the generator itself
    was trained on the built-in SYNTHETIC demo set, so its "real" images are synthetic too).
    """
    from lesionlab.evaluate import compute_metrics
    from lesionlab.runs import check_run_use, load_run

    model = load_run(classifier)
    check_run_use(classifier, model.info, "use as the independent classifier", allow_synthetic=allow_synthetic)
    meta = None
    if model.meta_encoder is not None:
        frame = labels.frame()
        meta = [{"age": float(a), "sex": s, "site": site} for a, s, site in
                zip(frame["age"], frame["sex"], frame["site"], strict=True)]
    proba = model.predict_proba(list(images), meta_rows=meta)
    m = compute_metrics(labels.label.numpy(), proba, bootstrap=bootstrap, seed=seed)
    return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
            "ci": m.get("ci", {}).get("balanced_accuracy"), "recall": {c: m["per_class"][c]["tpr"] for c in
                                                                        CLASS_CODES},
            "n": m["n"], "uses_metadata": meta is not None, "confusion": m["confusion_matrix"]["counts"]}



# -------------------------------------------------------------------------------------------------- the inputs


@dataclass
class EvalInputs:
    """The run, the real images and their features, and the class-balanced generated set with its features."""

    run: SynthRun
    ev: SynthEvalConfig
    source: Any
    table: pd.DataFrame
    images: np.ndarray  # every real image of the source at the generator's resolution
    train: np.ndarray  # row indices
    held: np.ndarray
    test: np.ndarray
    classes: np.ndarray  # class of each generated image
    labels: Labels  # codes of each generated image
    z: torch.Tensor
    syn: np.ndarray  # generated images
    f_train: np.ndarray
    f_held: np.ndarray
    f_pix: np.ndarray
    f_syn: np.ndarray

    def real(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.images[rows])

    def y(self, rows: np.ndarray) -> np.ndarray:
        return self.table["label"].to_numpy()[rows].astype(np.int64)


def prepare_inputs(run: SynthRun, ev: SynthEvalConfig, fx: Any, progress: bool) -> EvalInputs:
    """Open the run's data source, generate ``n_per_class`` images per class, and extract every feature set."""
    from lesionlab.data import cached_images, open_source
    from lesionlab.synth.features import cached_features

    res = run.resolution
    source = open_source(run.config.data)
    table = source.table.reset_index(drop=True)
    images = cached_images(source, (res, res), run.config.data.resize, progress=progress)
    split = table["split"].astype(str).to_numpy()
    train, held = np.flatnonzero(split == "train"), np.flatnonzero(np.isin(split, ["val", "test"]))
    if len(held) < 2 * NUM_CLASSES:
        raise SynthError(f"{source.name}: only {len(held)} validation and test images; the real-vs-real "
                         "reference needs more")
    if run.info.get("data", {}).get("fingerprint") not in (None, source.fingerprint()):
        log.warning("the data source changed since the generator was trained (fingerprint differs)")
    # generated images: class-balanced, codes drawn from real training rows of each class
    present = np.flatnonzero(np.bincount(run.sampler.labels.label.numpy(), minlength=NUM_CLASSES) > 0)
    classes = np.repeat(present, ev.n_per_class)
    labels, _ = run.draw_labels(len(classes), np.random.default_rng([ev.seed, 11]), classes=classes)
    z = torch.randn(len(classes), run.generator.z_dim, generator=torch.Generator().manual_seed(ev.seed + 3))
    syn = run.generate(labels, seed=ev.seed, z=z)
    key = f"{source.fingerprint()}|{res}|{run.config.data.resize}"
    real_held = np.ascontiguousarray(images[held])
    return EvalInputs(
        run, ev, source, table, images, train, held, np.flatnonzero(split == "test"), classes, labels, z, syn,
        f_train=cached_features(fx, np.ascontiguousarray(images[train]), key + "|train", progress, "features train"),
        f_held=cached_features(fx, real_held, key + "|held", progress, "features held-out"),
        f_pix=cached_features(fx, pixelate(real_held, ev.pixelate), key + f"|held-pix{ev.pixelate}", progress,
                              "features pixelated"),
        f_syn=fx(syn, progress=progress, desc="features generated"))


# ------------------------------------------------------------------------------------------------ the measures


def fidelity_section(inp: EvalInputs, fx: Any, progress: bool) -> dict[str, Any]:
    """FD, KID, precision and recall at equal set sizes for the generated, real and degraded sets; FD per stage."""
    ev, run = inp.ev, inp.run
    rng = np.random.default_rng([ev.seed, 5])
    y_held = inp.y(inp.held)
    ref = Reference(inp.f_train, class_weights(inp.y(inp.train)))  # its statistics computed once, used by each set
    n_cmp = min(len(inp.held), len(inp.syn))
    sub_syn = balanced_subset(inp.classes, n_cmp, rng)
    sub_held = np.sort(rng.choice(len(inp.held), size=min(n_cmp, len(inp.held)), replace=False))
    k = min(ev.pr_k, n_cmp - 1)
    w_held, w_syn = class_weights(y_held[sub_held]), class_weights(inp.classes[sub_syn])
    fid: dict[str, Any] = {
        "synthetic": distribution_measures(ref, inp.f_syn[sub_syn], w_syn, k),
        "real_held_out": distribution_measures(ref, inp.f_held[sub_held], w_held, k),
        "pixelated_real": distribution_measures(ref, inp.f_pix[sub_held], w_held, k),
        "pixelate_factor": ev.pixelate,
    }
    stages = []
    for s_res, g in run.stage_generators():
        stage_index = stage_resolutions(run.resolution).index(s_res)
        imgs = run.generate(inp.labels.index(torch.as_tensor(sub_syn)), seed=ev.seed, generator=g, stage=stage_index,
                            z=inp.z[torch.as_tensor(sub_syn)])
        feats = fx(upsample_nearest(imgs, run.resolution), progress=progress, desc=f"features {s_res} px")
        stages.append({"resolution": s_res, "fd": fd_to(ref, feats, w_syn), "kid": kid_to(ref, feats, w_syn),
                       "seconds": (run.info.get("stage_seconds") or {}).get(stage_name(s_res))})
    fid["stages"] = stages
    return fid


def codes_section(inp: EvalInputs) -> dict[str, Any]:
    """Code recovery by real-trained probes, generated-trained probes and the critic's Q head."""
    seed = inp.ev.seed
    held_labels = _real_labels(inp.table.iloc[inp.held])
    t_syn = code_targets(inp.labels)
    probes = fit_probes(inp.f_train, code_targets(_real_labels(inp.table.iloc[inp.train])), seed)
    recovery: dict[str, Any] = {
        "real_probe_on_real_held_out": apply_probes(probes, inp.f_held, code_targets(held_labels)),
        "real_probe_on_synthetic": apply_probes(probes, inp.f_syn, t_syn),
        "synthetic_probe_on_synthetic": controllability(inp.f_syn, t_syn, seed),
        "q_head_on_synthetic": q_head_recovery(inp.run, inp.syn, inp.labels),
        "q_head_on_real_held_out": q_head_recovery(inp.run, inp.real(inp.held), held_labels),
    }
    if inp.run.layout.free:
        recovery["free_codes_synthetic_probe"] = free_code_controllability(inp.f_syn, inp.labels.free.numpy(), seed)
    return recovery


def memorisation_section(inp: EvalInputs) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray],
                                                   tuple[np.ndarray, np.ndarray]]:
    """Nearest real training image of every sample; the share closer than any real held-out image is.

    Returns the figures, the closest (generated, real) pairs and both distance arrays (for the histogram).
    """
    d_syn, nn_syn = pairwise_min(inp.f_syn, inp.f_train)
    d_held, _ = pairwise_min(inp.f_held, inp.f_train)
    threshold = float(d_held.min())
    closer = d_syn < threshold
    order = np.argsort(d_syn)[: inp.ev.closest_pairs]
    present = np.unique(inp.classes)
    ids = inp.table["image_id"]
    doc = {
        "threshold_min_held_out_distance": threshold,
        "fraction_closer_than_any_held_out": float(closer.mean()),
        "count_closer": int(closer.sum()), "n": len(d_syn),
        "fraction_below_held_out_p01": float((d_syn < np.quantile(d_held, 0.01)).mean()),
        "fraction_below_held_out_p05": float((d_syn < np.quantile(d_held, 0.05)).mean()),
        "median_nn_distance": {"synthetic": float(np.median(d_syn)), "real_held_out": float(np.median(d_held))},
        "per_class_fraction": {CLASS_CODES[c]: float(closer[inp.classes == c].mean()) for c in present},
        "closest": [{"sample": int(i), "dx": CLASS_CODES[int(inp.classes[i])], "distance": float(d_syn[i]),
                     "train_image": str(ids.iloc[inp.train[nn_syn[i]]])} for i in order],
    }
    return doc, (inp.syn[order], inp.real(inp.train[nn_syn[order]])), (d_syn, d_held)


def label_fidelity_section(inp: EvalInputs, classifier: Path | None, recovery: dict[str, Any]) -> dict[str, Any]:
    """An independent real-trained classifier on the generated images and on real test images (same resolution)."""
    ev = inp.ev
    out: dict[str, Any] = {"linear_probe": {
        "real_held_out": recovery["real_probe_on_real_held_out"].get("class"),
        "synthetic": recovery["real_probe_on_synthetic"].get("class")}}
    if classifier is not None:
        out["classifier"] = str(classifier)
        demo = bool(inp.source.synthetic)
        out["synthetic"] = classifier_scores(classifier, inp.syn, inp.labels, ev.bootstrap, ev.seed, demo)
        out["real_test"] = classifier_scores(classifier, inp.real(inp.test), _real_labels(inp.table.iloc[inp.test]),
                                             ev.bootstrap, ev.seed, demo)
    return out


# -------------------------------------------------------------------------------------------------- evaluation


def evaluate_synth(run_dir: str | Path, out_dir: str | Path | None = None, classifier: str | Path | None = None,
                   usefulness: bool = False, settings: SynthEvalConfig | None = None, progress: bool = True
                   ) -> dict[str, Any]:
    """Run every measure of the module docstring; write ``synth-eval.json`` and the report; return the document."""
    from lesionlab.synth.features import FeatureExtractor
    from lesionlab.synth.report import write_synth_report

    t0 = time.perf_counter()
    run = load_synth_run(run_dir)
    ev = settings or run.config.evaluate
    out = Path(out_dir) if out_dir else run.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    fx = FeatureExtractor(ev.feature_size, ev.batch_size)
    inp = prepare_inputs(run, ev, fx, progress)
    doc = _header(inp)
    doc["fidelity"] = fidelity_section(inp, fx, progress)
    doc["codes"] = codes_section(inp)
    doc["memorisation"], pairs, distances = memorisation_section(inp)
    if usefulness:  # trains the arms; the class-weighted real arm is the independent classifier unless one is given
        from lesionlab.synth.usefulness import score_arms, train_arms

        runs = train_arms(run, inp.table, inp.images, out / "usefulness", ev.usefulness, ev.seed, progress)
        doc["usefulness"] = {"preset": str(ev.usefulness.preset), "overrides": list(ev.usefulness.overrides),
                             **score_arms(runs, inp.real(inp.test), inp.y(inp.test), ev.bootstrap, ev.seed)}
        if classifier is None and "real_weighted" in runs:
            classifier = runs["real_weighted"]
    doc["label_fidelity"] = label_fidelity_section(inp, Path(classifier) if classifier else None, doc["codes"])
    if classifier is None:
        doc["notes"].append("No independent classifier given (--classifier RUN or --usefulness): label fidelity "
                            "uses the linear probe on Lite0 features only.")
    doc["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / EVAL_FILE, doc)
    present = np.unique(inp.classes)
    grid_idx = np.concatenate([np.flatnonzero(inp.classes == c)[:8] for c in present])
    paths = write_synth_report(doc, out, samples=(inp.syn[grid_idx], inp.classes[grid_idx]), pairs=pairs,
                               stage_grids=sorted((run.path / "samples").glob("stage-*.png")), nn=distances)
    doc["report"] = {k: str(v) for k, v in paths.items()}
    return doc


def _header(inp: EvalInputs) -> dict[str, Any]:
    run, ev, source = inp.run, inp.ev, inp.source
    return {
        "kind": "lesionlab-synth-eval", "run": str(run.path), "created": _now(),
        "generator": {"resolution": run.resolution, "trained_on": run.info.get("data", {}),
                      "networks": run.info.get("networks"), "seconds": run.info.get("seconds"),
                      "images": run.info.get("images"), "stage_seconds": run.info.get("stage_seconds"),
                      "schedule": run.info.get("schedule"), "layout": run.layout.to_dict()},
        "data": {"source": source.name, "synthetic": bool(source.synthetic), "n_train": len(inp.train),
                 "n_held_out": len(inp.held), "n_test": len(inp.test),
                 "split": getattr(source, "split_name", "")},
        "settings": ev.model_dump(mode="json"),
        "notes": ["FD-lite0 and KID-lite0 are the Frechet and kernel distances on ImageNet EfficientNet-Lite0 features "
                  f"(images upsampled to {ev.feature_size} px). They are comparable with each other, never with "
                  "published FID/KID, which use InceptionV3 weights that cannot be installed offline."],
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
