"""Simulated readers: the export contract, calibration, designs, determinism, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.study.analysis_errors import ExportError, StudyAnalysisError
from lesionlab.study.answers import check_answers, load_answers
from lesionlab.study.columns import EXPORT_COLUMNS, MODEL_PROB_COLUMNS
from lesionlab.study.simulate import (
    ReaderModel,
    SimulationSpec,
    check_cases,
    draw_cases,
    faulty_outputs,
    simulate_study,
    synthetic_model_outputs,
    write_export,
)

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def cases(n: int = 70, accuracy: float = 0.8) -> pd.DataFrame:
    truth = [CODES[i % 7] for i in range(n)]
    probs = synthetic_model_outputs(truth, accuracy, seed=1)
    return check_cases(pd.DataFrame({"case": [f"k{i}" for i in range(n)], "image_id": [f"I{i}" for i in range(n)],
                                     "truth": truth, **{c: probs[:, j] for j, c in enumerate(MODEL_PROB_COLUMNS)}}))


@pytest.mark.parametrize("design, arms", [("separate", ("unassisted", "assisted")),
                                          ("crossover", ("unassisted", "assisted", "faulty")),
                                          ("revise", ("assisted", "faulty"))])
def test_exports_follow_the_contract_and_say_simulated(design, arms):
    sim = simulate_study(cases(), SimulationSpec(design=design, arms=arms, readers=4, time_limit_s=30), seed=0)
    ex = sim.export
    assert tuple(ex.columns) == EXPORT_COLUMNS
    assert ex["simulated"].all() and (ex["design"] == design).all()
    ans = check_answers(ex, "sim.csv")  # the analysis reads it as it reads a platform export
    assert ans.simulated and len(ans.participants) == 4
    assert (ex.loc[ex["timed_out"], "answer"] == "").all()
    assert (ex.loc[~ex["timed_out"], "elapsed_ms"] <= 30_000).all()
    shown = ex[ex["model_shown"]]
    assert (shown["model_top"] != "").all() and (ex.loc[~ex["model_shown"], "model_top"] == "").all()
    if design == "revise":
        assert set(ex["step"]) == {1, 2} and not ex.loc[ex.step == 1, "model_shown"].any()
    if "faulty" in arms:
        faulty = ex[ex["model_faulty"]]
        assert len(faulty) and (faulty["model_top"] != faulty["truth"]).all()
        assert (ex.loc[ex.arm != "faulty", "model_faulty"] == False).all()  # noqa: E712
    if design == "separate":
        per_arm = ex.groupby("arm")["case"].agg(set)
        assert not per_arm["unassisted"] & per_arm["assisted"]


def test_same_seed_same_export_other_seed_other_export():
    spec = SimulationSpec(readers=3)
    a = simulate_study(cases(), spec, seed=5).export
    b = simulate_study(cases(), spec, seed=5).export
    c = simulate_study(cases(), spec, seed=6).export
    pd.testing.assert_frame_equal(a, b)
    assert not a["answer"].equals(c["answer"])


def test_calibration_hits_the_targets_in_expectation_and_roughly_in_the_draw():
    spec = SimulationSpec(design="crossover", readers=30, time_limit_s=45, target_alone=0.25, target_assisted=0.5)
    sim = simulate_study(cases(140), spec, seed=2)
    assert sim.expected_accuracy["unassisted"] == pytest.approx(0.25, abs=1e-6)
    assert sim.expected_accuracy["assisted"] == pytest.approx(0.5, abs=1e-6)
    ans = check_answers(sim.export, "sim.csv")
    got = ans.frame.groupby("condition")["correct"].mean()
    # 30 readers x 140 cases: binomial sd about 0.007
    assert got["unassisted"] == pytest.approx(0.25, abs=0.03)
    assert got["assisted"] == pytest.approx(0.5, abs=0.03)


def test_unreachable_targets_and_bad_specs_are_errors():
    with pytest.raises(StudyAnalysisError, match=r"accuracy with the model 0\.990 is out of reach"):
        simulate_study(cases(accuracy=0.6), SimulationSpec(target_assisted=0.99), seed=0)
    with pytest.raises(StudyAnalysisError, match="revise design needs an arm with the model"):
        SimulationSpec(design="revise", arms=("unassisted",))
    with pytest.raises(StudyAnalysisError, match="arms"):
        SimulationSpec(arms=("alone",))
    with pytest.raises(StudyAnalysisError, match="skill_sd must be >= 0"):
        ReaderModel(skill_sd=-1)
    no_model = cases()[["case", "image_id", "truth"]]
    with pytest.raises(StudyAnalysisError, match="need the model's probabilities"):
        simulate_study(no_model, SimulationSpec(), seed=0)
    alone = simulate_study(no_model, SimulationSpec(design="separate", arms=("unassisted",), readers=2), seed=0)
    assert not alone.export["model_shown"].any() and alone.export["model_p_mel"].isna().all()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["truth"]), r"missing column\(s\) truth"),
    (lambda f: f.assign(truth=f.truth.where(f.index != 3, "MELANOMA")), "row 4: unknown class 'MELANOMA'"),
    (lambda f: f.assign(case="same"), "appear more than once"),
    (lambda f: f.assign(model_p_nv=2.0), "row 1: model probabilities must be seven numbers"),
])
def test_case_table_errors(change, message):
    with pytest.raises(ExportError, match=message):
        check_cases(change(cases()))


def test_synthetic_model_and_faulty_outputs():
    truth = [CODES[i % 7] for i in range(700)]
    probs = synthetic_model_outputs(truth, 0.7, seed=0)
    idx = np.array([CODES.index(t) for t in truth])
    assert (probs.argmax(1) == idx).mean() == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(probs.sum(1), 1)
    wrong = faulty_outputs(probs, idx, np.random.default_rng(0))
    assert (wrong.argmax(1) != idx).all()
    np.testing.assert_allclose(np.sort(wrong, 1), np.sort(probs, 1))  # the same numbers, moved


def test_draw_cases_even_and_by_prevalence():
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(200)],
                          "dx": ["nv"] * 150 + ["mel"] * 30 + ["df"] * 5 + ["vasc"] * 15})
    even = draw_cases(table, 40, seed=0)
    assert even["truth"].value_counts().to_dict() == {"nv": 12, "mel": 12, "vasc": 11, "df": 5}
    prev = draw_cases(table, 40, seed=0, how="prevalence")
    assert prev["truth"].value_counts()["nv"] == 30
    assert even["image_id"].is_unique and list(even["case"][:2]) == ["c0001", "c0002"]
    with pytest.raises(StudyAnalysisError, match="only 200 images"):
        draw_cases(table, 201)


def test_write_export_round_trips_csv_and_json(tmp_path):
    ex = simulate_study(cases(), SimulationSpec(readers=2, design="revise", arms=("assisted",)), seed=0).export
    paths = write_export(ex, tmp_path / "out.csv")
    a, b = load_answers(paths["csv"]), load_answers(paths["json"])
    assert len(a.frame) == len(b.frame) == len(ex)
    assert (a.frame["answer"].to_numpy() == b.frame["answer"].to_numpy()).all()


def test_cli_simulate_from_a_case_table(tmp_path, capsys):
    table = tmp_path / "cases.csv"
    cases().to_csv(table, index=False)
    out = tmp_path / "sim" / "export.csv"
    assert main(["study", "simulate", "--cases", str(table), "--out", str(out), "--readers", "3", "--design",
                 "revise", "--arms", "assisted,faulty", "--target-alone", "0.3", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "SIMULATED readers (not people)" in text and "expected accuracy 30.0%" in text
    ex = pd.read_csv(out)
    assert list(ex.columns) == list(EXPORT_COLUMNS) and ex["simulated"].all()
    assert (tmp_path / "sim" / "export.json").is_file()


def test_cli_simulate_errors(tmp_path, capsys):
    table = tmp_path / "cases.csv"
    cases().drop(columns=["truth"]).to_csv(table, index=False)
    assert main(["study", "simulate", "--cases", str(table), "--out", str(tmp_path / "x.csv")]) == 1
    assert "missing column(s) truth" in capsys.readouterr().err


def test_cli_simulate_draws_cases_from_data(tmp_path, capsys):
    out = tmp_path / "e.csv"
    assert main(["study", "simulate", "--out", str(out), "--n-cases", "21", "--readers", "2", "--design",
                 "separate"]) == 0
    text = capsys.readouterr().out
    assert "21 cases of the test split" in text and "SYNTHETIC model outputs" in text
    assert len(pd.read_csv(out)) == 2 * 21
