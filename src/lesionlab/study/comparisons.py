"""Paired comparisons of a reader study: arms against each other, readers against the model.

* Wilcoxon signed-rank across readers between arms (readers paired; valid in every design).
* McNemar per reader against the model on the same cases (per-case right/wrong), Holm-adjusted per arm.
* Bootstrap CIs of the difference in the readers' mean figure: readers are resampled (the same readers in both
  arms) and cases too: once for both arms where the same cases were read in both (``crossover``, ``revise``), and
  independently per arm where they were not (``separate``: cases are not paired, so only readers are).
  Cases are resampled within their true class, so every class present stays present.
* OR-Hillis MRMC (:mod:`lesionlab.study.mrmc`) across the arms, where every reader read every case in every arm.

Every test comes back as a :class:`lesionlab.evaluate.stats.TestResult`: test, statistic, p, sample sizes and
effect size together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.evaluate.stats import TestResult, holm_adjust, mcnemar
from lesionlab.study.analysis_errors import StudyAnalysisError
from lesionlab.study.answers import Answers
from lesionlab.study.mrmc import ORResult, auc_with_jackknife, hit_fom, or_hillis
from lesionlab.study.readers import FIGURE_NAMES, ModelOnCases

#: Figures compared between arms and bootstrapped (each a share of hits over a subset of cases, or their mean).
COMPARED: tuple[str, ...] = ("accuracy", "balanced_accuracy", "mel_sensitivity", "malignant_sensitivity",
                             "malignant_specificity")
#: Figures analysed with OR-Hillis in the paired designs (plus malignant AUC of the confidences when recorded).
MRMC_FIGURES: tuple[str, ...] = ("accuracy", "malignant_sensitivity", "malignant_specificity", "mel_sensitivity")


# ---------------------------------------------------------------------------------------- reader x case matrices


@dataclass(frozen=True)
class ConditionMatrix:
    """Answers of every participant to every case of one condition: ``None`` where not read, ``""`` no answer."""

    condition: str
    participants: tuple[str, ...]
    cases: tuple[str, ...]
    answers: np.ndarray  # [R, C] object
    truth: np.ndarray  # [C] object
    confidence: np.ndarray  # [R, C] float, NaN where none


def condition_matrix(answers: Answers, condition: str, cases: Sequence[str] | None = None) -> ConditionMatrix:
    """The condition's answers as a participant x case matrix (cases: the condition's own, or those given)."""
    sub = answers.condition(condition)
    case_ids = tuple(cases) if cases is not None else tuple(sorted(sub["case"].unique()))
    rdr = {p: i for i, p in enumerate(answers.participants)}
    col = {c: k for k, c in enumerate(case_ids)}
    ans = np.full((len(rdr), len(case_ids)), None, dtype=object)
    conf = np.full((len(rdr), len(case_ids)), np.nan)
    sub = sub[sub["case"].isin(col) & sub["participant"].isin(rdr)]
    ri = sub["participant"].map(rdr).to_numpy()
    ci = sub["case"].map(col).to_numpy()
    ans[ri, ci] = sub["answer"].to_numpy(dtype=object)
    conf[ri, ci] = sub["confidence"].to_numpy(dtype=np.float64)
    truth_map = dict(zip(answers.frame["case"], answers.frame["truth"], strict=True))
    truth = np.asarray([truth_map[c] for c in case_ids], dtype=object)
    return ConditionMatrix(condition, answers.participants, case_ids, ans, truth, conf)


def figure_hits(figure: str, answers: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hits, case mask) of a share-of-hits figure; ``answers`` may be ``[..., C]``."""
    a = np.asarray(answers, dtype=object)
    answered = (a != "") & np.not_equal(a, None)
    t = np.asarray(truth, dtype=object)
    if figure == "accuracy":
        return a == t, np.ones(t.shape, dtype=bool)
    if figure == "mel_sensitivity":
        return a == "mel", t == "mel"
    if figure == "mel_specificity":
        return (a != "mel") & answered, t != "mel"
    mal_call = np.isin(a, MALIGNANT_CODES)
    mal_truth = np.isin(t, MALIGNANT_CODES)
    if figure == "malignant_sensitivity":
        return mal_call, mal_truth
    if figure == "malignant_specificity":
        return ~mal_call & answered, ~mal_truth
    if figure.startswith("sens_"):
        code = figure[5:]
        return a == code, t == code
    raise StudyAnalysisError(f"figure {figure!r} is not a share of hits")


# ---------------------------------------------------------------------------------------------- Wilcoxon


def wilcoxon_between(per_reader: pd.DataFrame, figure: str, cond_a: str, cond_b: str, design: str) -> TestResult | None:
    """Wilcoxon signed-rank of ``figure`` between two conditions across readers (paired by participant)."""
    a = per_reader[per_reader["condition"] == cond_a].set_index("participant")[figure]
    b = per_reader[per_reader["condition"] == cond_b].set_index("participant")[figure]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    n = len(both)
    label = f"{FIGURE_NAMES.get(figure, figure)}: {cond_b} vs {cond_a} (readers paired" + \
        ("; cases differ between arms)" if design == "separate" else ")")
    if n < 2:
        return None
    d = (both["b"] - both["a"]).to_numpy(dtype=np.float64)
    nonzero = d[d != 0]
    detail: dict[str, Any] = {"mean": {cond_a: float(both["a"].mean()), cond_b: float(both["b"].mean())},
                              "readers_left_out": int(len(a.dropna().index.union(b.dropna().index)) - n)}
    if nonzero.size == 0:
        stat, p = 0.0, 1.0
        detail["note"] = "every reader has the same value in both arms"
        rbc = 0.0
    else:
        res = sps.wilcoxon(both["b"].to_numpy(dtype=np.float64), both["a"].to_numpy(dtype=np.float64),
                           zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
        ranks = sps.rankdata(np.abs(nonzero))
        rbc = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    detail["rank_biserial"] = rbc
    return TestResult(test="Wilcoxon signed-rank", statistic_name="W", statistic=stat, p_value=p,
                      n={"readers": n, "non-zero differences": int(nonzero.size)},
                      effect_name=f"median difference ({cond_b} - {cond_a})", effect_size=float(np.median(d)),
                      label=label, detail=detail)


def wilcoxon_tests(per_reader: pd.DataFrame, conditions: Sequence[str], design: str,
                   figures: Sequence[str] = COMPARED) -> list[TestResult]:
    """Every pair of conditions x every compared figure."""
    out = []
    for cond_a, cond_b in combinations(conditions, 2):
        for fig in figures:
            res = wilcoxon_between(per_reader, fig, cond_a, cond_b, design)
            if res is not None:
                out.append(res)
    return out


# ---------------------------------------------------------------------------------------------- McNemar


def mcnemar_vs_model(matrix: ConditionMatrix, model: ModelOnCases) -> list[TestResult]:
    """Per reader: right/wrong on each case against the model's right/wrong on the same case (Holm within arm)."""
    pred = dict(zip(model.cases, model.pred, strict=True))
    results = []
    for j, participant in enumerate(matrix.participants):
        read = np.asarray([a is not None and c in pred for a, c in zip(matrix.answers[j], matrix.cases,
                                                                        strict=True)])
        if not read.any():
            continue
        cases = np.asarray(matrix.cases, dtype=object)[read]
        reader_right = matrix.answers[j][read] == matrix.truth[read]
        model_right = np.asarray([pred[c] for c in cases], dtype=object) == matrix.truth[read]
        shown = " (the outputs shown, some deliberately wrong)" if model.faulty_shown else ""
        results.append(mcnemar(reader_right.astype(bool), model_right.astype(bool), names=(participant, "model"),
                               label=f"{participant} vs model, {matrix.condition}{shown}"))
    if results:
        adjusted = holm_adjust([r.p_value for r in results])
        results = [replace(r, detail={**r.detail, "p_holm": p}) for r, p in zip(results, adjusted, strict=True)]
    return results


# -------------------------------------------------------------------------------------------- the bootstrap


def _case_weights(truth: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, C]`` resampling counts, drawn within each true class."""
    w = np.zeros((n_boot, truth.size))
    for cls in np.unique(truth):
        members = np.flatnonzero(truth == cls)
        w[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=n_boot)
    return w


def _reader_figure(weights: np.ndarray, answers: np.ndarray, truth: np.ndarray, figure: str) -> np.ndarray:
    """``[B, R]`` figure of each reader under case weights ``[B, C]`` (NaN where undefined)."""
    read = np.not_equal(answers, None).astype(np.float64)
    if figure == "balanced_accuracy":
        per_class = [_reader_figure(weights, answers, truth, f"sens_{c}") for c in CLASS_CODES if (truth == c).any()]
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.stack(per_class), axis=0) if per_class else np.full(
                (weights.shape[0], answers.shape[0]), np.nan)
    hits, mask = figure_hits(figure, answers, truth)
    num = weights @ (hits.astype(np.float64) * read * mask).T
    den = weights @ (read * mask).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _weighted_mean(values: np.ndarray, reader_weights: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values)
    w = reader_weights * ok
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.where(ok, values, 0) * w).sum(axis=1) / np.where(total > 0, total, 1), np.nan)


def _summarise_boot(diffs: np.ndarray, observed: float, level: float) -> tuple[float, float, float, int]:
    d = diffs[np.isfinite(diffs)]
    alpha = (1 - level) / 2
    low, high = np.quantile(d, [alpha, 1 - alpha])
    p = (1.0 + np.sum(np.abs(d - observed) >= abs(observed))) / (d.size + 1.0)
    return float(low), float(high), float(min(p, 1.0)), int(d.size)


def bootstrap_between(mats: dict[str, ConditionMatrix], figure: str, cond_a: str, cond_b: str, paired_cases: bool,
                      n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> TestResult | None:
    """Bootstrap CI and p of (mean over readers of ``figure`` in ``cond_b``) minus (the same in ``cond_a``)."""
    ma, mb = mats[cond_a], mats[cond_b]
    if paired_cases and ma.cases != mb.cases:
        raise StudyAnalysisError(f"arms {cond_a} and {cond_b} cover different cases; they cannot be case-paired")
    ones = np.ones((1, len(ma.cases)))
    obs_a = _weighted_mean(_reader_figure(ones, ma.answers, ma.truth, figure), np.ones((1, len(ma.participants))))
    obs_b = _weighted_mean(_reader_figure(np.ones((1, len(mb.cases))), mb.answers, mb.truth, figure),
                           np.ones((1, len(mb.participants))))
    if not (np.isfinite(obs_a[0]) and np.isfinite(obs_b[0])):
        return None
    observed = float(obs_b[0] - obs_a[0])
    rng = np.random.default_rng(seed)
    r = len(ma.participants)
    v = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot).astype(np.float64)
    wa = _case_weights(ma.truth, n_boot, rng)
    wb = wa if paired_cases else _case_weights(mb.truth, n_boot, rng)
    diffs = (_weighted_mean(_reader_figure(wb, mb.answers, mb.truth, figure), v)
             - _weighted_mean(_reader_figure(wa, ma.answers, ma.truth, figure), v))
    low, high, p, valid = _summarise_boot(diffs, observed, level)
    how = "readers and cases resampled, cases shared by both arms" if paired_cases else \
        "readers resampled (paired); cases resampled independently per arm (not paired)"
    return TestResult(test="bootstrap (two-way)", statistic_name="difference", statistic=observed, p_value=p,
                      n={"readers": r, f"cases {cond_a}": len(ma.cases), f"cases {cond_b}": len(mb.cases),
                         "replicates": valid},
                      effect_name=f"mean {figure} {cond_b} - {cond_a}", effect_size=observed, ci=(low, high),
                      ci_level=level, label=f"{FIGURE_NAMES.get(figure, figure)}: {cond_b} vs {cond_a}",
                      detail={"method": how, "seed": seed, "stratified": True})


def bootstrap_vs_model(matrix: ConditionMatrix, model: ModelOnCases, figure: str, n_boot: int = 2000,
                       seed: int = 0, level: float = 0.95) -> TestResult | None:
    """Bootstrap CI and p of the readers' mean ``figure`` minus the model's, on the same cases."""
    pred = dict(zip(model.cases, model.pred, strict=True))
    keep = np.asarray([c in pred for c in matrix.cases])
    if not keep.any():
        return None
    answers, truth = matrix.answers[:, keep], matrix.truth[keep]
    model_ans = np.asarray([[pred[c] for c in np.asarray(matrix.cases, dtype=object)[keep]]], dtype=object)
    ones = np.ones((1, truth.size))
    r = answers.shape[0]
    readers_obs = _weighted_mean(_reader_figure(ones, answers, truth, figure), np.ones((1, r)))[0]
    model_obs = _reader_figure(ones, model_ans, truth, figure)[0, 0]
    if not (np.isfinite(readers_obs) and np.isfinite(model_obs)):
        return None
    observed = float(readers_obs - model_obs)
    rng = np.random.default_rng(seed)
    v = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot).astype(np.float64)
    w = _case_weights(truth, n_boot, rng)
    diffs = _weighted_mean(_reader_figure(w, answers, truth, figure), v) - _reader_figure(w, model_ans, truth,
                                                                                          figure)[:, 0]
    low, high, p, valid = _summarise_boot(diffs, observed, level)
    return TestResult(test="bootstrap (two-way)", statistic_name="difference", statistic=observed, p_value=p,
                      n={"readers": r, "cases": int(truth.size), "replicates": valid},
                      effect_name=f"readers' mean {figure} - model", effect_size=observed, ci=(low, high),
                      ci_level=level, label=f"{FIGURE_NAMES.get(figure, figure)}: readers vs model, "
                                            f"{matrix.condition}",
                      detail={"method": "readers and cases resampled (cases shared by readers and model)",
                              "seed": seed, "model": float(model_obs), "readers": float(readers_obs)})


# ------------------------------------------------------------------------------------------------- MRMC


def mrmc_across_conditions(answers: Answers, conditions: Sequence[str],
                           alpha: float = 0.05) -> tuple[dict[str, ORResult], list[str]]:
    """OR-Hillis per figure across the arms, where every reader read every case in each; notes say what was not run.

    When all arms cover the same cases (crossover) one analysis spans them all; otherwise (the revise design with
    assisted and faulty cases) each arm that showed the model is analysed against reading alone on their shared
    cases, keyed ``"<figure> (<arm> vs unassisted)"``. Arms are ordered later first (faulty, assisted,
    unassisted), so each difference reads as the arm with the model minus the one without.
    """
    if len(conditions) < 2:
        return {}, ["OR-Hillis needs at least two arms read on the same cases"]
    case_sets = {c: tuple(sorted(answers.condition(c)["case"].unique())) for c in conditions}
    if len(set(case_sets.values())) == 1:  # later arms first, so differences read "with the model - alone"
        return _mrmc_group(answers, list(conditions)[::-1], case_sets[conditions[0]], alpha, "")
    base = "unassisted" if "unassisted" in conditions else conditions[0]
    results: dict[str, ORResult] = {}
    notes: list[str] = []
    for other in (c for c in conditions if c != base):
        shared = tuple(sorted(set(case_sets[base]) & set(case_sets[other])))
        if len(shared) < 2:
            notes.append(f"OR-Hillis not run for {other} vs {base}: they share {len(shared)} cases")
            continue
        res, group_notes = _mrmc_group(answers, [other, base], shared, alpha, f" ({other} vs {base})")
        results.update(res)
        notes += group_notes
    return results, notes


def _mrmc_group(answers: Answers, conditions: list[str], cases: tuple[str, ...], alpha: float,
                suffix: str) -> tuple[dict[str, ORResult], list[str]]:
    notes: list[str] = []
    mats = [condition_matrix(answers, c, cases) for c in conditions]
    answers_arr = np.stack([m.answers for m in mats])  # [t, r, c]
    missing = np.argwhere(np.equal(answers_arr, None))
    if missing.size:
        examples = "; ".join(f"participant {answers.participants[j]}, arm {conditions[i]}, case {cases[k]}"
                             for i, j, k in missing[:5])
        return {}, [f"OR-Hillis{suffix} not run: the readings are not fully crossed ({len(missing)} reader x arm x "
                    f"case cells missing, e.g. {examples})"]
    truth = mats[0].truth
    results: dict[str, ORResult] = {}
    for fig in MRMC_FIGURES:
        hits, mask = figure_hits(fig, answers_arr, truth)
        try:
            est = hit_fom(hits, mask, fig, cases, FIGURE_NAMES.get(fig, fig), _subset_name(fig))
            results[fig + suffix] = or_hillis(
                est.theta, jackknife=est.jackknife, alpha=alpha, modalities=conditions, readers=answers.participants,
                fom=fig, fom_description=f"{FIGURE_NAMES.get(fig, fig)} of the answers, jackknifed over the "
                                         f"{len(est.cases)} {_subset_name(fig) or 'all'} cases",
                n_cases=len(est.cases), n_cases_total=len(cases))
        except StudyAnalysisError as err:
            notes.append(f"OR-Hillis {fig}{suffix}: {err}")
    if answers.has_confidence:
        conf = np.stack([m.confidence for m in mats])
        diseased = np.isin(truth, MALIGNANT_CODES)
        if np.isnan(conf).any():
            notes.append(f"OR-Hillis malignant AUC{suffix} not run: {int(np.isnan(conf).sum())} readings have no "
                         "confidence rating (time-outs, or the optional field left empty); the jackknife needs every "
                         "reading")
        elif diseased.sum() < 2 or (~diseased).sum() < 2:
            notes.append(f"OR-Hillis malignant AUC{suffix} not run: it needs at least two malignant and two benign "
                         "cases")
        else:
            theta, jack = auc_with_jackknife(conf, diseased)
            results["malignant_auc" + suffix] = or_hillis(
                theta, jackknife=jack, alpha=alpha, modalities=conditions, readers=answers.participants,
                fom="malignant_auc", fom_description="empirical ROC AUC of the malignancy confidence (0-100), "
                f"malignant = {', '.join(MALIGNANT_CODES)}", n_cases=len(cases), n_cases_total=len(cases))
    return results, notes


def _subset_name(figure: str) -> str:
    return {"malignant_sensitivity": "malignant", "malignant_specificity": "benign", "mel_sensitivity": "melanoma",
            "mel_specificity": "non-melanoma"}.get(figure, "")
