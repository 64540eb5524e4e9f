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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.core.io import atomic_write_json
from lesionlab.data.metadata import SEXES, SITES
from lesionlab.synth.codes import KNOWN_SEXES, KNOWN_SITES, Labels, labels_from_table, split_q
from lesionlab.synth.config import SynthEvalConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.fidelity import (
    class_weights,
    fd,
    kid,
    pairwise_min,
    pixelate,
    precision_recall,
    upsample_nearest,
)
from lesionlab.synth.networks import stage_resolutions
from lesionlab.synth.run import SynthRun, load_synth_run, stage_name

log = logging.getLogger(__name__)
EVAL_FILE = "synth-eval.json"


# ------------------------------------------------------------------------------------------------------- helpers


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``n`` rows with the classes as equal as ``labels`` allows (sorted)."""
    present = np.unique(labels)
    per = max(1, n // len(present))
    out = []
    for c in present:
        rows = np.flatnonzero(labels == c)
        out.append(rng.choice(rows, size=min(per, len(rows)), replace=False))
    return np.sort(np.concatenate(out))


def distribution_measures(ref: np.ndarray, ref_w: np.ndarray, x: np.ndarray, x_w: np.ndarray, k: int
                          ) -> dict[str, float]:
    """FD, KID, precision and recall of one set against the reference (both weighted)."""
    p, r = precision_recall(ref, x, k=k, w_real=ref_w, w_fake=x_w)
    return {"fd": fd(x, ref, x_w, ref_w), "kid": kid(x, ref, x_w, ref_w), "precision": p, "recall": r,
            "n": len(x)}


def _pearson(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    from scipy import stats

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return {"r": None, "p": None, "n": len(a)}
    r, p = stats.pearsonr(a, b)
    return {"r": float(r), "p": float(p), "n": len(a)}


def _cls_scores(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, Any]:
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    if len(y) == 0:
        return {"accuracy": None, "balanced_accuracy": None, "n": 0, "chance": None}
    present = len(np.unique(y))
    majority = float(np.bincount(y).max() / len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a prediction of a class absent from y is expected and fine here
        bal = float(balanced_accuracy_score(y, pred))
    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": bal,
            "n": len(y), "chance": 1.0 / max(present, 1), "majority": majority, "classes": int(present),
            "of": k}


# ------------------------------------------------------------------------------------------------------- probes


def code_targets(labels: Labels) -> dict[str, np.ndarray]:
    """Probe targets: class, known sex (0/1 or -1), known site (0..13 or -1), age in years (NaN unknown)."""
    sex = labels.sex.numpy()
    site = labels.site.numpy()
    sex_t = np.array([KNOWN_SEXES.index(SEXES[s]) if SEXES[s] in KNOWN_SEXES else -1 for s in sex])
    site_t = np.array([KNOWN_SITES.index(SITES[s]) if SITES[s] in KNOWN_SITES else -1 for s in site])
    age = labels.age.numpy().astype(np.float64)
    age = np.where(labels.age_known.numpy(), age, np.nan)
    return {"class": labels.label.numpy(), "sex": sex_t, "site": site_t, "age": age}


def fit_probes(x: np.ndarray, t: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Linear probes on features: logistic regression (class, sex, site; class-balanced) and ridge (age)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probes: dict[str, Any] = {}
    for name in ("class", "sex", "site"):
        keep = t[name] >= 0
        if len(np.unique(t[name][keep])) < 2:
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced",
                                                                   random_state=seed))
        probes[name] = model.fit(x[keep], t[name][keep])
    keep = np.isfinite(t["age"])
    if keep.sum() >= 3:
        probes["age"] = make_pipeline(StandardScaler(), Ridge(alpha=1000.0)).fit(x[keep], t["age"][keep])
    return probes


def apply_probes(probes: dict[str, Any], x: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, k in (("class", NUM_CLASSES), ("sex", len(KNOWN_SEXES)), ("site", len(KNOWN_SITES))):
        if name in probes:
            keep = t[name] >= 0
            out[name] = _cls_scores(t[name][keep], probes[name].predict(x[keep]) if keep.any() else
                                    np.zeros(0, int), k)
    if "age" in probes:
        keep = np.isfinite(t["age"])
        out["age"] = _pearson(probes["age"].predict(x[keep]), t["age"][keep]) if keep.any() else {"r": None}
    return out


def q_head_recovery(run: SynthRun, images: np.ndarray, labels: Labels, stage: int | None = None) -> dict[str, Any]:
    """What the critic's own Q head reads from images (trained together with the generator: not independent)."""
    critic = run.critic()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), 256):
            _, q = critic(x[start:start + 256], stage, 1.0)
            if q is None:
                return {}
            outs.append(q)
    parts = split_q(run.layout, torch.cat(outs))
    t = code_targets(labels)
    res: dict[str, Any] = {"class": _cls_scores(t["class"], parts["class"].argmax(1).numpy(), NUM_CLASSES)}
    for name, k in (("sex", len(KNOWN_SEXES)), ("site", len(KNOWN_SITES))):
        if name in parts:
            keep = t[name] >= 0
            res[name] = _cls_scores(t[name][keep], parts[name].argmax(1).numpy()[keep], k)
    if "age" in parts:
        keep = np.isfinite(t["age"])
        res["age"] = _pearson(parts["age"][:, 0].numpy()[keep] * 20 + 50, t["age"][keep])
    if "free" in parts:
        res["free"] = [_pearson(parts["free"][:, j].numpy(), labels.free[:, j].numpy())
                       for j in range(labels.free.shape[1])]
    return res


def free_code_controllability(x: np.ndarray, free: np.ndarray, seed: int) -> list[dict[str, float | None]]:
    """Ridge probe trained on half of the generated images, tested on the other half, per free code."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    a, b = order[: len(x) // 2], order[len(x) // 2:]
    out = []
    for j in range(free.shape[1]):
        model = make_pipeline(StandardScaler(), Ridge(alpha=1000.0)).fit(x[a], free[a, j])
        out.append(_pearson(model.predict(x[b]), free[b, j]))
    return out


def controllability(x: np.ndarray, t: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Probes trained on half of the generated images (codes as targets) and tested on the other half."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    a, b = order[: len(x) // 2], order[len(x) // 2:]
    probes = fit_probes(x[a], {k: v[a] for k, v in t.items()}, seed)
    return apply_probes(probes, x[b], {k: v[b] for k, v in t.items()})


# -------------------------------------------------------------------------------------------------- evaluation


def _real_labels(table: pd.DataFrame) -> Labels:
    return labels_from_table(table.reset_index(drop=True), 0)


def classifier_scores(classifier: Path, images: np.ndarray, labels: Labels, bootstrap: int, seed: int
                      ) -> dict[str, Any]:
    """An independent lesionlab run on some images: balanced accuracy with CI, per-class recall."""
    from lesionlab.evaluate import compute_metrics
    from lesionlab.runs import load_run

    model = load_run(classifier)
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


def evaluate_synth(run_dir: str | Path, out_dir: str | Path | None = None, classifier: str | Path | None = None,
                   usefulness: bool = False, settings: SynthEvalConfig | None = None, progress: bool = True
                   ) -> dict[str, Any]:
    """Run every measure of the module docstring; write ``synth-eval.json`` and the report; return the document."""
    from lesionlab.data import cached_images, open_source
    from lesionlab.synth.features import FeatureExtractor, cached_features
    from lesionlab.synth.report import write_synth_report

    t0 = time.perf_counter()
    run = load_synth_run(run_dir)
    ev = settings or run.config.evaluate
    out = Path(out_dir) if out_dir else run.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    res = run.resolution
    source = open_source(run.config.data)
    table = source.table.reset_index(drop=True)
    images = cached_images(source, (res, res), run.config.data.resize, progress=progress)
    split = table["split"].astype(str).to_numpy()
    train_rows = np.flatnonzero(split == "train")
    held_rows = np.flatnonzero(np.isin(split, ["val", "test"]))
    test_rows = np.flatnonzero(split == "test")
    if len(held_rows) < 2 * NUM_CLASSES:
        raise SynthError(f"{source.name}: only {len(held_rows)} validation and test images; the real-vs-real "
                         "reference needs more")
    if run.info.get("data", {}).get("fingerprint") not in (None, source.fingerprint()):
        log.warning("the data source changed since the generator was trained (fingerprint differs)")
    rng = np.random.default_rng([ev.seed, 5])
    doc: dict[str, Any] = {
        "kind": "lesionlab-synth-eval", "run": str(run.path), "created": _now(),
        "generator": {"resolution": res, "trained_on": run.info.get("data", {}),
                      "networks": run.info.get("networks"), "seconds": run.info.get("seconds"),
                      "images": run.info.get("images"), "stage_seconds": run.info.get("stage_seconds"),
                      "schedule": run.info.get("schedule"), "layout": run.layout.to_dict()},
        "data": {"source": source.name, "synthetic": bool(source.synthetic), "n_train": len(train_rows),
                 "n_held_out": len(held_rows), "n_test": len(test_rows),
                 "split": getattr(source, "split_name", "")},
        "settings": ev.model_dump(mode="json"),
        "notes": ["FD-lite0 and KID-lite0 are the Frechet and kernel distances on ImageNet EfficientNet-Lite0 features "
                  f"(images upsampled to {ev.feature_size} px). They are comparable with each other, never with "
                  "published FID/KID, which use InceptionV3 weights that cannot be installed offline."],
    }

    # ---- generated images: class-balanced, codes drawn from real training rows of each class
    present = np.flatnonzero(np.bincount(run.sampler.labels.label.numpy(), minlength=NUM_CLASSES) > 0)
    classes = np.repeat(present, ev.n_per_class)
    labels, _ = run.draw_labels(len(classes), np.random.default_rng([ev.seed, 11]), classes=classes)
    z = torch.randn(len(classes), run.generator.z_dim, generator=torch.Generator().manual_seed(ev.seed + 3))
    syn = run.generate(labels, seed=ev.seed, z=z)

    # ---- features
    fx = FeatureExtractor(ev.feature_size, ev.batch_size)
    key = f"{source.fingerprint()}|{res}|{run.config.data.resize}"
    f_train = cached_features(fx, np.ascontiguousarray(images[train_rows]), key + "|train", progress, "features train")
    f_held = cached_features(fx, np.ascontiguousarray(images[held_rows]), key + "|held", progress, "features held-out")
    f_pix = cached_features(fx, pixelate(np.ascontiguousarray(images[held_rows]), ev.pixelate),
                            key + f"|held-pix{ev.pixelate}", progress, "features pixelated")
    f_syn = fx(syn, progress=progress, desc="features generated")
    y_train = table["label"].to_numpy()[train_rows].astype(np.int64)
    y_held = table["label"].to_numpy()[held_rows].astype(np.int64)
    w_train, _w_held = class_weights(y_train), class_weights(y_held)

    # ---- 1. fidelity and diversity at equal set sizes
    n_cmp = min(len(held_rows), len(syn))
    sub_syn = balanced_subset(classes, n_cmp, rng)
    sub_held = np.sort(rng.choice(len(held_rows), size=min(n_cmp, len(held_rows)), replace=False))
    k = min(ev.pr_k, n_cmp - 1)
    fid = {
        "synthetic": distribution_measures(f_train, w_train, f_syn[sub_syn], class_weights(classes[sub_syn]), k),
        "real_held_out": distribution_measures(f_train, w_train, f_held[sub_held], class_weights(y_held[sub_held]),
                                               k),
        "pixelated_real": distribution_measures(f_train, w_train, f_pix[sub_held], class_weights(y_held[sub_held]),
                                                k),
    }
    fid["pixelate_factor"] = ev.pixelate
    stages = []
    for s_res, g in run.stage_generators():
        stage_index = stage_resolutions(res).index(s_res)
        imgs = run.generate(labels.index(torch.as_tensor(sub_syn)), seed=ev.seed, generator=g, stage=stage_index,
                            z=z[torch.as_tensor(sub_syn)])
        feats = fx(upsample_nearest(imgs, res), progress=progress, desc=f"features {s_res} px")
        w = class_weights(classes[sub_syn])
        stages.append({"resolution": s_res, "fd": fd(feats, f_train, w, w_train),
                       "kid": kid(feats, f_train, w, w_train),
                       "seconds": (run.info.get("stage_seconds") or {}).get(stage_name(s_res))})
    fid["stages"] = stages
    doc["fidelity"] = fid

    # ---- 2./3. label fidelity and code recovery
    t_train = code_targets(_real_labels(table.iloc[train_rows]))
    t_held = code_targets(_real_labels(table.iloc[held_rows]))
    t_syn = code_targets(labels)
    probes = fit_probes(f_train, t_train, ev.seed)
    recovery: dict[str, Any] = {
        "real_probe_on_real_held_out": apply_probes(probes, f_held, t_held),
        "real_probe_on_synthetic": apply_probes(probes, f_syn, t_syn),
        "synthetic_probe_on_synthetic": controllability(f_syn, t_syn, ev.seed),
        "q_head_on_synthetic": q_head_recovery(run, syn, labels),
        "q_head_on_real_held_out": q_head_recovery(run, np.ascontiguousarray(images[held_rows]),
                                                   _real_labels(table.iloc[held_rows])),
    }
    if run.layout.free:
        recovery["free_codes_synthetic_probe"] = free_code_controllability(f_syn, labels.free.numpy(), ev.seed)
    doc["codes"] = recovery

    # ---- 4. memorisation
    d_syn, nn_syn = pairwise_min(f_syn, f_train)
    d_held, _ = pairwise_min(f_held, f_train)
    threshold = float(d_held.min())
    closer = d_syn < threshold
    order = np.argsort(d_syn)[: ev.closest_pairs]
    doc["memorisation"] = {
        "threshold_min_held_out_distance": threshold,
        "fraction_closer_than_any_held_out": float(closer.mean()),
        "count_closer": int(closer.sum()), "n": len(d_syn),
        "fraction_below_held_out_p01": float((d_syn < np.quantile(d_held, 0.01)).mean()),
        "fraction_below_held_out_p05": float((d_syn < np.quantile(d_held, 0.05)).mean()),
        "median_nn_distance": {"synthetic": float(np.median(d_syn)), "real_held_out": float(np.median(d_held))},
        "per_class_fraction": {CLASS_CODES[c]: float(closer[classes == c].mean()) for c in present},
        "closest": [{"sample": int(i), "dx": CLASS_CODES[int(classes[i])], "distance": float(d_syn[i]),
                     "train_image": str(table["image_id"].iloc[train_rows[nn_syn[i]]])} for i in order],
    }
    pairs = (syn[order], np.ascontiguousarray(images[train_rows[nn_syn[order]]]))

    # ---- 5. usefulness (trains the arms), then the independent classifier
    useful = None
    if usefulness:
        from lesionlab.synth.usefulness import score_arms, train_arms

        runs = train_arms(run, table, images, out / "usefulness", ev.usefulness, ev.seed, progress)
        useful = score_arms(runs, np.ascontiguousarray(images[test_rows]),
                            table["label"].to_numpy()[test_rows].astype(np.int64), ev.bootstrap, ev.seed)
        doc["usefulness"] = useful
        if classifier is None and "real_weighted" in runs:
            classifier = runs["real_weighted"]
    label_fid: dict[str, Any] = {"linear_probe": {
        "real_held_out": recovery["real_probe_on_real_held_out"].get("class"),
        "synthetic": recovery["real_probe_on_synthetic"].get("class")}}
    if classifier is not None:
        classifier = Path(classifier)
        label_fid["classifier"] = str(classifier)
        label_fid["synthetic"] = classifier_scores(classifier, syn, labels, ev.bootstrap, ev.seed)
        label_fid["real_test"] = classifier_scores(classifier, np.ascontiguousarray(images[test_rows]),
                                                   _real_labels(table.iloc[test_rows]), ev.bootstrap, ev.seed)
    else:
        doc["notes"].append("No independent classifier given (--classifier RUN or --usefulness): label fidelity "
                            "uses the linear probe on Lite0 features only.")
    doc["label_fidelity"] = label_fid
    doc["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / EVAL_FILE, doc)
    grid_idx = np.concatenate([np.flatnonzero(classes == c)[:8] for c in present])
    paths = write_synth_report(doc, out, samples=(syn[grid_idx], classes[grid_idx]), pairs=pairs,
                               stage_grids=sorted((run.path / "samples").glob("stage-*.png")),
                               nn=(d_syn, d_held))
    doc["report"] = {k: str(v) for k, v in paths.items()}
    return doc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
