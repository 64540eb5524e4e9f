"""Per-reader figures by hand, the paired comparisons, switching, automation bias, and the written report."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.study.answers import check_answers
from lesionlab.study.columns import EXPORT_COLUMNS, MODEL_PROB_COLUMNS
from lesionlab.study.readers import answer_figures
from lesionlab.study.report import analyze, write_study_report
from lesionlab.study.simulate import SimulationSpec, check_cases, simulate_study, synthetic_model_outputs
from lesionlab.study.switching import automation_bias, switching

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_answer_figures_by_hand():
    truth = ["mel", "mel", "mel", "nv", "nv", "bcc", "bkl", "nv"]
    answer = ["mel", "nv", "", "nv", "mel", "bcc", "bkl", ""]
    f = answer_figures(answer, truth)
    assert f["accuracy"] == pytest.approx(4 / 8)
    assert f["sens_mel"] == pytest.approx(1 / 3) and f["mel_sensitivity"] == f["sens_mel"]
    # specificity of mel: the 5 non-mel cases answered with another class (a missing answer is no rejection)
    assert f["spec_mel"] == pytest.approx(3 / 5)
    assert f["sens_nv"] == pytest.approx(1 / 3) and f["sens_bcc"] == 1.0 and f["sens_bkl"] == 1.0
    assert f["sens_df"] is None and f["sens_akiec"] is None
    assert f["balanced_accuracy"] == pytest.approx(np.mean([1 / 3, 1 / 3, 1.0, 1.0]))
    # malignant: mel x3 + bcc; called malignant: mel (case 0), bcc, and mel for an nv
    assert f["malignant_sensitivity"] == pytest.approx(2 / 4)
    assert f["malignant_specificity"] == pytest.approx(2 / 4)


def cases(n: int = 40, seed: int = 0, accuracy: float = 0.8) -> pd.DataFrame:
    truth = [CODES[i % 7] for i in range(n)]
    probs = synthetic_model_outputs(truth, accuracy, seed=seed)
    frame = pd.DataFrame({"case": [f"k{i:03d}" for i in range(n)], "image_id": [f"IMG{i}" for i in range(n)],
                          "truth": truth, **{c: probs[:, j] for j, c in enumerate(MODEL_PROB_COLUMNS)}})
    return check_cases(frame.assign(model_run="run-x"))


def simulated(design: str, arms: tuple[str, ...], readers: int = 6, n: int = 40, **spec) -> pd.DataFrame:
    return simulate_study(cases(n), SimulationSpec(design=design, arms=arms, readers=readers, **spec), seed=3).export


@pytest.fixture(scope="module")
def crossover_analysis():
    ex = simulated("crossover", ("unassisted", "assisted", "faulty"), target_alone=0.35, target_assisted=0.6)
    return analyze(check_answers(ex, "crossover.csv"), n_boot=300)


def test_crossover_analysis_pairs_cases_and_runs_or_hillis(crossover_analysis):
    an = crossover_analysis
    assert an.answers.paired_cases
    assert set(an.mrmc) >= {"accuracy", "malignant_sensitivity", "malignant_specificity", "malignant_auc"}
    acc = an.mrmc["accuracy"]
    assert acc.modalities == ("faulty", "assisted", "unassisted") and acc.n_cases == 40  # differences: with - alone
    assert [d.label for d in acc.analyses["rrrc"].differences][1] == "faulty - unassisted"
    assert acc.analyses["rrrc"].differences[2].estimate > 0  # assisted - unassisted: the model helps
    # OR-Hillis means are the per-reader table's means
    for i, cond in enumerate(acc.modalities):
        sub = an.per_reader[an.per_reader.condition == cond]
        assert acc.means[i] == pytest.approx(sub["accuracy"].mean())
    assert {t.test for t in an.wilcoxon} == {"Wilcoxon signed-rank"}
    assert all("cases shared by both arms" in t.detail["method"] for t in an.bootstrap_arms)
    assert set(an.mcnemar) == {"unassisted", "assisted", "faulty"}
    assert all(len(v) == 6 and "p_holm" in v[0].detail for v in an.mcnemar.values())
    assert [s.after for s in an.switching] == ["assisted", "faulty"]
    assert an.models["faulty"].faulty_shown and not an.models["assisted"].faulty_shown


def test_mcnemar_against_the_model_counts_discordant_cases(crossover_analysis):
    an = crossover_analysis
    f = an.answers.condition("assisted")
    model = an.models["assisted"]
    pred = dict(zip(model.cases, model.pred, strict=True))
    sub = f[f.participant == "sim-01"]
    reader_right = (sub.answer == sub.truth).to_numpy()
    model_right = np.array([pred[c] == t for c, t in zip(sub.case, sub.truth, strict=True)])
    test = next(t for t in an.mcnemar["assisted"] if t.label.startswith("sim-01 "))
    assert test.n["paired images"] == len(sub)
    assert test.n["discordant"] == int((reader_right != model_right).sum())


def test_bootstrap_between_arms_brackets_the_observed_difference(crossover_analysis):
    for t in crossover_analysis.bootstrap_arms:
        assert t.ci[0] <= t.statistic <= t.ci[1] or abs(t.statistic) < 1e-12
        assert t.n["replicates"] == 300


def test_separate_design_uses_readers_paired_tests_only():
    ex = simulated("separate", ("unassisted", "assisted"), target_alone=0.3, target_assisted=0.5)
    an = analyze(check_answers(ex, "separate.csv"), n_boot=200)
    assert not an.answers.paired_cases and an.mrmc == {} and an.switching == []
    assert any("cases are not paired" in n for n in an.notes)
    assert all("not paired" in t.detail["method"] for t in an.bootstrap_arms)
    assert all("cases differ between arms" in t.label for t in an.wilcoxon)
    arms = {c: set(an.answers.condition(c)["case"]) for c in an.answers.conditions}
    assert not arms["unassisted"] & arms["assisted"]


def test_switching_tallies_by_hand():
    rows = []
    # (step-1 answer, step-2 answer) for truth mel, model shows mel (right) for cases a, b and nv (wrong) for c, d
    plan = {"a": ("nv", "mel", "mel"), "b": ("mel", "mel", "mel"), "c": ("mel", "nv", "nv"), "d": ("bkl", "nv", "nv")}
    for case, (first, second, shown) in plan.items():
        probs = np.full(7, 0.04)
        probs[CODES.index(shown)] = 0.76
        for step, ans in ((1, first), (2, second)):
            row = dict.fromkeys(EXPORT_COLUMNS, "")
            row.update(study="s", design="revise", participant="p1", simulated=True, case=case, arm="assisted",
                       step=step, answer=ans, truth="mel", timed_out=False, model_shown=step == 2,
                       model_top=shown if step == 2 else "", model_faulty=False,
                       **{c: probs[i] for i, c in enumerate(MODEL_PROB_COLUMNS)})
            rows.append(row)
    ans = check_answers(pd.DataFrame(rows), "revise.csv")
    sw = switching(ans)
    o = sw.overall
    assert (o["pairs"], o["changed"], o["wrong -> right"], o["right -> wrong"], o["kept right"]) == (4, 3, 1, 1, 1)
    assert o["wrong -> other wrong"] == 1 and o["towards_model"] == 3
    ab = automation_bias(ans, "assisted")
    assert ab.overall["wrong_outputs"] == 2 and ab.overall["follow_rate_wrong"] == 1.0
    assert ab.overall["follow_rate_right"] == 1.0
    assert ab.overall["same_wrong_class_alone"] == 0.0  # alone, p1 never named nv for c or d


def test_revise_with_a_faulty_arm_analyses_each_against_reading_alone():
    ex = simulated("revise", ("assisted", "faulty"), faulty_fraction=0.5)
    an = analyze(check_answers(ex, "revise.csv"), n_boot=200)
    assert "accuracy (assisted vs unassisted)" in an.mrmc and "accuracy (faulty vs unassisted)" in an.mrmc
    faulty = next(ab for ab in an.automation if ab.condition == "faulty")
    assert faulty.overall["deliberately_wrong_outputs"] > 0
    assert faulty.overall["follow_rate_wrong"] > faulty.overall["same_wrong_class_alone"]


def test_a_single_reader_study_still_reports(tmp_path):
    ex = simulated("crossover", ("unassisted", "assisted"), readers=1)
    an = analyze(check_answers(ex, "one.csv"), n_boot=100)
    assert an.wilcoxon == [] and an.bootstrap_arms == []
    assert set(an.mrmc["accuracy"].analyses) == {"frrc"}
    assert any("one reader" in n for n in an.notes)
    paths = write_study_report(an, tmp_path)
    assert "need at least two readers" in paths["markdown"].read_text()


def test_the_written_report_is_self_contained_and_complete(crossover_analysis, tmp_path):
    paths = write_study_report(crossover_analysis, tmp_path)
    html = paths["html"].read_text()
    assert not re.search(r"(src|href)=\"https?://", html) and "<script" not in html
    for testid in ("fig-roc-readers", "fig-reader-change", "fig-class-sensitivity", "fig-confusion", "fig-mrmc",
                   "fig-switching-assisted", "fig-automation-faulty", "table-summary", "table-readers",
                   "table-model", "table-wilcoxon", "table-bootstrap-arms", "table-mcnemar-assisted",
                   "table-mrmc-accuracy", "table-switch-assisted-class", "table-automation-faulty"):
        assert f'data-testid="{testid}"' in html, testid
    assert html.count("data:image/png;base64,") >= 10
    assert "SIMULATED readers" in html
    md = paths["markdown"].read_text()
    assert "| Accuracy |" in md and "## Multi-reader multi-case analysis (OR-Hillis)" in md
    per = pd.read_csv(paths["per_reader"])
    assert len(per) == 18 and {"participant", "condition", "accuracy", "sens_mel", "timeout_rate"} <= set(per)
    tests = pd.read_csv(paths["tests"])
    assert {"wilcoxon", "bootstrap_arms", "mcnemar_assisted", "mrmc_accuracy"} <= set(tests["group"])
    assert tests["p_value"].between(0, 1).all() and tests["n"].str.len().gt(0).all()
    doc = json.loads(paths["analysis"].read_text())
    assert doc["headline"]["assisted"]["accuracy_mean"] > doc["headline"]["unassisted"]["accuracy_mean"]


def test_cli_report_on_an_export(tmp_path, capsys):
    path = tmp_path / "answers.csv"
    simulated("crossover", ("unassisted", "assisted")).to_csv(path, index=False)
    assert main(["study", "report", str(path), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "6 SIMULATED readers" in out and "OR-Hillis accuracy" in out
    assert (tmp_path / "answers-report" / "report.html").is_file()


def test_cli_report_errors(tmp_path, capsys):
    path = tmp_path / "answers.csv"
    simulated("crossover", ("unassisted", "assisted")).drop(columns=["truth"]).to_csv(path, index=False)
    assert main(["study", "report", str(path)]) == 1
    assert "missing column(s) truth" in capsys.readouterr().err
    assert main(["study", "report", str(tmp_path / "nope.csv")]) == 1
    assert "answer export not found" in capsys.readouterr().err


def test_the_python_api_in_one_module(tmp_path):
    from lesionlab.study import analysis as sa

    sim = sa.simulate_study(cases(28), sa.SimulationSpec(design="crossover", readers=4, target_alone=0.3), seed=1)
    answers = sa.load_answers(sim.export)
    result = sa.analyze(answers, n_boot=100)
    paths = sa.write_study_report(result, tmp_path)
    assert paths["html"].is_file() and "accuracy" in result.mrmc
    comps, _ = sa.components_from_answers(answers, "accuracy")
    assert sa.plan(comps, effect=0.1, readers=[5, 10]).rows[0]["readers"] == 5
