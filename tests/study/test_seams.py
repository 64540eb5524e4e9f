"""The conventions shared by the platform, the simulated readers and the analysis agree (lesionlab.study.columns).

The platform plans each participant's cases (``plan_assignments``), the simulated readers write rows of the same
export, and the analysis reads either: the same case sets, steps, sessions, positions, model-on-screen flags and
conditions in all three, for every design.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.study.analysis_errors import ExportError
from lesionlab.study.answers import check_answers
from lesionlab.study.columns import EXPORT_COLUMNS, MODEL_PROB_COLUMNS, answer_steps, condition_of, model_on_screen
from lesionlab.study.definition import definition_from_dict
from lesionlab.study.mrmc import mrmc
from lesionlab.study.participation import plan_assignments
from lesionlab.study.simulate import SimulationSpec, check_cases, simulate_study, synthetic_model_outputs

LAYOUTS = [("separate", ("unassisted", "assisted")), ("separate", ("unassisted", "assisted", "faulty")),
           ("crossover", ("unassisted", "assisted")), ("crossover", ("unassisted", "assisted", "faulty")),
           ("revise", ("assisted",)), ("revise", ("unassisted", "assisted")), ("revise", ("assisted", "faulty"))]


def _cases(n_per_class: int, case_sets: list[str] | None = None) -> pd.DataFrame:
    truth = [c for c in CLASS_CODES for _ in range(n_per_class)]
    probs = synthetic_model_outputs(truth, 0.7, seed=3)
    frame = pd.DataFrame({"case": [f"k{i:03d}" for i in range(len(truth))], "image_id": [f"I{i}" for i in
                                                                                         range(len(truth))],
                          "truth": truth, **{c: probs[:, j] for j, c in enumerate(MODEL_PROB_COLUMNS)}})
    if case_sets is not None:
        frame["case_set"] = [case_sets[i % len(case_sets)] for i in range(len(frame))]
    return frame


def _platform_rows(design: str, arms: tuple[str, ...], participants: int = 3) -> pd.DataFrame:
    """The rows the platform's plan makes: one per (participant, case, arm, step), as the export lists them."""
    definition = definition_from_dict({"name": "layout", "design": design, "arms": list(arms),
                                       "cases": {"per_class": 1}, "model": {"run": "runs/none"}})
    sets = {name: [f"{name}-{i}" for i in range(5)] for name in definition.case_sets()}
    rows = []
    for p in range(participants):
        _, plan = plan_assignments(definition, sets, np.random.default_rng([0, p]))
        for case, arm, session, position in plan:
            for step in answer_steps(design, arm):
                rows.append({"participant": f"p{p}", "case": case, "arm": arm, "session": session,
                             "position": position, "step": step, "model_shown": model_on_screen(design, arm, step)})
    return pd.DataFrame(rows)


def _check_layout(frame: pd.DataFrame, design: str, arms: tuple[str, ...]) -> None:
    """The layout every export of ``design`` has, whoever wrote it."""
    for _, rows in frame.groupby("participant"):
        sessions = rows.groupby("arm")["session"].agg(set)
        if design == "crossover":  # one session per arm, all cases in each, positions restart per session
            assert sorted(s for ss in sessions for s in ss) == list(range(1, len(arms) + 1))
            for _, ses in rows.groupby("session"):
                assert ses["arm"].nunique() == 1
                assert sorted(ses["position"]) == list(range(1, len(ses) + 1))
            assert rows.groupby("arm")["case"].agg(frozenset).nunique() == 1
        else:  # one session; each arm its own cases; positions run on across the arms
            assert set(rows["session"]) == {1}
            firsts = rows[rows["step"] == 1]
            assert sorted(firsts["position"]) == list(range(1, len(firsts) + 1))
            per_arm = rows.groupby("arm")["case"].agg(set)
            assert sum(len(v) for v in per_arm) == len(set().union(*per_arm))  # disjoint
        for (arm, step), grp in rows.groupby(["arm", "step"]):
            assert step in answer_steps(design, arm)
            assert (grp["model_shown"] == model_on_screen(design, arm, step)).all()
        steps = rows.groupby(["case", "arm"])["step"].agg(tuple)
        for (_, arm), got in steps.items():
            assert tuple(sorted(got)) == answer_steps(design, arm)
        if design == "revise" and "unassisted" in arms:  # a control set, answered once, alone
            control = rows[rows["arm"] == "unassisted"]
            assert len(control) and set(control["step"]) == {1} and not control["model_shown"].any()


@pytest.mark.parametrize(("design", "arms"), LAYOUTS, ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_platform_plan_and_simulated_export_have_the_same_layout(design: str, arms: tuple[str, ...]) -> None:
    _check_layout(_platform_rows(design, arms), design, arms)
    sim = simulate_study(check_cases(_cases(3)), SimulationSpec(design=design, arms=arms, readers=3), seed=1).export
    _check_layout(sim, design, arms)
    # the analysis derives the same condition from either
    ans = check_answers(sim, "sim.csv")
    expected = [condition_of(design, a, s) for a, s in zip(sim["arm"], sim["step"], strict=True)]
    assert ans.frame["condition"].tolist() == expected
    if design == "revise":
        assert set(ans.frame.loc[ans.frame["step"] == 1, "condition"]) == {"unassisted"}


@pytest.mark.parametrize(("design", "arms"), [("separate", ("unassisted", "assisted")), ("revise", ("unassisted",
                                                                                                    "assisted"))])
def test_simulated_readers_read_a_studys_own_case_sets(design: str, arms: tuple[str, ...]) -> None:
    cases = _cases(2, case_sets=list(arms))
    sim = simulate_study(check_cases(cases), SimulationSpec(design=design, arms=arms, readers=2), seed=0)
    case_set = dict(zip(cases["case"], cases["case_set"], strict=True))
    assert all(case_set[c] == a for c, a in zip(sim.export["case"], sim.export["arm"], strict=True))
    assert not any("dealt to the arms afresh" in n for n in sim.notes)
    other = simulate_study(check_cases(cases), SimulationSpec(design="crossover", arms=arms, readers=2), seed=0)
    assert any("dealt to the arms afresh" in n for n in other.notes)  # sets that do not fit the design: said


def test_simulated_readers_see_the_faulty_outputs_the_study_froze() -> None:
    cases = _cases(2, case_sets=["unassisted", "faulty"])
    fprobs = cases[list(MODEL_PROB_COLUMNS)].to_numpy()[:, ::-1].copy()  # some other, valid output
    cases["faulty"] = [s == "faulty" and i % 4 == 1 for i, s in enumerate(cases["case_set"])]
    for j, code in enumerate(CLASS_CODES):
        cases[f"faulty_p_{code}"] = np.where(cases["faulty"], fprobs[:, j], np.nan)
    sim = simulate_study(check_cases(cases), SimulationSpec(design="separate", arms=("unassisted", "faulty"),
                                                            readers=2), seed=0).export
    shown = sim[sim["model_faulty"]]
    frozen = cases.set_index("case").loc[shown["case"], [f"faulty_p_{c}" for c in CLASS_CODES]].to_numpy()
    assert set(shown["case"]) == set(cases.loc[cases["faulty"], "case"])
    np.testing.assert_allclose(shown[list(MODEL_PROB_COLUMNS)].to_numpy(dtype=float), frozen)


def _one_row(**values: object) -> pd.DataFrame:
    row = dict.fromkeys(EXPORT_COLUMNS, "")
    probs = np.asarray([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    row.update(study="s", design="separate", participant="p1", case="c1", arm="assisted", session=1, step=1,
               position=1, answer="mel", truth="mel", model_shown="true", model_top="mel", model_faulty="false",
               timed_out="false", **{c: probs[i] for i, c in enumerate(MODEL_PROB_COLUMNS)})
    row.update(values)
    return pd.DataFrame([row])


def test_float_rounding_of_the_models_probabilities_is_not_an_error() -> None:
    # the platform stores the sum of three float32 softmax outputs: it can pass 1 by a few 1e-8
    ans = check_answers(_one_row(model_malignant=1.0 + 3e-8, model_p_mel=1.0 + 1e-8), "export.csv")
    assert ans.frame["model_malignant"].iloc[0] == 1.0
    with pytest.raises(ExportError, match=r"model_malignant.*above 1"):
        check_answers(_one_row(model_malignant=1.01), "export.csv")


def test_mrmc_keeps_the_case_of_reader_and_case_ids() -> None:
    # the platform's participant and case ids are case-sensitive random keys: "pAb" and "pab" are two readers
    rows = [{"reader": r, "arm": m, "case": c, "truth": t, "answer": t if (i + k + j) % 3 else "nv"}
            for i, r in enumerate(("pAb", "pab", "PAB")) for j, m in enumerate(("unassisted", "assisted"))
            for k, (c, t) in enumerate((("cX", "mel"), ("cx", "bcc"), ("Cx", "nv"), ("k1", "mel"), ("k2", "bkl")))]
    res = mrmc(pd.DataFrame(rows), "reader", "arm", "case", "truth", "accuracy", answer="answer")
    assert set(res.readers) == {"pAb", "pab", "PAB"} and res.n_cases == 5
