"""Reading and checking answer exports: the contract's columns, derived columns, and every bad input named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lesionlab.study.analysis_errors import ExportError
from lesionlab.study.answers import check_answers, load_answers
from lesionlab.study.columns import EXPORT_COLUMNS, MODEL_PROB_COLUMNS

TRUTHS = ["mel", "nv", "bcc", "nv", "bkl", "mel"]


def export(design: str = "crossover", participants: int = 3, arms: tuple[str, ...] = ("unassisted", "assisted"),
           model: bool = True) -> pd.DataFrame:
    """A small, fully specified export: participant p answers case k right when (p + k) is even."""
    rows = []
    probs = np.full(7, 0.05)
    probs[4] = 0.7  # the model always says mel
    for p in range(participants):
        for arm in arms:
            for k, truth in enumerate(TRUTHS):
                steps = [1, 2] if design == "revise" else [1]
                for step in steps:
                    right = (p + k + step) % 2 == 0
                    row = dict.fromkeys(EXPORT_COLUMNS, "")
                    row.update(study="s1", design=design, participant=f"p{p}", simulated="false", case=f"c{k}",
                               image_id=f"ISIC_{k}", arm=arm, session=1, step=step, position=k + 1,
                               answer=truth if right else ("nv" if truth != "nv" else "mel"), truth=truth,
                               elapsed_ms=1000.0 * (k + 1), server_elapsed_ms=1000.0 * (k + 1) + 50,
                               timed_out="false", model_shown=str(arm != "unassisted" and (design != "revise"
                                                                                            or step == 2)).lower(),
                               model_faulty="false", confidence=50)
                    if model:
                        row.update({c: probs[i] for i, c in enumerate(MODEL_PROB_COLUMNS)}, model_run="run1",
                                   model_malignant=probs[[0, 1, 4]].sum(),
                                   model_top="mel" if row["model_shown"] == "true" else "")
                    rows.append(row)
    return pd.DataFrame(rows)


def test_a_complete_export_is_read_with_derived_columns():
    ans = check_answers(export(), "e.csv")
    assert ans.design == "crossover" and ans.conditions == ("unassisted", "assisted")
    assert ans.participants == ("p0", "p1", "p2") and ans.has_model and not ans.simulated
    f = ans.frame
    assert (f["correct"] == (f["answer"] == f["truth"])).all()
    assert set(f["model_pred"]) == {"mel"}
    assert f["time_s"].iloc[0] == pytest.approx(1.0)


def test_revise_first_answers_are_unassisted_whatever_the_arm():
    ans = check_answers(export("revise", arms=("assisted",)), "e.csv")
    assert ans.conditions == ("unassisted", "assisted")
    f = ans.frame
    assert set(f.loc[f.step == 1, "condition"]) == {"unassisted"} and set(f.loc[f.step == 2, "condition"]) == {
        "assisted"}
    assert ans.paired_cases


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["truth", "answer"]), r"missing column\(s\) answer, truth"),
    (lambda f: f.assign(answer=f.answer.where(f.index != 4, "melanoma")),
     r"row 5 \(line 6\): column 'answer' has unknown class 'melanoma'"),
    (lambda f: f.assign(truth=f.truth.where(f.index != 2, "")), r"row 3 \(line 4\): column 'truth' is empty"),
    (lambda f: f.assign(arm=f.arm.where(f.index != 0, "helped")), "column 'arm' is 'helped'; expected one of"),
    (lambda f: f.assign(step=2), "step 2 \\(a revised answer\\) in a 'crossover' study"),
    (lambda f: f.assign(design=f.design.where(f.index != 1, "separate")), "mixes designs"),
    (lambda f: pd.concat([f, f.iloc[[3]]]), "participant 'p0' answered case 'c3' in arm 'unassisted' \\(step 1\\) "
                                            "more than once"),
    (lambda f: f.assign(truth=f.truth.where(~((f.case == "c1") & (f.participant == "p2")), "df")),
     r"truth of case\(s\) \['c1'\] differs"),
    (lambda f: f.assign(timed_out=f.timed_out.where(f.index != 7, "perhaps")),
     "row 8 .*'timed_out' must be true or false, got 'perhaps'"),
    (lambda f: f.assign(confidence=f.confidence.where(f.index != 3, 140)), "row 4 .*'confidence' is 140, above 100"),
    (lambda f: f.assign(model_p_mel=f.model_p_mel.where(f.index != 2, "")), "row 3 .*some model probabilities are "
                                                                            "empty"),
    (lambda f: f.assign(model_p_mel=0.9), "model probabilities sum to 1.2000, not 1"),
    (lambda f: f.drop(columns=["model_p_df"]), r"model probability column\(s\) model_p_df missing"),
    (lambda f: f.assign(study=np.where(f.participant == "p1", "s2", "s1")), r"answers of 2 studies \(s1, s2\)"),
])
def test_bad_exports_get_errors_that_name_the_row_and_column(change, message):
    with pytest.raises(ExportError, match=message):
        check_answers(change(export()), "e.csv")


def test_a_reader_with_no_answers_in_one_arm():
    f = export()
    f = f[~((f.participant == "p1") & (f.arm == "assisted"))]
    with pytest.raises(ExportError, match=r"participant 'p1' has no answers in arm assisted .answers only in "
                                          r"unassisted.*--drop-incomplete"):
        check_answers(f, "e.csv")
    ans = check_answers(f, "e.csv", drop_incomplete=True)
    assert ans.participants == ("p0", "p2")
    assert any("left out: p1" in n for n in ans.notes)


def test_revise_second_answer_needs_its_first():
    f = export("revise", arms=("assisted",))
    f = f[~((f.participant == "p0") & (f.case == "c2") & (f.step == 1))]
    with pytest.raises(ExportError, match=r"1 revised answer.*without a first answer, e.g. participant 'p0', case "
                                          r"'c2'"):
        check_answers(f, "e.csv")


def test_choosing_one_study_and_ignoring_extra_columns():
    f = pd.concat([export(), export().assign(study="s2")])
    f["browser"] = "x"
    ans = check_answers(f, "e.csv", study="s2")
    assert ans.study == "s2" and len(ans.frame) == len(export())
    assert any("browser" in n for n in ans.notes)
    with pytest.raises(ExportError, match="no answers of study 'nope'"):
        check_answers(f, "e.csv", study="nope")


def test_timeouts_count_wrong_or_are_left_out():
    f = export()
    f.loc[0, ["answer", "timed_out"]] = ["", "true"]
    wrong = check_answers(f, "e.csv")
    assert not wrong.frame.loc[0, "correct"] and wrong.frame["timed_out"].sum() == 1
    excluded = check_answers(f, "e.csv", timeouts="exclude")
    assert len(excluded.frame) == len(f) - 1
    assert any("left out of every figure" in n for n in excluded.notes)


def test_a_late_answer_stored_as_a_time_out_does_not_count():
    f = export()
    right = f.index[f.answer == f.truth][0]
    f.loc[right, "timed_out"] = "true"  # the class arrived, but after the limit
    ans = check_answers(f, "e.csv")
    row = ans.frame.loc[right]
    assert row["answer"] == "" and row["answer_submitted"] == f.loc[right, "answer"] and not row["correct"]
    assert any("arrived after the time limit" in n for n in ans.notes)


def test_an_export_without_model_outputs_is_analysable():
    ans = check_answers(export(model=False).drop(columns=list(MODEL_PROB_COLUMNS)), "e.csv")
    assert not ans.has_model
    assert any("no model outputs" in n for n in ans.notes)


def test_csv_and_json_records_read_the_same(tmp_path):
    f = export()
    csv, js = tmp_path / "a.csv", tmp_path / "a.json"
    f.to_csv(csv, index=False)
    js.write_text(json.dumps(f.to_dict(orient="records")))
    a, b = load_answers(csv), load_answers(js)
    pd.testing.assert_frame_equal(a.frame.drop(columns=["study"]), b.frame.drop(columns=["study"]),
                                  check_dtype=False)
    (tmp_path / "wrapped.json").write_text(json.dumps({"answers": f.to_dict(orient="records")}))
    assert len(load_answers(tmp_path / "wrapped.json").frame) == len(f)


def test_unreadable_files_and_studies(tmp_path):
    with pytest.raises(FileNotFoundError, match="answer export not found"):
        load_answers(tmp_path / "missing.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        load_answers(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ExportError, match="expected JSON records"):
        load_answers(tmp_path / "obj.json")
    (tmp_path / "empty.csv").write_text(",".join(EXPORT_COLUMNS) + "\n")
    with pytest.raises(ExportError, match="no answers"):
        load_answers(tmp_path / "empty.csv")


def test_a_study_path_goes_through_the_platform_or_says_how(tmp_path, monkeypatch):
    import sys
    import types

    try:
        import lesionlab.study.export  # noqa: F401  (the platform's module, when present)
        have_platform = True
    except ImportError:
        have_platform = False
    if not have_platform:
        with pytest.raises(ExportError, match=r"lesionlab.study.export.answers_frame is unavailable.*lesionlab study "
                                              r"export STUDY"):
            load_answers(tmp_path / "my-study")
    fake = types.ModuleType("lesionlab.study.export")
    fake.answers_frame = lambda path: export()
    monkeypatch.setitem(sys.modules, "lesionlab.study.export", fake)
    ans = load_answers(tmp_path / "my-study")
    assert ans.study == "s1" and len(ans.participants) == 3
