"""Code recovery on image features: linear probes trained on real images (do the codes mean the real thing?), on
generated images (does a code change the image at all?), and the critic's own Q head (not independent)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lesionlab.classes import NUM_CLASSES
from lesionlab.data.metadata import SEXES, SITES
from lesionlab.synth.codes import KNOWN_SEXES, KNOWN_SITES, Labels, split_q
from lesionlab.synth.run import SynthRun


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


__all__ = ["apply_probes", "code_targets", "controllability", "fit_probes", "free_code_controllability",
           "q_head_recovery"]
