"""Statistical tests between runs and between models, each returning a :class:`TestResult` that prints itself.

* :func:`mann_whitney` - independent groups of runs (e.g. seeds at 64 px vs 224 px, with vs without clinical
  data, as the HAM10000 study compares conditions), with the rank-biserial correlation as effect size.
* :func:`mcnemar` - two models on the same test images (which images each gets right), with the discordant-pair
  odds ratio; exact binomial when discordant pairs are few, chi-square with continuity correction otherwise.
* :func:`paired_bootstrap` - the difference in any metric between two models on the same images, with a
  percentile CI and a bootstrap p-value.

Every result carries its test name, statistic, p-value, sample sizes and effect size, so no p-value is ever printed
alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesionlab.core.errors import LesionlabError
from lesionlab.core.metrics import METRIC_FUNCTIONS, MetricFn, bootstrap_indices

MCNEMAR_EXACT_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor


class StatsInputError(LesionlabError, ValueError):
    """Samples that a test cannot be run on; the message names the group or the mismatch."""


def format_p(p: float) -> str:
    """A p-value to three significant digits, without pretending to precision below 1e-4."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.3g}"


@dataclass(frozen=True)
class TestResult:
    """One test's outcome, with everything a reader needs to judge the p-value."""

    __test__ = False  # not a pytest test class

    test: str
    statistic_name: str
    statistic: float
    p_value: float
    n: dict[str, int]
    effect_name: str
    effect_size: float | None
    alternative: str = "two-sided"
    ci: tuple[float, float] | None = None
    ci_level: float | None = None
    label: str = ""  # what was compared, e.g. "balanced_accuracy: 64px vs 224px (model=efficientnet_b0)"
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} = {v}" for k, v in self.n.items())
        effect = "undefined" if self.effect_size is None else f"{self.effect_size:.3g}"
        text = (f"{self.test} ({self.alternative}): {self.statistic_name} = {self.statistic:.4g}, "
                f"{format_p(self.p_value)}; n: {sizes}; {self.effect_name} = {effect}")
        if self.ci is not None:
            text += f" [{100 * (self.ci_level or 0.95):.0f}% CI {self.ci[0]:.3g} to {self.ci[1]:.3g}]"
        if self.effect_size is None and "effect_undefined" in self.detail:
            text += f" ({self.detail['effect_undefined']})"
        return f"{self.label}: {text}" if self.label else text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestResult:
        """Inverse of :meth:`to_dict` (``text`` is recomputed), so saved tests can be reported again."""
        fields = {k: v for k, v in data.items() if k != "text"}
        if fields.get("ci") is not None:
            fields["ci"] = tuple(fields["ci"])
        try:
            return cls(**fields)
        except TypeError as err:
            raise StatsInputError(f"not a saved test result ({err})") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the grid report and experiment tables store it)."""
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        out["text"] = str(self)
        return out


def _clean(values: Sequence[float | None], name: str) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    if arr.size == 0:
        raise StatsInputError(f"group {name!r} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise StatsInputError(f"group {name!r} has an undefined value at position {int(bad[0])}; "
                              "drop undefined metrics explicitly before testing")
    return arr


def mann_whitney(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("A", "B"),
                 alternative: str = "two-sided", label: str = "") -> TestResult:
    """Mann-Whitney U of group ``a`` against ``b`` (scipy, exact for small groups without ties).

    Effect size: rank-biserial correlation ``r = 2 U_a / (n_a n_b) - 1`` in [-1, 1]; positive when ``a`` tends to
    be larger (``r`` is the probability that a random ``a`` beats a random ``b``, minus the reverse).
    """
    x, y = _clean(a, names[0]), _clean(b, names[1])
    res = sps.mannwhitneyu(x, y, alternative=alternative)
    u = float(res.statistic)
    return TestResult(
        test="Mann-Whitney U", statistic_name=f"U({names[0]})", statistic=u, p_value=float(res.pvalue),
        n={names[0]: int(x.size), names[1]: int(y.size)}, effect_name="rank-biserial r",
        effect_size=2.0 * u / (x.size * y.size) - 1.0, alternative=alternative, label=label,
        detail={"median": {names[0]: float(np.median(x)), names[1]: float(np.median(y))},
                "mean": {names[0]: float(np.mean(x)), names[1]: float(np.mean(y))}},
    )


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], names: tuple[str, str] = ("A", "B"),
            exact: bool | None = None, label: str = "") -> TestResult:
    """McNemar's test on paired right/wrong outcomes of two models on the same images.

    ``b`` = images only A gets right, ``c`` = images only B gets right. Exact two-sided binomial test of
    ``b ~ Bin(b + c, 1/2)`` when ``b + c < 25`` (or ``exact=True``), else chi-square with continuity correction
    ``(|b - c| - 1)^2 / (b + c)``. Effect size: the discordant odds ratio ``b / c`` (undefined when ``c = 0``).
    """
    ra = np.asarray(correct_a, dtype=bool)
    rb = np.asarray(correct_b, dtype=bool)
    if ra.shape != rb.shape or ra.ndim != 1:
        raise StatsInputError(f"paired outcomes differ in length: {names[0]} {ra.shape}, {names[1]} {rb.shape}")
    if ra.size == 0:
        raise StatsInputError("no paired images")
    b = int(np.sum(ra & ~rb))
    c = int(np.sum(~ra & rb))
    disc = b + c
    use_exact = disc < MCNEMAR_EXACT_BELOW if exact is None else exact
    if disc == 0:
        stat, p, name, how = 0.0, 1.0, "b", "no discordant pairs"
    elif use_exact:
        stat, p, name, how = float(b), float(sps.binomtest(b, disc, 0.5).pvalue), "b", "exact binomial"
    else:
        stat = (abs(b - c) - 1.0) ** 2 / disc
        p, name, how = float(sps.chi2.sf(stat, df=1)), "chi2", "chi-square, continuity-corrected"
    detail: dict[str, Any] = {"b_only_" + names[0]: b, "c_only_" + names[1]: c, "method": how,
                              "accuracy": {names[0]: float(ra.mean()), names[1]: float(rb.mean())}}
    if c == 0:
        detail["effect_undefined"] = f"odds ratio undefined: {names[1]} is never right where {names[0]} is wrong"
    return TestResult(
        test="McNemar", statistic_name=name, statistic=stat, p_value=p,
        n={"paired images": int(ra.size), "discordant": disc},
        effect_name=f"odds ratio ({names[0]} only right : {names[1]} only right)",
        effect_size=None if c == 0 else b / c, label=label, detail=detail,
    )


def paired_bootstrap(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, metric_fn: MetricFn,
                     metric_name: str, names: tuple[str, str] = ("A", "B"), n: int = 1000, seed: int = 0,
                     level: float = 0.95, stratify: bool = True, label: str = "") -> TestResult:
    """Bootstrap of ``metric(A) - metric(B)`` resampling the same images for both models.

    CI: percentile. p-value (two-sided, H0: no difference): the share of centred replicates at least as far from 0
    as the observed difference, ``(1 + #{|d* - d| >= |d|}) / (n + 1)``. Replicates where either metric is undefined
    are dropped and counted.
    """
    y = np.asarray(y_true)
    pa, pb = np.asarray(proba_a), np.asarray(proba_b)
    if pa.shape != pb.shape or pa.shape[0] != y.shape[0]:
        raise StatsInputError(f"paired predictions differ in shape: {names[0]} {pa.shape}, {names[1]} {pb.shape}, "
                              f"{y.shape[0]} labels")
    ma, mb = metric_fn(y, pa), metric_fn(y, pb)
    if ma is None or mb is None:
        raise StatsInputError(f"{metric_name} is undefined on the full sample for "
                              f"{names[0] if ma is None else names[1]}")
    observed = float(ma - mb)
    diffs = []
    for idx in bootstrap_indices(y, n, seed, stratify):
        va, vb = metric_fn(y[idx], pa[idx]), metric_fn(y[idx], pb[idx])
        if va is not None and vb is not None:
            diffs.append(va - vb)
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < n // 2:
        raise StatsInputError(f"{metric_name} defined on only {d.size} of {n} bootstrap replicates")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    p = (1.0 + np.sum(np.abs(d - observed) >= abs(observed))) / (d.size + 1.0)
    return TestResult(
        test="paired bootstrap", statistic_name=f"{metric_name} difference", statistic=observed, p_value=float(p),
        n={"paired images": int(y.size), "replicates": int(d.size)},
        effect_name=f"{metric_name} {names[0]} - {names[1]}", effect_size=observed, ci=(float(low), float(high)),
        ci_level=level, label=label,
        detail={metric_name: {names[0]: float(ma), names[1]: float(mb)}, "seed": seed, "stratified": stratify},
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    m = p.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def _levels(values: pd.Series) -> list[Any]:
    """The distinct values of a column: numbers in numeric order (64 before 224), mixed types in text order."""
    levels = list(values.dropna().unique())
    try:
        levels.sort()
    except TypeError:
        levels.sort(key=str)
    return levels


def compare_groups(rows: pd.DataFrame, metric: str, by: str, within: Sequence[str] = (),
                   pairs: Sequence[tuple[Any, Any]] | None = None, notes: list[str] | None = None
                   ) -> list[TestResult]:
    """Mann-Whitney between pairs of ``by`` values (default: every pair), separately within each combination of the
    ``within`` columns; one family for the Holm adjustment, stored in each result's ``detail["p_holm"]``.

    ``rows`` holds one row per run (e.g. columns ``model``, ``image_size``, ``seed``, ``balanced_accuracy``). Runs
    whose metric is undefined are left out, and a pair with an empty side is skipped; both are said in ``notes``.
    """
    for col in (metric, by, *within):
        if col not in rows.columns:
            raise StatsInputError(f"column {col!r} not in the runs table (columns: {', '.join(rows.columns)})")
    notes = notes if notes is not None else []
    results: list[TestResult] = []
    groups = rows.groupby(list(within), sort=False) if within else [((), rows)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        context = ", ".join(f"{c}={v}" for c, v in zip(within, key, strict=True))
        for la, lb in pairs if pairs is not None else itertools.combinations(_levels(sub[by]), 2):
            a, b = sub.loc[sub[by] == la, metric], sub.loc[sub[by] == lb, metric]
            label = f"{metric}: {by}={la} vs {by}={lb}" + (f" ({context})" if context else "")
            if int(a.isna().sum() + b.isna().sum()):
                notes.append(f"{label}: {int(a.isna().sum() + b.isna().sum())} run(s) with undefined {metric} left out")
            a, b = a.dropna().tolist(), b.dropna().tolist()
            if not a or not b:
                notes.append(f"{label}: skipped, no finished runs on one side (n = {len(a)} vs {len(b)})")
                continue
            result = mann_whitney(a, b, names=(str(la), str(lb)), label=label)
            results.append(replace(result, detail={**result.detail, "axis": by, "metric": metric,
                                                   "within": dict(zip(within, key, strict=True))}))
    adjusted = holm_adjust([r.p_value for r in results]) if results else []
    return [replace(r, detail={**r.detail, "p_holm": p}) for r, p in zip(results, adjusted, strict=True)]


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B"),
                        metrics: Sequence[str] = ("accuracy", "balanced_accuracy"), n_boot: int = 1000,
                        seed: int = 0) -> list[TestResult]:
    """McNemar on per-image correctness plus a paired bootstrap per metric, for two predictions tables.

    The tables must cover the same images with the same labels (see
    :func:`lesionlab.evaluate.predictions.align_predictions`).
    """
    from lesionlab.evaluate.predictions import align_predictions, arrays

    unknown = [m for m in metrics if m not in METRIC_FUNCTIONS]
    if unknown:
        raise StatsInputError(f"unknown metric(s) {unknown}; choose from {', '.join(METRIC_FUNCTIONS)}")
    a, b = align_predictions(a, b, names)
    y, pa = arrays(a)
    _, pb = arrays(b)
    results = [mcnemar(pa.argmax(axis=1) == y, pb.argmax(axis=1) == y, names=names, label="per-image correctness")]
    for m in metrics:
        results.append(paired_bootstrap(y, pa, pb, METRIC_FUNCTIONS[m], m, names=names, n=n_boot, seed=seed,
                                        label=m))
    return results
