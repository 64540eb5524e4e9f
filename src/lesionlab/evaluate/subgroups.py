"""Subgroup performance: accuracy, balanced accuracy, melanoma and malignant sensitivity per sex, age band and site.

Every evaluation reports each subgroup (a level of ``sex``, ``age_band`` or ``site``; ``unknown`` is a level too)
with its counts and 95% confidence intervals, and tests whether its balanced accuracy is significantly *below*
that of the rest of the evaluated images.

Intervals
    Accuracy, melanoma sensitivity (recall of ``mel``) and malignant sensitivity (a truly malignant image --
    akiec, bcc, mel -- whose arg-max class is malignant) are proportions: Wilson score intervals. Balanced
    accuracy is the mean of per-class recalls, and subgroups often hold a class with one or two images, where a
    bootstrap within classes collapses to a zero-width interval (every resample of one image is that image). So
    each class's recall gets its Jeffreys posterior, Beta(correct + 1/2, wrong + 1/2); the 2.5 and 97.5
    percentiles of the mean of independent draws are the interval, widened to include the estimate where a class
    is all right or all wrong (the Jeffreys interval's usual boundary rule).

The test (one-sided, per subgroup, then corrected for the number of subgroups)
    Balanced accuracy depends on which classes are present, so the subgroup and the rest are compared on the same
    classes: those present in both. ``d = BA_rest - BA_group``. Under the null hypothesis, membership of the
    subgroup says nothing about being classified correctly *within a class*: the images of each class are
    exchangeable between the subgroup and the rest. Permuting membership within each class keeps every class's
    counts, so the number of correct images the subgroup gets in class ``c`` is hypergeometric (class ``c``'s
    images, its correct ones, the subgroup's share); ``draws`` samples of that exact null give
    ``p = (1 + #{d* >= d}) / (1 + draws)``. The p-values of all subgroups tested in one evaluation are
    Holm-Bonferroni adjusted (family-wise error ``alpha`` = 0.05), and a subgroup is *flagged* when its adjusted
    p-value is below ``alpha``. Subgroups with fewer than ``min_n`` images, or no class shared with the rest,
    are reported but not tested (the reason is given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.core.metrics import balanced_accuracy
from lesionlab.evaluate.document import Table
from lesionlab.evaluate.stats import holm_adjust

#: Age bands (lower bound inclusive, upper exclusive), in years; missing ages form the band "unknown".
AGE_BANDS: tuple[tuple[float, float, str], ...] = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"),
                                                   (60, 75, "60-74"), (75, math.inf, "75+"))
ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "site")
ALPHA = 0.05
MIN_N = 10
DRAWS = 10_000


def age_band(age: Any) -> str:
    """The band of an age in years (``unknown`` when missing)."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(a):
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= a < high:
            return name
    return "unknown"


def wilson(successes: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion (``None`` when ``n`` is 0)."""
    if n <= 0:
        return None
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def _proportion(hits: np.ndarray) -> tuple[float | None, list[float] | None, int]:
    n = int(hits.size)
    if n == 0:
        return None, None, 0
    k = int(hits.sum())
    return k / n, wilson(k, n), n


def balanced_accuracy_interval(correct: np.ndarray, labels: np.ndarray, draws: int = DRAWS, seed: int = 0,
                               level: float = 0.95) -> list[float] | None:
    """Interval for the mean per-class recall from per-class Jeffreys posteriors (see the module docstring)."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if present.size == 0 or draws <= 0:
        return None
    k = np.array([int(correct[labels == c].sum()) for c in present])
    n = np.array([int((labels == c).sum()) for c in present])
    samples = np.random.default_rng(seed).beta(k + 0.5, n - k + 0.5, size=(draws, present.size)).mean(axis=1)
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    estimate = float(np.mean(k / n))
    return [float(min(low, estimate)), float(max(high, estimate))]


def permutation_test(correct: np.ndarray, labels: np.ndarray, member: np.ndarray, draws: int = DRAWS,
                     seed: int = 0) -> dict[str, Any]:
    """One-sided test that the members' balanced accuracy is below the rest's (see the module docstring).

    ``correct``: per image, was it classified correctly; ``labels``: its true class; ``member``: in the subgroup.
    Returns the classes compared, both balanced accuracies, ``d = BA_rest - BA_group`` and ``p``, or a
    ``reason`` when the test is undefined.
    """
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    member = np.asarray(member, dtype=bool)
    shared = [c for c in np.unique(labels) if member[labels == c].any() and (~member[labels == c]).any()]
    if not shared:
        return {"reason": "no class present both in the subgroup and in the rest"}
    n_in = np.array([int((member & (labels == c)).sum()) for c in shared])
    n_all = np.array([int((labels == c).sum()) for c in shared])
    k_all = np.array([int((correct & (labels == c)).sum()) for c in shared])
    k_in = np.array([int((correct & member & (labels == c)).sum()) for c in shared])
    ba_in = float(np.mean(k_in / n_in))
    ba_rest = float(np.mean((k_all - k_in) / (n_all - n_in)))
    d = ba_rest - ba_in
    rng = np.random.default_rng(seed)
    # within class c the members' correct count is hypergeometric(good=k_all, bad=n_all-k_all, sample=n_in)
    sims = rng.hypergeometric(k_all, n_all - k_all, n_in, size=(draws, len(shared)))
    d_null = np.mean((k_all - sims) / (n_all - n_in), axis=1) - np.mean(sims / n_in, axis=1)
    p = (1 + int(np.sum(d_null >= d - 1e-12))) / (1 + draws)
    return {"classes": [int(c) for c in shared], "group_balanced_accuracy": ba_in,
            "rest_balanced_accuracy": ba_rest, "difference": d, "p": p}


def subgroup_analysis(table: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: Sequence[str] = CLASS_CODES,
                      bootstrap: int = 1000, seed: int = 0, alpha: float = ALPHA, min_n: int = MIN_N,
                      draws: int = DRAWS) -> dict[str, Any]:
    """The ``subgroups`` block of metrics.json (pure): one entry per subgroup, the test and the flagged ones.

    ``table`` holds the evaluated images' clinical data (columns ``sex``, ``age``, ``site``; missing columns count
    as unknown), row-aligned with ``y`` and ``proba``. ``bootstrap = 0`` (as for the headline CIs) leaves the
    balanced-accuracy intervals out; ``draws`` sets both the interval's and the test's Monte Carlo draws.
    """
    classes = list(classes)
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if len(table) != len(y) or p.shape[0] != len(y):
        raise ValueError(f"subgroups: {len(table)} table rows, {len(y)} labels and {p.shape[0]} predictions")
    pred = p.argmax(axis=1)
    correct = pred == y
    codes = np.asarray(classes)
    malignant = np.isin(codes[y], MALIGNANT_CODES)
    flagged_mal = np.isin(codes[pred], MALIGNANT_CODES)
    mel = classes.index("mel") if "mel" in classes else None
    columns = {
        "sex": table["sex"].astype(str).to_numpy() if "sex" in table else np.full(len(y), "unknown"),
        "age_band": np.array([age_band(a) for a in table["age"]]) if "age" in table else np.full(len(y), "unknown"),
        "site": table["site"].astype(str).to_numpy() if "site" in table else np.full(len(y), "unknown"),
    }
    order = {"age_band": [b[2] for b in AGE_BANDS] + ["unknown"]}
    groups: list[dict[str, Any]] = []
    for attribute in ATTRIBUTES:
        values = columns[attribute]
        levels = [lv for lv in order.get(attribute, sorted(set(values), key=lambda v: (v == "unknown", v)))
                  if (values == lv).any()]
        for level in levels:
            member = values == level
            yi, pi = y[member], p[member]
            acc, acc_ci, n = _proportion(correct[member])
            ba = balanced_accuracy(yi, pi)
            ba_ci = balanced_accuracy_interval(correct[member], yi, draws, seed) if bootstrap > 0 else None
            mel_sens, mel_ci, n_mel = _proportion(correct[member & (y == mel)]) if mel is not None else (None, None, 0)
            mal_sens, mal_ci, n_mal = _proportion(flagged_mal[member & malignant])
            entry: dict[str, Any] = {
                "attribute": attribute, "level": level, "n": n,
                "class_counts": {c: int((yi == k).sum()) for k, c in enumerate(classes)},
                "n_mel": n_mel, "n_malignant": n_mal,
                "accuracy": acc, "accuracy_ci": acc_ci, "balanced_accuracy": ba,
                "balanced_accuracy_ci": ba_ci,
                "mel_sensitivity": mel_sens, "mel_sensitivity_ci": mel_ci,
                "malignant_sensitivity": mal_sens, "malignant_sensitivity_ci": mal_ci,
                "tested": False, "p": None, "p_holm": None, "flagged": False,
            }
            if n < min_n:
                entry["not_tested"] = f"fewer than {min_n} images"
            elif member.all():
                entry["not_tested"] = "every evaluated image is in this subgroup (no rest to compare with)"
            else:
                result = permutation_test(correct, y, member, draws, seed)
                if "reason" in result:
                    entry["not_tested"] = result["reason"]
                else:
                    entry.update(tested=True, p=result["p"], difference=result["difference"],
                                 compared_classes=[classes[c] for c in result["classes"]],
                                 group_balanced_accuracy_shared=result["group_balanced_accuracy"],
                                 rest_balanced_accuracy_shared=result["rest_balanced_accuracy"])
            groups.append(entry)
    tested = [g for g in groups if g["tested"]]
    for g, adjusted in zip(tested, holm_adjust([g["p"] for g in tested]) if tested else [], strict=True):
        g["p_holm"] = adjusted
        g["flagged"] = bool(adjusted < alpha and g["difference"] > 0)
    flagged = [f"{g['attribute']}={g['level']}" for g in groups if g["flagged"]]
    return {
        "attributes": list(ATTRIBUTES), "age_bands": [b[2] for b in AGE_BANDS] + ["unknown"],
        "groups": groups, "flagged": flagged,
        "test": {"name": "one-sided permutation test of balanced accuracy below the rest (membership permuted "
                         "within each true class; exact hypergeometric null, sampled)",
                 "correction": "Holm-Bonferroni over every subgroup tested", "alpha": alpha, "draws": draws,
                 "min_n": min_n, "n_tested": len(tested), "seed": seed},
        "intervals": {"proportions": "Wilson score 95%", "balanced_accuracy":
                      f"95%, mean of per-class Jeffreys posteriors ({draws} draws)" if bootstrap
                      else "not computed (bootstrap 0)"},
    }


# ------------------------------------------------------------------------------------------- report parts


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _ci(v: Any, ci: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def _p(v: Any) -> str:
    if v is None:
        return ""
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def summary_text(block: dict[str, Any]) -> str:
    """One line for the model card: how many subgroups were tested and which are flagged."""
    test = block.get("test") or {}
    text = (f"{len(block.get('groups') or [])} subgroups (sex, age band, site); {test.get('n_tested', 0)} tested for "
            f"balanced accuracy below the rest (Holm, alpha {test.get('alpha', ALPHA)}): ")
    flagged = block.get("flagged") or []
    return text + ("flagged " + ", ".join(flagged) if flagged else "none flagged")


def subgroup_warnings(block: dict[str, Any]) -> list[str]:
    """One evaluation warning per flagged subgroup, with the figures that flagged it."""
    return [f"subgroup {g['attribute']}={g['level']} ({g['n']} images): balanced accuracy "
            f"{g['group_balanced_accuracy_shared']:.3f} is significantly below the rest's "
            f"{g['rest_balanced_accuracy_shared']:.3f} on the same classes (Holm-adjusted p {g['p_holm']:.3g})"
            for g in block["groups"] if g["flagged"]]


def report_tables(block: dict[str, Any]) -> list[Table]:
    """One report table per attribute."""
    tables = []
    titles = {"sex": "sex", "age_band": "age band (years)", "site": "body site"}
    for attribute in block.get("attributes") or ATTRIBUTES:
        rows = []
        for g in (g for g in block["groups"] if g["attribute"] == attribute):
            verdict = "FLAGGED" if g["flagged"] else ("" if g["tested"] else f"not tested: {g.get('not_tested')}")
            rows.append([g["level"], str(g["n"]), f"{g['n_mel']} / {g['n_malignant']}",
                         _ci(g["accuracy"], g["accuracy_ci"]), _ci(g["balanced_accuracy"], g["balanced_accuracy_ci"]),
                         _ci(g["mel_sensitivity"], g["mel_sensitivity_ci"]),
                         _ci(g["malignant_sensitivity"], g["malignant_sensitivity_ci"]),
                         _f(g.get("rest_balanced_accuracy_shared")), _p(g["p"]), _p(g["p_holm"]), verdict])
        tables.append(Table(f"Subgroups by {titles.get(attribute, attribute)}", f"table-subgroups-{attribute}",
                            ["subgroup", "n", "mel / malignant", "accuracy (95% CI)", "balanced accuracy (95% CI)",
                             "melanoma sensitivity", "malignant sensitivity", "rest BA (same classes)", "p",
                             "p (Holm)", "verdict"], rows,
                            f"{block['intervals']['proportions']} intervals for proportions; balanced accuracy: "
                            f"{block['intervals']['balanced_accuracy']}. Test: {block['test']['name']}; "
                            f"{block['test']['correction']} ({block['test']['n_tested']} tests, alpha "
                            f"{block['test']['alpha']}). Balanced accuracy covers the classes present in the "
                            "subgroup."))
    return tables


def card_summary(block: dict[str, Any]) -> dict[str, Any]:
    """What ``model_card.json`` keeps: the summary line, flagged subgroups and each subgroup's headline figures
    (with the same-class balanced accuracies the test compared, which the service's cautions quote)."""
    keep = ("attribute", "level", "n", "n_mel", "n_malignant", "accuracy", "accuracy_ci", "balanced_accuracy",
            "balanced_accuracy_ci", "mel_sensitivity", "mel_sensitivity_ci", "malignant_sensitivity",
            "malignant_sensitivity_ci", "p_holm", "flagged", "group_balanced_accuracy_shared",
            "rest_balanced_accuracy_shared")
    return {"summary": summary_text(block), "flagged": block.get("flagged"), "test": block.get("test"),
            "groups": [{k: g.get(k) for k in keep} for g in block.get("groups") or []]}


# ------------------------------------------------------------------------------------------- one patient


def patient_levels(age: Any, sex: str | None, site: str | None) -> dict[str, str]:
    """The subgroup one patient falls in for each attribute, named as :func:`subgroup_analysis` names them."""
    return {"sex": sex or "unknown", "age_band": age_band(age), "site": site or "unknown"}


def _who(attribute: str, level: str) -> str:
    if attribute == "site":
        return "lesions with no site given" if level == "unknown" else f"lesions on the {level}"
    if attribute == "age_band":
        return "patients with no age given" if level == "unknown" else f"patients aged {level} years"
    if attribute == "sex":
        return "patients with no sex given" if level == "unknown" else f"{level} patients"
    return f"{attribute} = {level}"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def subgroup_cautions(block: Any, age: Any, sex: str | None, site: str | None,
                      source: str | None = None) -> list[dict[str, Any]]:
    """The flagged subgroups of an evaluation (metrics.json's or model_card.json's ``subgroups``) that this
    patient belongs to, each with the figures that flagged it and one sentence for the clinician.

    A clinician should know, beside the answer, that the model was measurably less accurate for patients like this
    one. ``block`` is read from a file, so anything malformed in it is skipped rather than trusted or raised.
    """
    if not isinstance(block, dict) or not isinstance(block.get("groups"), list):
        return []
    levels = patient_levels(age, sex, site)
    where = f"its evaluation ({source})" if source else "its evaluation"
    out = []
    for g in block["groups"]:
        if not (isinstance(g, dict) and g.get("flagged") is True and isinstance(g.get("attribute"), str)
                and levels.get(g["attribute"]) == g.get("level")):
            continue
        n, p = _number(g.get("n")), _number(g.get("p_holm"))
        group = _number(g.get("group_balanced_accuracy_shared"))
        rest = _number(g.get("rest_balanced_accuracy_shared"))
        if group is None:
            group = _number(g.get("balanced_accuracy"))
        figures = "; ".join(x for x in (
            "" if group is None else f"balanced accuracy {group:.2f}" + ("" if rest is None else
                                                                         f", against {rest:.2f} for the rest"),
            "" if n is None else f"{int(n)} images", "" if p is None else f"Holm-adjusted p {p:.2g}") if x)
        message = (f"Less reliable for this patient: in {where} the model was significantly less accurate for "
                   f"{_who(g['attribute'], g['level'])}" + (f" ({figures})" if figures else "") + ". "
                   "Weigh its answer accordingly.")
        out.append({"attribute": g["attribute"], "level": g["level"], "n": None if n is None else int(n),
                    "balanced_accuracy": group, "rest_balanced_accuracy": rest, "p_holm": p, "source": source,
                    "message": message})
    return out
