"""Study planning: readers and cases for a chosen power, by the OR-Hillis power method.

Hillis, Obuchowski & Berbaum (Acad Radiol 2011; Hillis & Berbaum, Acad Radiol 2004): for two modalities whose
figure of merit differs by ``d``, a study with ``J`` readers and ``K`` cases has OR-Hillis test statistic
approximately non-central ``F(1, ddf, lambda)`` with

    den    = var_TR + Var* - Cov1* + (J - 1) max(Cov2* - Cov3*, 0)
    lambda = J d^2 / (2 den)
    ddf    = den^2 / ((var_TR + Var* - Cov1* - max(Cov2* - Cov3*, 0))^2 / (J - 1))

where ``var_TR`` is the reader x modality variance component and the error covariances ``Var*, Cov1*, Cov2*,
Cov3*`` are those of a pilot with ``K0`` cases scaled by ``K0 / K`` (they shrink as cases are added; ``var_TR``
does not, which is why readers, not cases, limit the power of a random-reader study). Power =
``P(F(1, ddf, lambda) > F_{1-alpha}(1, ddf))``. The fixed-reader analysis uses ``chi2(1, lambda)`` with
``den = Var* - Cov1* + (J-1) max(Cov2* - Cov3*, 0)``.

The components come from pilot data (an answer export with two arms read on the same cases: crossover or revise)
through :mod:`lesionlab.study.mrmc`, or are given. The test suite checks the computed power against the rejection
rate of OR-Hillis on studies simulated by :mod:`lesionlab.study.simulate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from lesionlab.study.analysis_errors import StudyAnalysisError
from lesionlab.study.mrmc import ORResult

ANALYSES: tuple[str, ...] = ("rrrc", "frrc")
PILOT_FIGURES: tuple[str, ...] = ("accuracy", "malignant_sensitivity", "malignant_specificity", "mel_sensitivity",
                                  "malignant_auc")


@dataclass(frozen=True)
class VarianceComponents:
    """OR variance components of one figure of merit; the covariances belong to ``n_cases`` cases."""

    var_tr: float
    var: float
    cov1: float
    cov2: float
    cov3: float
    n_cases: int
    fom: str = "fom"
    source: str = "given"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_cases < 1:
            raise StudyAnalysisError(f"variance components need the pilot's number of cases (>= 1), got "
                                     f"{self.n_cases}")
        if self.var <= 0:
            raise StudyAnalysisError(f"Var must be > 0, got {self.var}")
        if self.var_tr < 0:
            raise StudyAnalysisError(f"var_TR must be >= 0, got {self.var_tr} (a negative estimate is set to 0 "
                                     "before planning)")

    @classmethod
    def from_or(cls, result: ORResult, source: str = "pilot") -> VarianceComponents:
        """The components estimated by an OR-Hillis analysis of two modalities (negative var_TR set to 0)."""
        cov = result.covariances
        if len(result.modalities) != 2:
            raise StudyAnalysisError(f"planning needs a pilot with two arms, got {len(result.modalities)}")
        if len(result.readers) < 2 or result.var_tr is None:
            raise StudyAnalysisError("planning needs a pilot with at least two readers (var_TR is estimated from the "
                                     "reader x arm interaction)")
        notes = []
        var_tr = float(result.var_tr)
        if var_tr < 0:
            notes.append(f"the pilot's var_TR estimate {var_tr:.3g} is negative and was set to 0")
            var_tr = 0.0
        return cls(var_tr=var_tr, var=float(cov.var), cov1=float(cov.cov1 or 0.0), cov2=float(cov.cov2 or 0.0),
                   cov3=float(cov.cov3 or 0.0), n_cases=int(result.n_cases_total), fom=result.fom, source=source,
                   notes=tuple(notes))

    def at(self, cases: float) -> tuple[float, float, float, float]:
        """``(Var, Cov1, Cov2, Cov3)`` for a study with ``cases`` cases (the same mix of classes as the pilot)."""
        k = self.n_cases / float(cases)
        return self.var * k, self.cov1 * k, self.cov2 * k, self.cov3 * k


@dataclass(frozen=True)
class Power:
    """The power of one design."""

    readers: int
    cases: int
    effect: float
    alpha: float
    analysis: str
    power: float
    ncp: float
    ddf: float | None


def power(components: VarianceComponents, effect: float, readers: int, cases: int, alpha: float = 0.05,
          analysis: str = "rrrc") -> Power:
    """Power of the OR-Hillis test of two modalities differing by ``effect`` (see the module docstring)."""
    if analysis not in ANALYSES:
        raise StudyAnalysisError(f"analysis {analysis!r}: choose {' or '.join(ANALYSES)}")
    if not 0 < alpha < 1:
        raise StudyAnalysisError(f"alpha must be between 0 and 1, got {alpha}")
    if readers < (2 if analysis == "rrrc" else 1):
        raise StudyAnalysisError(f"the random-reader analysis needs at least two readers, got {readers}")
    if cases < 2:
        raise StudyAnalysisError(f"cases must be >= 2, got {cases}")
    var, cov1, cov2, cov3 = components.at(cases)
    c23 = max(cov2 - cov3, 0.0)
    if analysis == "frrc":
        den = var - cov1 + (readers - 1) * c23
        if den <= 0:
            raise StudyAnalysisError("Var - Cov1 + (J-1) max(Cov2 - Cov3, 0) <= 0: the components are not a valid "
                                     "covariance structure")
        ncp = readers * effect ** 2 / (2 * den)
        crit = sps.chi2.ppf(1 - alpha, 1)
        got = sps.ncx2.sf(crit, 1, ncp) if ncp > 0 else sps.chi2.sf(crit, 1)
        return Power(readers, cases, effect, alpha, analysis, float(got), float(ncp), None)
    den = components.var_tr + var - cov1 + (readers - 1) * c23
    ms_tr = components.var_tr + var - cov1 - c23
    if den <= 0 or ms_tr <= 0:
        raise StudyAnalysisError("the components give a non-positive error term (var_TR + Var - Cov1 - (Cov2 - Cov3) "
                                 "<= 0); check them")
    ncp = readers * effect ** 2 / (2 * den)
    ddf = den ** 2 / (ms_tr ** 2 / (readers - 1))
    crit = sps.f.ppf(1 - alpha, 1, ddf)
    got = sps.ncf.sf(crit, 1, ddf, ncp) if ncp > 0 else sps.f.sf(crit, 1, ddf)  # scipy's ncf mishandles ncp = 0
    return Power(readers, cases, effect, alpha, analysis, float(got), float(ncp), float(ddf))


def power_limit(components: VarianceComponents, effect: float, readers: int, alpha: float = 0.05) -> float:
    """The power that ``readers`` readers reach with unlimited cases (random readers: var_TR alone remains)."""
    if components.var_tr <= 0:
        return 1.0
    ncp = readers * effect ** 2 / (2 * components.var_tr)
    ddf = readers - 1
    return float(sps.ncf.sf(sps.f.ppf(1 - alpha, 1, ddf), 1, ddf, ncp))


def cases_for_power(components: VarianceComponents, effect: float, readers: int, target: float = 0.8,
                    alpha: float = 0.05, analysis: str = "rrrc", max_cases: int = 100_000) -> int | None:
    """The fewest cases giving ``target`` power with ``readers`` readers (None when no number of cases does)."""
    if power(components, effect, readers, max_cases, alpha, analysis).power < target:
        return None
    low, high = 2, max_cases
    if power(components, effect, readers, low, alpha, analysis).power >= target:
        return low
    while high - low > 1:  # power grows with the number of cases
        mid = (low + high) // 2
        if power(components, effect, readers, mid, alpha, analysis).power >= target:
            high = mid
        else:
            low = mid
    return high


@dataclass
class Plan:
    """Readers and cases for a target power: for each reader count the fewest cases, and a power grid."""

    components: VarianceComponents
    effect: float
    target: float
    alpha: float
    analysis: str
    rows: list[dict[str, Any]]
    grid: dict[int, dict[int, float]]  # readers -> cases -> power
    notes: list[str] = field(default_factory=list)

    def recommended(self) -> dict[str, Any] | None:
        """The reachable design with the fewest readings (readers x cases)."""
        ok = [r for r in self.rows if r["cases"] is not None]
        return min(ok, key=lambda r: (r["readers"] * r["cases"], r["readers"])) if ok else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        from lesionlab.core.io import json_safe

        return json_safe({"method": "OR-Hillis power (Hillis, Obuchowski & Berbaum 2011)", "analysis": self.analysis,
                          "effect": self.effect, "target_power": self.target, "alpha": self.alpha,
                          "components": asdict(self.components), "by_readers": self.rows,
                          "recommended": self.recommended(),
                          "grid": {str(r): {str(c): p for c, p in row.items()} for r, row in self.grid.items()},
                          "notes": self.notes})

    def text(self) -> str:
        """A plain-text table for the terminal."""
        c = self.components
        lines = [f"Study plan ({self.analysis.upper()}): detect a difference of {self.effect:g} in {c.fom} with power "
                 f"{self.target:g} at alpha {self.alpha:g} (two-sided)",
                 f"  variance components ({c.source}, covariances for {c.n_cases} cases): var_TR {c.var_tr:.4g}, "
                 f"Var {c.var:.4g}, Cov1 {c.cov1:.4g}, Cov2 {c.cov2:.4g}, Cov3 {c.cov3:.4g}", "",
                 "  readers   cases needed   power there   power with unlimited cases"]
        for r in self.rows:
            cases = "not reachable" if r["cases"] is None else f"{r['cases']:,}"
            got = "" if r["power"] is None else f"{r['power']:.3f}"
            lines.append(f"  {r['readers']:>7}   {cases:>12}   {got:>11}   {r['power_limit']:.3f}")
        best = self.recommended()
        if best is not None:
            lines += ["", f"  fewest readings: {best['readers']} readers x {best['cases']:,} cases "
                          f"({best['readers'] * best['cases']:,} readings per arm)"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan(components: VarianceComponents, effect: float, target: float = 0.8, alpha: float = 0.05,
         readers: Sequence[int] = tuple(range(3, 31)), grid_cases: Sequence[int] = (50, 100, 200, 400, 800),
         analysis: str = "rrrc", max_cases: int = 100_000) -> Plan:
    """For each reader count the fewest cases reaching ``target`` power, plus a readers x cases power grid."""
    if effect == 0:
        raise StudyAnalysisError("the effect to detect must be non-zero")
    if not 0 < target < 1:
        raise StudyAnalysisError(f"target power must be between 0 and 1, got {target}")
    readers = sorted({int(r) for r in readers})
    if not readers or readers[0] < (2 if analysis == "rrrc" else 1):
        raise StudyAnalysisError("the random-reader analysis needs at least two readers per design")
    rows = []
    for r in readers:
        k = cases_for_power(components, effect, r, target, alpha, analysis, max_cases)
        rows.append({"readers": r, "cases": k,
                     "power": None if k is None else power(components, effect, r, k, alpha, analysis).power,
                     "power_limit": power_limit(components, effect, r, alpha) if analysis == "rrrc" else 1.0})
    grid = {r: {int(k): power(components, effect, r, int(k), alpha, analysis).power for k in grid_cases}
            for r in readers}
    notes = list(components.notes)
    if analysis == "rrrc" and all(row["cases"] is None for row in rows):
        notes.append("no reader count in the range reaches the target: the reader x arm variance (var_TR) limits "
                     "the power; add readers or plan for a larger effect")
    return Plan(components, float(effect), float(target), float(alpha), analysis, rows, grid, notes)


def components_from_answers(answers: Any, fom: str = "accuracy", arms: tuple[str, str] = ("unassisted", "assisted"),
                            ) -> tuple[VarianceComponents, float]:
    """Variance components (and the observed difference, second arm minus first) from a pilot export."""
    from lesionlab.study.comparisons import mrmc_across_conditions

    if fom not in PILOT_FIGURES:
        raise StudyAnalysisError(f"figure of merit {fom!r}: choose one of {', '.join(PILOT_FIGURES)}")
    missing = [a for a in arms if a not in answers.conditions]
    if missing:
        raise StudyAnalysisError(f"{answers.source}: the pilot has no answers in arm(s) {', '.join(missing)} (arms: "
                                 f"{', '.join(answers.conditions)})")
    if not answers.paired_cases:
        raise StudyAnalysisError(f"{answers.source}: a {answers.design} pilot reads different cases in each arm, so "
                                 "the covariances between arms (Cov1, Cov3) cannot be estimated; use a crossover or "
                                 "revise pilot, or give the components (--components)")
    results, notes = mrmc_across_conditions(answers, list(arms))
    key = next((k for k in results if k == fom or k.startswith(fom + " (")), None)
    if key is None:
        raise StudyAnalysisError(f"{answers.source}: OR-Hillis of {fom} could not be run on the pilot: "
                                 + ("; ".join(notes) or "no result"))
    result = results[key]
    comps = VarianceComponents.from_or(result, source=f"pilot {answers.source} ({len(result.readers)} readers, "
                                                      f"{result.n_cases_total} cases, {arms[0]} vs {arms[1]})")
    means = dict(zip(result.modalities, result.means, strict=True))
    observed = float(means[arms[1]] - means[arms[0]])
    return comps, observed


def plan_figure(p: Plan) -> Any:
    """Power against cases for a few reader counts, with the target as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    counts = sorted(p.grid)
    shown = counts if len(counts) <= 6 else [counts[i] for i in np.linspace(0, len(counts) - 1, 6).astype(int)]
    cases = np.unique(np.geomspace(10, 2000, 40).astype(int))
    for r in shown:
        ax.plot(cases, [power(p.components, p.effect, r, int(k), p.alpha, p.analysis).power for k in cases],
                label=f"{r} readers")
    ax.axhline(p.target, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("cases per arm")
    ax.set_ylabel("power")
    ax.set_title(f"Power to detect {p.effect:g} in {p.components.fom} ({p.analysis.upper()})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class SimulatedPower:
    """The rejection rate of OR-Hillis over simulated studies, with what the simulation implies for the formula."""

    readers: int
    cases: int
    studies: int
    alpha: float
    power: float  # share of studies with p < alpha
    mc_se: float  # Monte Carlo standard error of that share
    effect: float  # mean observed difference (second arm - first)
    components: VarianceComponents  # averaged over the simulated studies


def simulate_power(reader_model: Any, truth_idx: np.ndarray, probs: np.ndarray, readers: int, cases: int,
                   studies: int = 1000, alpha: float = 0.05, seed: int = 0) -> SimulatedPower:
    """Simulate ``studies`` crossover studies (alone vs assisted, accuracy) and run OR-Hillis on each.

    Each study draws ``cases`` cases from the pool (``truth_idx`` class indices and the model's ``probs``) and fresh
    readers from ``reader_model`` (:class:`lesionlab.study.simulate.ReaderModel`). The components averaged over the
    studies are unbiased estimates of the population's, so ``power(components, effect, readers, cases)`` is what
    the OR-Hillis power formula predicts for this very population: the cross-check of the formula.
    """
    from lesionlab.study.mrmc import hit_fom, or_hillis
    from lesionlab.study.simulate import draw_answers, draw_effects

    rng = np.random.default_rng(seed)
    truth_idx = np.asarray(truth_idx)
    if cases > truth_idx.size:
        raise StudyAnalysisError(f"the case pool has {truth_idx.size} cases; {cases} asked for")
    rejected, diffs = [], []
    acc = np.zeros(5)
    for _ in range(studies):
        pick = rng.choice(truth_idx.size, size=cases, replace=False)
        t = truth_idx[pick]
        fx = draw_effects(reader_model, readers, cases, rng)
        alone = draw_answers(reader_model, fx, t, rng, None, None)["answer"] == t[None, :]
        helped = draw_answers(reader_model, fx, t, rng, probs[pick], None)["answer"] == t[None, :]
        est = hit_fom(np.stack([alone, helped]), np.ones(cases, dtype=bool), "accuracy", [str(i) for i in pick], "",
                      "")
        res = or_hillis(est.theta, jackknife=est.jackknife, alpha=alpha)
        test = res.analyses["rrrc"].test
        rejected.append(test is not None and test.p_value is not None and test.p_value < alpha)
        diffs.append(res.means[1] - res.means[0])
        cov = res.covariances
        acc += [res.var_tr, cov.var, cov.cov1, cov.cov2, cov.cov3]
    mean = acc / studies
    share = float(np.mean(rejected))
    comps = VarianceComponents(var_tr=max(float(mean[0]), 0.0), var=float(mean[1]), cov1=float(mean[2]),
                               cov2=float(mean[3]), cov3=float(mean[4]), n_cases=cases, fom="accuracy",
                               source=f"mean over {studies} simulated studies")
    return SimulatedPower(readers, cases, studies, alpha, share, float(np.sqrt(share * (1 - share) / studies)),
                          float(np.mean(diffs)), comps)
