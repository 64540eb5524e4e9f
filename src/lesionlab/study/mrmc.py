"""Multi-reader multi-case (MRMC) analysis: Obuchowski-Rockette with Hillis's degrees of freedom (OR-Hillis).

The accepted analysis of a reader study in which the same readers read the same cases in every modality (arm):
each reader's figure of merit (FOM) per modality ``theta[i, j]`` is modelled as

    theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij

(Obuchowski & Rockette, Commun Stat Simul Comput 1995), where the errors ``e`` of the same case sample are
correlated: ``Var`` (same modality, same reader), ``Cov1`` (different modality, same reader), ``Cov2`` (same
modality, different reader), ``Cov3`` (both different). They are estimated here by the jackknife over cases: the FOM
is recomputed with each case left out, and the covariance of two reader x modality FOMs is
``(K - 1) / K * sum_k (theta_(k) - mean)(theta'_(k) - mean')``. A FOM defined on a subset of cases (sensitivity:
the diseased cases; specificity: the others) is jackknifed over that subset only.

Three analyses follow (Hillis, Stat Med 2007; Hillis et al., Stat Med 2005):

* random readers, random cases (RRRC): ``F = MS(T) / (MS(T:R) + J max(Cov2 - Cov3, 0))`` with Hillis's
  denominator degrees of freedom ``ddf = (MS(T:R) + J max(Cov2 - Cov3, 0))^2 / (MS(T:R)^2 / ((I-1)(J-1)))``;
* fixed readers, random cases (FRRC): ``chi2 = (I-1) MS(T) / (Var - Cov1 + (J-1) max(Cov2 - Cov3, 0))``, I-1 df;
* random readers, fixed cases (RRFC): ``F = MS(T) / MS(T:R)`` with (I-1, (I-1)(J-1)) df;

each with every modality's mean and its CI, and every pairwise difference with its standard error and CI.
Everything here is numpy/scipy only and written from the papers; the test suite reproduces the published Van Dyke
example (``../shared/data/mrmc``) to at least six significant digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesionlab.study.analysis_errors import ExportError, NotCrossedError, UndefinedFOMError

FOMS: tuple[str, ...] = ("auc", "accuracy", "sensitivity", "specificity")
FOM_TITLES: dict[str, str] = {"auc": "empirical (Wilcoxon) ROC AUC", "accuracy": "proportion correct",
                              "sensitivity": "sensitivity (diseased cases)",
                              "specificity": "specificity (non-diseased cases)"}
TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t", "positive", "pos", "diseased", "abnormal"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f", "negative", "neg", "normal", ""})
MAX_LISTED = 8  # how many missing cells an error message names


# -------------------------------------------------------------------------------------------- the reader table


def norm_label(value: Any, keep_case: bool = False) -> str:
    """A label compared as text: integral numbers without ``.0``, text stripped and lower-cased, missing as ``""``.

    ``keep_case`` for identifiers (readers, modalities, cases): a platform's ids are case-sensitive random keys.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text if keep_case else text.lower()
    if number.is_integer() and np.isfinite(number):
        return str(int(number))
    return text if keep_case else text.lower()


def _ordered(values: pd.Series, order: Sequence[str] | None, what: str, where: str) -> list[str]:
    present = list(dict.fromkeys(values))
    if order is not None:
        order = [str(o) for o in order]
        unknown = [v for v in present if v not in order]
        if unknown:
            raise ExportError(f"{where}: {what} {unknown[:MAX_LISTED]} not in the given order {order}")
        return [o for o in order if o in present]
    try:  # numbers in numeric order (2 before 10), text in text order
        return sorted(present, key=float)
    except ValueError:
        return sorted(present)


@dataclass(frozen=True)
class ReaderTable:
    """A fully crossed reader table as arrays: every reader read every case in every modality exactly once.

    ``values[i, j, k]`` is reader ``j``'s rating (``kind == "rating"``, float) or answer (``kind == "answer"``,
    normalised text, ``""`` for none) of case ``k`` in modality ``i``; ``truth[k]`` the case's normalised truth label.
    """

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray
    values: np.ndarray
    kind: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(modalities, readers, cases)."""
        return len(self.modalities), len(self.readers), len(self.cases)


def reader_table(frame: pd.DataFrame, reader: str, modality: str, case: str, truth: str, rating: str | None = None,
                 answer: str | None = None, where: str = "table", modality_order: Sequence[str] | None = None,
                 reader_order: Sequence[str] | None = None) -> ReaderTable:
    """Check and pivot a long table (one row per reader x modality x case) into a :class:`ReaderTable`.

    Errors name the file (``where``), the missing columns, the row of a bad value, the cases whose truth differs
    between rows, and the reader/modality/case cells that are missing or repeated.
    """
    if (rating is None) == (answer is None):
        raise ExportError(f"{where}: give exactly one of a rating column (--rating) or an answer column (--answer)")
    value_col = rating if rating is not None else answer
    needed = {"reader": reader, "modality": modality, "case": case, "truth": truth,
              "rating" if rating is not None else "answer": value_col}
    missing = [f"{col} ({role})" for role, col in needed.items() if col not in frame.columns]
    if missing:
        raise ExportError(f"{where}: missing column(s) {', '.join(missing)}; columns present: "
                          f"{', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise ExportError(f"{where}: no rows")
    ident = partial(norm_label, keep_case=True)
    ids = pd.DataFrame({"reader": frame[reader].map(ident), "modality": frame[modality].map(ident),
                        "case": frame[case].map(ident), "truth": frame[truth].map(norm_label)})
    for col in ("reader", "modality", "case", "truth"):
        blank = np.flatnonzero(ids[col].to_numpy() == "")
        if blank.size:
            raise ExportError(f"{where}: row {int(blank[0]) + 1} has no value in column {needed[col]!r}")
    if rating is not None:
        values = pd.to_numeric(frame[rating], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ExportError(f"{where}: row {int(bad[0]) + 1} has a missing or non-numeric rating "
                              f"{frame[rating].iloc[int(bad[0])]!r} in column {rating!r} ({bad.size} such rows)")
        kind = "rating"
    else:
        values = frame[answer].map(norm_label).to_numpy(dtype=object)
        kind = "answer"

    truth_per_case = ids.groupby("case", sort=False)["truth"].nunique()
    conflicting = truth_per_case[truth_per_case > 1].index.tolist()
    if conflicting:
        raise ExportError(f"{where}: the truth of case(s) {conflicting[:MAX_LISTED]} differs between rows "
                          f"(column {truth!r}); a case has one truth")
    mods = _ordered(ids["modality"], modality_order, "modalities", where)
    rdrs = _ordered(ids["reader"], reader_order, "readers", where)
    cases = _ordered(ids["case"], None, "cases", where)
    mi = pd.Categorical(ids["modality"], categories=mods).codes
    ri = pd.Categorical(ids["reader"], categories=rdrs).codes
    ci = pd.Categorical(ids["case"], categories=cases).codes
    t, r, c = len(mods), len(rdrs), len(cases)
    flat = (mi.astype(np.int64) * r + ri) * c + ci
    counts = np.bincount(flat, minlength=t * r * c)
    if (counts > 1).any():
        dup = np.flatnonzero(counts > 1)
        cells = [_cell(d, mods, rdrs, cases) for d in dup[:MAX_LISTED]]
        raise NotCrossedError(f"{where}: {dup.size} reader x modality x case cell(s) appear more than once, e.g. "
                              + "; ".join(f"reader {a}, modality {b}, case {k}" for a, b, k in cells)
                              + ": one reading per cell", cells)
    if (counts == 0).any():
        gap = np.flatnonzero(counts == 0)
        cells = [_cell(d, mods, rdrs, cases) for d in gap[:MAX_LISTED]]
        raise NotCrossedError(f"{where}: not fully crossed: {gap.size} of {t * r * c} reader x modality x case "
                              "cells are missing, e.g. "
                              + "; ".join(f"reader {a}, modality {b}, case {k}" for a, b, k in cells)
                              + f" ({_gap_summary(gap, mods, rdrs, cases)}); OR-Hillis needs every reader to read "
                              "every case in every modality", [_cell(d, mods, rdrs, cases) for d in gap])
    arr = np.empty(t * r * c, dtype=values.dtype)
    arr[flat] = values
    truth_arr = ids.drop_duplicates("case").set_index("case").loc[cases, "truth"].to_numpy(dtype=object)
    return ReaderTable(tuple(mods), tuple(rdrs), tuple(cases), truth_arr, arr.reshape(t, r, c), kind)


def _cell(flat: int, mods: Sequence[str], rdrs: Sequence[str], cases: Sequence[str]) -> tuple[str, str, str]:
    c, r = len(cases), len(rdrs)
    i, rest = divmod(int(flat), r * c)
    j, k = divmod(rest, c)
    return rdrs[j], mods[i], cases[k]


def _gap_summary(gap: np.ndarray, mods: Sequence[str], rdrs: Sequence[str], cases: Sequence[str]) -> str:
    c, r = len(cases), len(rdrs)
    pairs: dict[tuple[str, str], int] = {}
    for d in gap:
        i, rest = divmod(int(d), r * c)
        j = rest // c
        pairs[(rdrs[j], mods[i])] = pairs.get((rdrs[j], mods[i]), 0) + 1
    parts = [f"reader {a} in modality {b}: {n} case(s)" for (a, b), n in list(pairs.items())[:MAX_LISTED]]
    more = len(pairs) - MAX_LISTED
    return "missing per reader and modality: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# ------------------------------------------------------------------------------------------- figures of merit


def binary_labels(labels: np.ndarray, positive: Sequence[str] | None, what: str, where: str) -> np.ndarray:
    """Booleans from labels: membership in ``positive`` when given, else 0/1, true/false, yes/no words."""
    labels = np.asarray([norm_label(v) for v in labels], dtype=object)
    if positive is not None:
        pos = {norm_label(p) for p in positive}
        return np.isin(labels, list(pos))
    is_true = np.isin(labels, list(TRUE_WORDS))
    is_false = np.isin(labels, list(FALSE_WORDS))
    other = sorted(set(labels[~(is_true | is_false)].tolist()))
    if other:
        raise ExportError(f"{where}: {what} values {other[:MAX_LISTED]} are not binary (0/1, true/false); name the "
                          "diseased value(s) with --positive")
    return is_true


@dataclass(frozen=True)
class FOMEstimates:
    """Each reader's FOM per modality and its jackknife over the cases the FOM is defined on."""

    fom: str
    theta: np.ndarray  # [t, r]
    jackknife: np.ndarray  # [t, r, k]: the FOM with case k of the subset left out
    cases: tuple[str, ...]  # the jackknifed cases (the subset)
    n_cases_total: int
    description: str


def hit_fom(hits: np.ndarray, mask: np.ndarray, fom: str, cases: Sequence[str], description: str,
            subset_name: str) -> FOMEstimates:
    """A FOM that is the share of 1s of ``hits[t, r, c]`` over the cases in ``mask``, with its exact jackknife."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n == 0:
        raise UndefinedFOMError(f"{fom} is undefined: there are no {subset_name} cases")
    if n == 1:
        raise UndefinedFOMError(f"{fom} cannot be jackknifed over a single {subset_name} case; MRMC needs at least "
                                "two")
    h = np.asarray(hits, dtype=np.float64)[..., mask]
    total = h.sum(axis=-1, keepdims=True)
    return FOMEstimates(fom=fom, theta=total[..., 0] / n, jackknife=(total - h) / (n - 1),
                        cases=tuple(np.asarray(cases, dtype=object)[mask]), n_cases_total=len(mask),
                        description=description)


def auc_with_jackknife(ratings: np.ndarray, diseased: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical (Wilcoxon, ties count half) AUC of ``ratings[..., c]`` and its leave-one-case-out values.

    Uses placement values: with ``V10_a`` the share of non-diseased ratings below diseased case ``a`` (ties half) and
    ``V01_b`` the share of diseased ratings above non-diseased case ``b``, ``AUC = mean(V10) = mean(V01)``, leaving
    out ``a`` gives ``(n1 AUC - V10_a) / (n1 - 1)`` and leaving out ``b`` gives ``(n0 AUC - V01_b) / (n0 - 1)``.
    """
    x = np.asarray(ratings, dtype=np.float64)
    d = np.asarray(diseased, dtype=bool)
    pos, neg = x[..., d], x[..., ~d]
    n1, n0 = pos.shape[-1], neg.shape[-1]
    lead = x.shape[:-1]
    flat_pos, flat_neg = pos.reshape(-1, n1), neg.reshape(-1, n0)
    v10 = np.empty_like(flat_pos)
    v01 = np.empty_like(flat_neg)
    for row in range(flat_pos.shape[0]):
        sn, sp = np.sort(flat_neg[row]), np.sort(flat_pos[row])
        lo, hi = np.searchsorted(sn, flat_pos[row], "left"), np.searchsorted(sn, flat_pos[row], "right")
        v10[row] = (lo + 0.5 * (hi - lo)) / n0
        lo, hi = np.searchsorted(sp, flat_neg[row], "left"), np.searchsorted(sp, flat_neg[row], "right")
        v01[row] = (n1 - hi + 0.5 * (hi - lo)) / n1
    auc = v10.mean(axis=1)
    jack = np.empty((flat_pos.shape[0], x.shape[-1]))
    jack[:, d] = (n1 * auc[:, None] - v10) / (n1 - 1) if n1 > 1 else np.nan
    jack[:, ~d] = (n0 * auc[:, None] - v01) / (n0 - 1) if n0 > 1 else np.nan
    return auc.reshape(lead), jack.reshape(*lead, x.shape[-1])


def estimate_fom(table: ReaderTable, fom: str, threshold: float | None = None,
                 positive: Sequence[str] | None = None, where: str = "table") -> FOMEstimates:
    """The FOM of every reader in every modality, with its jackknife (see the module docstring).

    * ``auc``: needs ratings; the truth must be binary (or ``positive`` names the diseased values).
    * ``sensitivity`` / ``specificity``: a positive call is a rating ``>= threshold``, or an answer that is positive
      (in ``positive``, or 1/true); jackknifed over the diseased / non-diseased cases only.
    * ``accuracy``: answers equal to the truth (any labels, e.g. seven classes) when no ``positive`` is given;
      otherwise, and for ratings with a threshold, the binary call agreeing with the binary truth.
    """
    if fom not in FOMS:
        raise ExportError(f"unknown figure of merit {fom!r}; choose from {', '.join(FOMS)}")
    t, r, c = table.shape
    if fom == "auc":
        if table.kind != "rating":
            raise ExportError(f"{where}: fom auc needs confidence ratings (--rating COL), not answers")
        diseased = binary_labels(table.truth, positive, "truth", where)
        n1, n0 = int(diseased.sum()), int((~diseased).sum())
        if n1 == 0 or n0 == 0:
            raise UndefinedFOMError(f"{where}: AUC is undefined: {n1} diseased and {n0} non-diseased cases; it needs "
                                    "both")
        if n1 < 2 or n0 < 2:
            raise UndefinedFOMError(f"{where}: AUC cannot be jackknifed with {n1} diseased and {n0} non-diseased "
                                    "cases; it needs at least two of each")
        theta, jack = auc_with_jackknife(table.values, diseased)
        return FOMEstimates("auc", theta, jack, table.cases, c,
                            f"empirical ROC AUC of the ratings ({n1} diseased, {n0} non-diseased cases)")
    if table.kind == "rating":
        if threshold is None:
            raise ExportError(f"{where}: fom {fom} with ratings needs --threshold T (a rating >= T counts as a "
                              "positive call)")
        calls = table.values >= float(threshold)
        how = f"rating >= {threshold:g} is a positive call"
    elif fom == "accuracy" and positive is None:
        hits = table.values == table.truth[None, None, :]
        return hit_fom(hits, np.ones(c, dtype=bool), "accuracy", table.cases,
                       "proportion of answers equal to the truth", "")
    else:
        calls = binary_labels(table.values.reshape(-1), positive, "answer", where).reshape(t, r, c)
        how = "answer " + (f"in {sorted({norm_label(p) for p in positive})}" if positive else "1/true") + \
              " is a positive call"
    diseased = binary_labels(table.truth, positive, "truth", where)
    if fom == "sensitivity":
        return hit_fom(calls, diseased, "sensitivity", table.cases, f"sensitivity ({how}), jackknifed over the "
                       f"{int(diseased.sum())} diseased cases", "diseased")
    if fom == "specificity":
        return hit_fom(~calls, ~diseased, "specificity", table.cases, f"specificity ({how}), jackknifed over the "
                       f"{int((~diseased).sum())} non-diseased cases", "non-diseased")
    return hit_fom(calls == diseased[None, None, :], np.ones(c, dtype=bool), "accuracy", table.cases,
                   f"proportion correct ({how})", "")


# --------------------------------------------------------------------------------------------- OR-Hillis


@dataclass(frozen=True)
class Covariances:
    """The OR error covariances, averaged over the reader x modality pairs of each kind (None where no pair)."""

    var: float
    cov1: float | None
    cov2: float | None
    cov3: float | None
    per_modality_var: tuple[float, ...] = ()
    per_modality_cov2: tuple[float | None, ...] = ()


def jackknife_covariances(jackknife: np.ndarray) -> Covariances:
    """``Var, Cov1, Cov2, Cov3`` from leave-one-case-out FOMs ``[t, r, k]``: ``(K-1)/K`` times the cross-products."""
    jack = np.asarray(jackknife, dtype=np.float64)
    t, r, k = jack.shape
    x = jack.reshape(t * r, k)
    x = x - x.mean(axis=1, keepdims=True)
    cov = (x @ x.T) * (k - 1) / k
    mod = np.repeat(np.arange(t), r)
    rdr = np.tile(np.arange(r), t)
    same_m = mod[:, None] == mod[None, :]
    same_r = rdr[:, None] == rdr[None, :]

    def mean(mask: np.ndarray) -> float | None:
        return float(cov[mask].mean()) if mask.any() else None

    per_var = tuple(float(np.diag(cov)[mod == i].mean()) for i in range(t))
    per_cov2 = tuple(mean(same_m & ~same_r & (mod[:, None] == i)) for i in range(t))
    var = mean(same_m & same_r)
    assert var is not None
    return Covariances(var=var, cov1=mean(~same_m & same_r), cov2=mean(same_m & ~same_r),
                       cov3=mean(~same_m & ~same_r), per_modality_var=per_var, per_modality_cov2=per_cov2)


@dataclass(frozen=True)
class Estimate:
    """A modality mean or a difference, with its standard error and CI (``df`` None: normal quantiles)."""

    label: str
    estimate: float
    se: float | None
    low: float | None
    high: float | None
    df: float | None
    statistic: float | None = None  # t (or z) of a difference
    p_value: float | None = None


@dataclass(frozen=True)
class GlobalTest:
    """The analysis' test of equal modality means."""

    statistic_name: str  # "F" or "chi2"
    statistic: float | None
    ndf: float
    ddf: float | None  # None for chi-square
    p_value: float | None
    undefined: str = ""  # why the test could not be computed


@dataclass(frozen=True)
class Analysis:
    """One of RRRC, FRRC, RRFC."""

    key: str
    title: str
    test: GlobalTest | None
    modality_means: tuple[Estimate, ...]
    differences: tuple[Estimate, ...]
    note: str = ""


@dataclass
class ORResult:
    """Everything an OR-Hillis analysis reports; ``to_dict`` for JSON, ``text`` for a terminal or a paper."""

    fom: str
    fom_description: str
    alpha: float
    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    n_cases: int  # cases the jackknife ran over
    n_cases_total: int
    theta: np.ndarray  # [t, r]
    covariances: Covariances
    ms_t: float | None
    ms_r: float | None
    ms_tr: float | None
    var_r: float | None  # reader variance component (OR), from the mean squares and covariances
    var_tr: float | None  # reader x modality variance component
    analyses: dict[str, Analysis]
    notes: list[str] = field(default_factory=list)

    @property
    def means(self) -> np.ndarray:
        """Each modality's FOM averaged over readers."""
        return self.theta.mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (see :func:`lesionlab.core.io.json_safe` for the conversion of numpy values)."""
        from lesionlab.core.io import json_safe

        cov = self.covariances
        return json_safe({
            "method": "Obuchowski-Rockette with Hillis (2007) denominator degrees of freedom; jackknife covariances",
            "fom": self.fom, "fom_description": self.fom_description, "alpha": self.alpha,
            "modalities": list(self.modalities), "readers": list(self.readers), "n_cases": self.n_cases,
            "n_cases_total": self.n_cases_total,
            "fom_per_reader": {m: dict(zip(self.readers, self.theta[i].tolist(), strict=True))
                               for i, m in enumerate(self.modalities)},
            "fom_mean": dict(zip(self.modalities, self.means.tolist(), strict=True)),
            "mean_squares": {"ms_t": self.ms_t, "ms_r": self.ms_r, "ms_tr": self.ms_tr},
            "covariances": {"var": cov.var, "cov1": cov.cov1, "cov2": cov.cov2, "cov3": cov.cov3,
                            "per_modality_var": dict(zip(self.modalities, cov.per_modality_var, strict=True)),
                            "per_modality_cov2": dict(zip(self.modalities, cov.per_modality_cov2, strict=True))},
            "variance_components": {"var_r": self.var_r, "var_tr": self.var_tr},
            "analyses": {k: asdict(a) for k, a in self.analyses.items()},
            "notes": list(self.notes),
        })

    def text(self) -> str:
        """A plain-text report in the layout of the OR-DBM MRMC software's output."""
        cov = self.covariances
        lines = [f"OR-Hillis MRMC analysis: {FOM_TITLES.get(self.fom, self.fom)}",
                 f"  {self.fom_description}",
                 f"  {len(self.readers)} readers x {len(self.modalities)} modalities x {self.n_cases} cases"
                 + (f" (of {self.n_cases_total})" if self.n_cases != self.n_cases_total else "")
                 + f"; alpha {self.alpha:g}", "",
                 "FOM per reader:", "  reader      " + "".join(f"{m:>14}" for m in self.modalities)]
        for j, rd in enumerate(self.readers):
            lines.append(f"  {rd:<12}" + "".join(f"{self.theta[i, j]:>14.8f}" for i in range(len(self.modalities))))
        lines.append("  mean        " + "".join(f"{v:>14.8f}" for v in self.means))
        lines += ["", "Mean squares and jackknife covariances:",
                  f"  MS(T) {_g(self.ms_t)}  MS(R) {_g(self.ms_r)}  MS(T:R) {_g(self.ms_tr)}",
                  f"  Var {_g(cov.var)}  Cov1 {_g(cov.cov1)}  Cov2 {_g(cov.cov2)}  Cov3 {_g(cov.cov3)}",
                  f"  variance components: reader {_g(self.var_r)}, reader x modality {_g(self.var_tr)}"]
        for a in self.analyses.values():
            lines += ["", f"{a.title}:"]
            if a.test is not None:
                tst = a.test
                if tst.statistic is None:
                    lines.append(f"  test undefined: {tst.undefined}")
                elif tst.ddf is None:
                    lines.append(f"  {tst.statistic_name} = {tst.statistic:.6f}, df = {tst.ndf:g}, "
                                 f"p = {tst.p_value:.6g}")
                else:
                    lines.append(f"  {tst.statistic_name} = {tst.statistic:.6f}, ndf = {tst.ndf:g}, "
                                 f"ddf = {tst.ddf:.6f}, p = {tst.p_value:.6g}")
            for d in a.differences:
                lines.append(f"  difference {d.label}: {d.estimate:.8f}, SE {_g(d.se)}, "
                             f"{100 * (1 - self.alpha):.0f}% CI ({_g(d.low)}, {_g(d.high)})"
                             + ("" if d.p_value is None else f", p = {d.p_value:.6g}"))
            for m in a.modality_means:
                lines.append(f"  modality {m.label}: {m.estimate:.8f}, SE {_g(m.se)}, "
                             f"{100 * (1 - self.alpha):.0f}% CI ({_g(m.low)}, {_g(m.high)})"
                             + ("" if m.df is None else f", df {m.df:.4f}"))
            if a.note:
                lines.append(f"  note: {a.note}")
        if self.notes:
            lines += ["", *[f"Note: {n}" for n in self.notes]]
        return "\n".join(lines)

    def tests(self, label: str = "") -> list[Any]:
        """The pairwise differences of every analysis as :class:`lesionlab.evaluate.stats.TestResult` rows."""
        from lesionlab.evaluate.stats import TestResult

        out = []
        for a in self.analyses.values():
            for d in a.differences:
                if d.p_value is None:
                    continue
                out.append(TestResult(
                    test=f"OR-Hillis {a.key.upper()} ({a.title})", statistic_name="z" if d.df is None else "t",
                    statistic=float(d.statistic or 0.0), p_value=float(d.p_value),
                    n={"readers": len(self.readers), "cases": self.n_cases},
                    effect_name=f"{self.fom} difference {d.label}", effect_size=d.estimate,
                    ci=None if d.low is None else (float(d.low), float(d.high)), ci_level=1 - self.alpha,
                    label=(f"{label}: " if label else "") + f"{self.fom} {d.label}",
                    detail={"df": d.df, "se": d.se}))
        return out


def _g(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.10g}"


def _two_sided_t(stat: float, df: float | None) -> float:
    return float(2 * (sps.norm.sf(abs(stat)) if df is None else sps.t.sf(abs(stat), df)))


def _interval(label: str, est: float, se: float, df: float | None, alpha: float, with_test: bool) -> Estimate:
    q = sps.norm.ppf(1 - alpha / 2) if df is None else sps.t.ppf(1 - alpha / 2, df)
    stat = est / se if with_test and se > 0 else None
    return Estimate(label, float(est), float(se), float(est - q * se), float(est + q * se), df,
                    statistic=None if stat is None else float(stat),
                    p_value=None if stat is None else _two_sided_t(stat, df))


def or_hillis(theta: np.ndarray, covariances: Covariances | None = None, jackknife: np.ndarray | None = None,
              alpha: float = 0.05, modalities: Sequence[str] | None = None, readers: Sequence[str] | None = None,
              fom: str = "fom", fom_description: str = "", n_cases: int | None = None,
              n_cases_total: int | None = None) -> ORResult:
    """OR-Hillis from FOMs ``theta[t, r]`` and either the jackknife ``[t, r, k]`` or given covariances.

    With one reader the random-reader analyses (RRRC, RRFC) are left out and said to be (they need at least two);
    the fixed-reader result stays. With one modality there is nothing to compare: each analysis gives the modality's
    mean with its CI only.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 2:
        raise UndefinedFOMError(f"theta must be [modalities, readers], got shape {theta.shape}")
    if not np.isfinite(theta).all():
        raise UndefinedFOMError("a reader's figure of merit is undefined (not finite); check the data per reader")
    t, r = theta.shape
    mods = tuple(str(m) for m in (modalities or range(t)))
    rdrs = tuple(str(x) for x in (readers or range(r)))
    if covariances is None:
        if jackknife is None:
            raise UndefinedFOMError("give the jackknife FOMs or the covariances")
        jack = np.asarray(jackknife, dtype=np.float64)
        if jack.shape[:2] != theta.shape:
            raise UndefinedFOMError(f"jackknife shape {jack.shape} does not match theta {theta.shape}")
        if not np.isfinite(jack).all():
            raise UndefinedFOMError("the figure of merit is undefined with some case left out; too few cases")
        covariances = jackknife_covariances(jack)
        n_cases = jack.shape[2] if n_cases is None else n_cases
    n_cases = int(n_cases or 0)
    cov = covariances
    notes: list[str] = []
    mean_i = theta.mean(axis=1)
    mean_j = theta.mean(axis=0)
    grand = theta.mean()
    ms_t = r * float(((mean_i - grand) ** 2).sum()) / (t - 1) if t > 1 else None
    ms_r = t * float(((mean_j - grand) ** 2).sum()) / (r - 1) if r > 1 else None
    ms_tr = (float(((theta - mean_i[:, None] - mean_j[None, :] + grand) ** 2).sum()) / ((t - 1) * (r - 1))
             if t > 1 and r > 1 else None)
    ms_r_i = [float(((theta[i] - mean_i[i]) ** 2).sum()) / (r - 1) if r > 1 else None for i in range(t)]
    c1 = cov.cov1 if cov.cov1 is not None else 0.0
    c2 = cov.cov2 if cov.cov2 is not None else 0.0
    c3 = cov.cov3 if cov.cov3 is not None else 0.0
    c23 = max(c2 - c3, 0.0)
    if r > 1 and c2 - c3 < 0:
        notes.append(f"Cov2 - Cov3 = {c2 - c3:.4g} < 0 was set to 0 in the error terms (Hillis 2007)")
    var_tr = ms_tr - cov.var + c1 + c2 - c3 if ms_tr is not None else None
    var_r = ((ms_r - cov.var - (t - 1) * c1 + c2 + (t - 1) * c3) / t) if ms_r is not None else None
    pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
    analyses: dict[str, Analysis] = {}

    # random readers, random cases
    if r > 1:
        means = []
        for i in range(t):
            c2i = cov.per_modality_cov2[i] if cov.per_modality_cov2 else c2
            den_i = ms_r_i[i] + r * max(c2i or 0.0, 0.0)
            df_i = den_i ** 2 / (ms_r_i[i] ** 2 / (r - 1)) if ms_r_i[i] > 0 else None
            means.append(_interval(mods[i], mean_i[i], np.sqrt(den_i / r), df_i, alpha, False))
        test, diffs = None, []
        if t > 1:
            den = ms_tr + r * c23
            if den <= 0:
                test = GlobalTest("F", None, t - 1, None, None, "MS(T:R) + J max(Cov2 - Cov3, 0) is 0: readers do "
                                  "not vary; the random-reader test is undefined")
            else:
                ddf = den ** 2 / (ms_tr ** 2 / ((t - 1) * (r - 1))) if ms_tr > 0 else np.inf
                f = ms_t / den
                test = GlobalTest("F", f, t - 1, ddf, float(sps.f.sf(f, t - 1, ddf)))
                se = np.sqrt(2 * den / r)
                diffs = [_interval(f"{mods[a]} - {mods[b]}", mean_i[a] - mean_i[b], se,
                                   None if not np.isfinite(ddf) else ddf, alpha, True) for a, b in pairs]
        analyses["rrrc"] = Analysis("rrrc", "random readers, random cases", test, tuple(means), tuple(diffs),
                                    "modality CIs: MS(R) of the modality + J max(Cov2 of the modality, 0), with "
                                    "Hillis's df")
    else:
        notes.append("one reader: the random-reader analyses (RRRC, RRFC) need at least two readers; only the "
                     "fixed-reader (FRRC) result is given, and it applies to this reader only")

    # fixed readers, random cases
    means = []
    for i in range(t):
        c2i = cov.per_modality_cov2[i] if cov.per_modality_cov2 else c2
        var_i = cov.per_modality_var[i] if cov.per_modality_var else cov.var
        v = (var_i + (r - 1) * (c2i or 0.0)) / r
        means.append(_interval(mods[i], mean_i[i], np.sqrt(max(v, 0.0)), None, alpha, False))
    test, diffs = None, []
    if t > 1:
        den = cov.var - c1 + (r - 1) * c23
        if den <= 0:
            test = GlobalTest("chi2", None, t - 1, None, None, "Var - Cov1 + (J-1) max(Cov2 - Cov3, 0) is 0: no "
                              "case variability; the fixed-reader test is undefined")
        else:
            chi2 = (t - 1) * ms_t / den
            test = GlobalTest("chi2", chi2, t - 1, None, float(sps.chi2.sf(chi2, t - 1)))
            se = np.sqrt(2 * den / r)
            diffs = [_interval(f"{mods[a]} - {mods[b]}", mean_i[a] - mean_i[b], se, None, alpha, True)
                     for a, b in pairs]
    analyses["frrc"] = Analysis("frrc", "fixed readers, random cases", test, tuple(means), tuple(diffs),
                                "normal quantiles; the conclusions apply to these readers only")

    # random readers, fixed cases
    if r > 1:
        means = [_interval(mods[i], mean_i[i], np.sqrt(ms_r_i[i] / r), r - 1, alpha, False) for i in range(t)]
        test, diffs = None, []
        if t > 1:
            if ms_tr <= 0:
                test = GlobalTest("F", None, t - 1, (t - 1) * (r - 1), None, "MS(T:R) is 0: the fixed-case test is "
                                  "undefined")
            else:
                f = ms_t / ms_tr
                ddf = (t - 1) * (r - 1)
                test = GlobalTest("F", f, t - 1, ddf, float(sps.f.sf(f, t - 1, ddf)))
                se = np.sqrt(2 * ms_tr / r)
                diffs = [_interval(f"{mods[a]} - {mods[b]}", mean_i[a] - mean_i[b], se, ddf, alpha, True)
                         for a, b in pairs]
        analyses["rrfc"] = Analysis("rrfc", "random readers, fixed cases", test, tuple(means), tuple(diffs),
                                    "the conclusions apply to these cases only")
    if t == 1:
        notes.append("one modality: no comparison; each analysis gives the modality's mean and CI only")
    return ORResult(fom=fom, fom_description=fom_description, alpha=alpha, modalities=mods, readers=rdrs,
                    n_cases=n_cases, n_cases_total=int(n_cases_total or n_cases), theta=theta, covariances=cov,
                    ms_t=ms_t, ms_r=ms_r, ms_tr=ms_tr, var_r=var_r, var_tr=var_tr, analyses=analyses, notes=notes)


def analyze_table(table: ReaderTable, fom: str, threshold: float | None = None,
                  positive: Sequence[str] | None = None, alpha: float = 0.05, where: str = "table") -> ORResult:
    """FOMs, jackknife and OR-Hillis for a fully crossed :class:`ReaderTable` in one call."""
    est = estimate_fom(table, fom, threshold=threshold, positive=positive, where=where)
    return or_hillis(est.theta, jackknife=est.jackknife, alpha=alpha, modalities=table.modalities,
                     readers=table.readers, fom=fom, fom_description=est.description, n_cases=len(est.cases),
                     n_cases_total=est.n_cases_total)


def mrmc(frame: pd.DataFrame, reader: str, modality: str, case: str, truth: str, fom: str,
         rating: str | None = None, answer: str | None = None, threshold: float | None = None,
         positive: Sequence[str] | None = None, alpha: float = 0.05, where: str = "table",
         modality_order: Sequence[str] | None = None) -> ORResult:
    """The whole ``lesionlab study mrmc`` analysis on a long table (one row per reader x modality x case)."""
    if not 0 < alpha < 1:
        raise ExportError(f"alpha must be between 0 and 1, got {alpha}")
    table = reader_table(frame, reader, modality, case, truth, rating=rating, answer=answer, where=where,
                         modality_order=modality_order)
    return analyze_table(table, fom, threshold=threshold, positive=positive, alpha=alpha, where=where)
