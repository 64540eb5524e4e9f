"""Study planning: the OR-Hillis power formula, its cross-check by simulation, and the plan command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lesionlab.cli import main
from lesionlab.study.analysis_errors import StudyAnalysisError
from lesionlab.study.answers import check_answers
from lesionlab.study.columns import MODEL_PROB_COLUMNS
from lesionlab.study.power import (
    VarianceComponents,
    cases_for_power,
    components_from_answers,
    plan,
    power,
    power_limit,
    simulate_power,
)
from lesionlab.study.simulate import ReaderModel, SimulationSpec, check_cases, simulate_study, synthetic_model_outputs

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
#: Simulated power must lie within this distance of the computed power (the formula is an approximation; with 1,000
#: simulated studies the Monte Carlo standard error of the simulated power is at most 0.016).
POWER_TOLERANCE = 0.05
COMPONENTS = VarianceComponents(var_tr=0.0015, var=0.004, cov1=0.0005, cov2=0.0006, cov3=0.00045, n_cases=60,
                                fom="accuracy")


def test_power_by_hand():
    r, k, d = 6, 120, 0.08
    var, cov1, cov2, cov3 = (v * 60 / 120 for v in (0.004, 0.0005, 0.0006, 0.00045))
    den = 0.0015 + var - cov1 + (r - 1) * (cov2 - cov3)
    ms_tr = 0.0015 + var - cov1 - (cov2 - cov3)
    ncp = r * d ** 2 / (2 * den)
    ddf = den ** 2 / (ms_tr ** 2 / (r - 1))
    expected = sps.ncf.sf(sps.f.ppf(0.95, 1, ddf), 1, ddf, ncp)
    got = power(COMPONENTS, d, r, k)
    assert got.power == pytest.approx(expected, rel=1e-12) and got.ddf == pytest.approx(ddf)
    fixed = power(COMPONENTS, d, r, k, analysis="frrc")
    fixed_ncp = r * d ** 2 / (2 * (var - cov1 + (r - 1) * (cov2 - cov3)))
    assert fixed.power == pytest.approx(sps.ncx2.sf(sps.chi2.ppf(0.95, 1), 1, fixed_ncp), rel=1e-12)
    assert fixed.power > got.power  # fixed readers ignore the reader x arm variance


def test_power_grows_with_readers_cases_and_effect_and_is_capped_by_readers():
    p = [power(COMPONENTS, 0.06, r, 100).power for r in (3, 6, 12)]
    assert p[0] < p[1] < p[2]
    q = [power(COMPONENTS, 0.06, 6, k).power for k in (30, 100, 1000)]
    assert q[0] < q[1] < q[2] < power_limit(COMPONENTS, 0.06, 6)
    assert power(COMPONENTS, 0.03, 6, 100).power < power(COMPONENTS, 0.06, 6, 100).power
    assert power(COMPONENTS, 0.0, 6, 100).power == pytest.approx(0.05)


def test_cases_for_power_is_the_smallest_sufficient_number():
    k = cases_for_power(COMPONENTS, 0.08, 8)
    assert power(COMPONENTS, 0.08, 8, k).power >= 0.8 > power(COMPONENTS, 0.08, 8, k - 1).power
    assert cases_for_power(COMPONENTS, 0.03, 3) is None  # too few readers for any number of cases


def test_plan_table_and_recommendation():
    p = plan(COMPONENTS, 0.08, readers=range(3, 16))
    assert [r["readers"] for r in p.rows] == list(range(3, 16))
    reachable = [r for r in p.rows if r["cases"] is not None]
    assert all(a["cases"] >= b["cases"] for a, b in itertools.pairwise(reachable))
    best = p.recommended()
    assert best == min(reachable, key=lambda r: (r["readers"] * r["cases"], r["readers"]))
    assert "fewest readings" in p.text()
    assert json.loads(json.dumps(p.to_dict()))["recommended"]["cases"] == best["cases"]
    with pytest.raises(StudyAnalysisError, match="non-zero"):
        plan(COMPONENTS, 0.0)


def pool(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth_idx = rng.integers(0, 7, n)
    return truth_idx, synthetic_model_outputs([CODES[i] for i in truth_idx], 0.75, seed=seed + 1)


@pytest.mark.parametrize("readers, cases", [(5, 60), (8, 100)])
def test_computed_power_matches_simulated_power(readers, cases):
    """The OR-Hillis power formula against the rejection rate of OR-Hillis on 1,000 simulated studies."""
    truth_idx, probs = pool()
    model = ReaderModel(skill=-0.5, reliance=-1.5)
    sim = simulate_power(model, truth_idx, probs, readers, cases, studies=1000, seed=readers)
    computed = power(sim.components, sim.effect, readers, cases).power
    assert 0.2 < computed < 0.95  # a design point where the check has teeth
    assert abs(sim.power - computed) <= POWER_TOLERANCE, (sim.power, computed, sim.mc_se)


def test_type_one_error_under_no_effect():
    truth_idx, probs = pool(seed=3)
    # readers who never adopt the model: both arms are the same process, so the null holds
    model = ReaderModel(skill=-0.3, reliance=-40.0, reliance_sd=0.0)
    sim = simulate_power(model, truth_idx, probs, 6, 80, studies=800, seed=11)
    assert abs(sim.effect) < 0.01
    assert sim.power <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 800)


def pilot_export(readers: int = 8, n: int = 70) -> pd.DataFrame:
    truth = [CODES[i % 7] for i in range(n)]
    probs = synthetic_model_outputs(truth, 0.8, seed=2)
    cases = check_cases(pd.DataFrame({"case": [f"k{i}" for i in range(n)], "image_id": [f"I{i}" for i in range(n)],
                                      "truth": truth, **{c: probs[:, j] for j, c in enumerate(MODEL_PROB_COLUMNS)}}))
    spec = SimulationSpec(design="crossover", readers=readers, target_alone=0.35, target_assisted=0.55)
    return simulate_study(cases, spec, seed=4).export


def test_components_from_a_pilot_export():
    ans = check_answers(pilot_export(), "pilot.csv")
    comps, observed = components_from_answers(ans, "accuracy")
    assert comps.n_cases == 70 and comps.var > 0 and comps.var_tr >= 0
    assert observed > 0.1
    sens, _ = components_from_answers(ans, "malignant_sensitivity")
    assert sens.n_cases == 70 and sens.var > comps.var  # jackknifed over the malignant cases only
    separate = check_answers(pilot_export().assign(design="separate"), "sep.csv")
    with pytest.raises(StudyAnalysisError, match="cannot be estimated"):
        components_from_answers(separate, "accuracy")


def test_cli_plan_from_a_pilot_and_from_components(tmp_path, capsys):
    path = tmp_path / "pilot.csv"
    pilot_export().to_csv(path, index=False)
    assert main(["study", "plan", str(path), "--effect", "0.1", "--readers", "4-12", "--out",
                 str(tmp_path / "plan")]) == 0
    out = capsys.readouterr().out
    assert "Study plan (RRRC)" in out and "pilot" in out
    doc = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [r["readers"] for r in doc["by_readers"]] == list(range(4, 13))
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 1000
    assert main(["study", "plan", "--effect", "0.08", "--components", "0.0015,0.004,0.0005,0.0006,0.00045",
                 "--pilot-cases", "60", "--readers", "8"]) == 0
    k = cases_for_power(COMPONENTS, 0.08, 8)
    assert f"{k:,}" in capsys.readouterr().out
    assert main(["study", "plan", str(path), "--effect", "observed", "--readers", "5"]) == 0
    assert "optimistic" in capsys.readouterr().out
    assert main(["study", "plan", "--effect", "0.1"]) == 1
    assert "give a pilot export" in capsys.readouterr().err
