"""From a study definition to the OR-Hillis report, through the platform, checked against the answers given.

A study is created from a definition with a tiny run trained on the SYNTHETIC set; three scripted participants
answer every case through the participant HTTP API (both arms; a time-out sent by the page at zero; an answer that
arrives after the limit; in ``revise`` a first answer and a revised one); the admin closes the study; then
``lesionlab study report STUDY`` reads the platform's database and its figures are recomputed here from what the
participants submitted: per-reader accuracy and time-outs per arm, the model alone on the same cases, and the
OR-Hillis analysis (against ``lesionlab.study.mrmc`` run on a table built from the submitted answers).
The server's clock is a test clock, so the late answer needs no waiting.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.cli import main
from lesionlab.study import participation
from lesionlab.study.columns import condition_of
from lesionlab.study.export import cases_frame
from lesionlab.study.mrmc import mrmc
from lesionlab.study.storage import Assignment, CaseTruth

LIMIT_S = 30.0
SKILL = (0.25, 0.5, 0.85)  # chance of the right answer alone, per scripted participant


class Clock:
    """The server's clock, moved on by the test (a late answer without a real wait)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)
        self.real = participation.utcnow

    def __call__(self) -> dt.datetime:
        return self.real() + self.offset


def _wrong(code: str) -> str:
    return CLASS_CODES[(CLASS_CODES.index(code) + 1) % len(CLASS_CODES)]


def _answer_all(client: Any, token: str, reader: int, truth_of: dict[str, str], clock: Clock,
                rng: np.random.Generator) -> list[dict[str, Any]]:
    """One scripted participant through the HTTP API; returns what was submitted and what should count."""
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/consent", headers=headers).status_code == 200
    given: list[dict[str, Any]] = []
    first: dict[str, str | None] = {}
    n = 0
    while True:
        item = client.post("/api/next", headers=headers, json={}).json()
        if item["phase"] == "break":  # crossover: the second session starts when the participant asks
            item = client.post("/api/next", headers=headers, json={"start_session": item["session"]}).json()
        if item["phase"] != "case":
            assert item["phase"] == "finished"
            return given
        truth = truth_of[item["item"]]
        support = item["support"]
        if item["step"] == 2:  # revise: keep the first answer, except the best reader follows the model
            answer = support["top1"]["code"] if reader == 2 else (first[item["item"]] or truth)
        elif support is not None and reader > 0:
            answer = support["top1"]["code"]
        else:
            answer = truth if rng.random() < SKILL[reader] else _wrong(truth)
        body: dict[str, Any] = {"item": item["item"], "step": item["step"], "answer": answer,
                                "confidence": 90.0 if answer in MALIGNANT_CODES else 10.0, "elapsed_ms": 1500.0}
        late = timeout = False
        if reader == 0 and n == 1:  # the page's countdown reached zero: no answer
            body.update(answer=None, confidence=None, timeout=True, elapsed_ms=LIMIT_S * 1000)
            timeout = True
        elif reader == 1 and n == 2:  # an answer that arrives after the limit and the grace
            clock.offset += dt.timedelta(seconds=LIMIT_S + 5)
            late = True
        resp = client.post("/api/answer", headers=headers, json=body)
        assert resp.status_code == 200, resp.text
        stored = resp.json()["stored"]
        assert stored["timed_out"] == (late or timeout)
        if item["step"] == 1:
            first[item["item"]] = body["answer"]
        given.append({"item": item["item"], "step": item["step"], "submitted": body["answer"] or "",
                      "counted": "" if (late or timeout) else body["answer"], "truth": truth,
                      "timed_out": late or timeout, "model_top": support["top1"]["code"] if support else ""})
        n += 1


@pytest.mark.parametrize("design", ["crossover", "revise"])
def test_a_study_from_definition_to_or_hillis_report(design: str, tiny_run, study_definition, make_study,
                                                     serve_study, monkeypatch, tmp_path: Path) -> None:
    definition = study_definition(tiny_run, name=f"e2e-{design}", design=design, arms=["unassisted", "assisted"],
                                  time_limit_s=LIMIT_S, grace_s=1.0, form={"confidence": True},
                                  model={"support": ["probabilities", "top1", "malignant"]})
    folder = make_study(definition)
    clock = Clock()
    monkeypatch.setattr(participation, "utcnow", clock)
    server = serve_study(folder)
    with server.folder.sessions.begin() as db:
        invites = participation.invite(db, server.folder.study_id, server.folder.definition, 3)
    with server.folder.sessions() as db:
        rows = db.execute(select(Assignment, CaseTruth).join(CaseTruth, CaseTruth.case_id == Assignment.case_id))
        assignment = {a.id: (a.participant_id, a.case_id, a.arm) for a, _ in rows}
        truth_of = {a.id: t.truth for a, t in db.execute(
            select(Assignment, CaseTruth).join(CaseTruth, CaseTruth.case_id == Assignment.case_id))}
    records = []
    for j, inv in enumerate(invites):
        for g in _answer_all(server.client, inv.token, j, truth_of, clock, np.random.default_rng(j)):
            participant, case, arm = assignment[g["item"]]
            records.append({**g, "participant": participant, "case": case, "arm": arm,
                            "condition": condition_of(design, arm, g["step"])})
    given = pd.DataFrame(records)
    assert given["timed_out"].sum() == 2 and (given["step"] == 2).any() == (design == "revise")
    revised = given[given["step"] == 2].merge(given[given["step"] == 1], on=["participant", "case"])
    assert design != "revise" or (revised["submitted_x"] != revised["submitted_y"]).any()  # someone changed

    admin = server.admin_headers()
    assert server.client.post("/api/admin/close", headers=admin).status_code == 200

    out = tmp_path / "report"
    assert main(["study", "report", str(folder), "--out", str(out), "--n-boot", "100"]) == 0
    per_reader = pd.read_csv(out / "per_reader.csv")
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["design"] == design and analysis["conditions"] == ["unassisted", "assisted"]
    assert not analysis["simulated"] and sorted(analysis["participants"]) == sorted(i.participant for i in invites)
    # revise: the unassisted arm is a control set, so reading alone covers more cases than reading with the model
    assert (design == "revise") == any("the arms cover different cases" in n for n in analysis["notes"])

    # per reader and arm: accuracy, answers and time-outs are those submitted (a late answer counts as none)
    given["correct"] = given["counted"] == given["truth"]
    expected = given.groupby(["participant", "condition"]).agg(accuracy=("correct", "mean"), n=("correct", "size"),
                                                               timeout_rate=("timed_out", "mean"))
    got = per_reader.set_index(["participant", "condition"])
    assert len(got) == len(expected) == 6
    for key, row in expected.iterrows():
        assert got.loc[key, "accuracy"] == pytest.approx(row["accuracy"])
        assert got.loc[key, "n"] == row["n"] and got.loc[key, "timeout_rate"] == pytest.approx(row["timeout_rate"])

    # the model alone on the same cases: the frozen outputs against the truth
    cases = cases_frame(folder).set_index("case")
    model = pd.read_csv(out / "model.csv").set_index("condition")
    for cond, sub in given.groupby("condition"):
        ids = sorted(set(sub["case"]))
        assert model.loc[cond, "accuracy"] == pytest.approx(float((cases.loc[ids, "model_top"] ==
                                                                   cases.loc[ids, "truth"]).mean()))
    shown = given[given["model_top"] != ""]
    assert (shown["model_top"] == cases.loc[shown["case"], "model_top"].to_numpy()).all()

    # OR-Hillis accuracy: the same as an analysis of the submitted answers on the cases read in both arms
    key = next(k for k in analysis["mrmc"] if k.startswith("accuracy"))
    res = analysis["mrmc"][key]
    both = set.intersection(*(set(s["case"]) for _, s in given.groupby("condition")))
    table = given[given["case"].isin(both)][["participant", "condition", "case", "truth", "counted"]]
    ref = mrmc(table.fillna(""), "participant", "condition", "case", "truth", "accuracy", answer="counted",
               modality_order=["assisted", "unassisted"]).to_dict()
    assert res["n_cases"] == len(both) == 7  # per_class 1: seven cases read alone and with the model
    for cond in ("unassisted", "assisted"):
        for p, value in ref["fom_per_reader"][cond].items():
            assert res["fom_per_reader"][cond][p] == pytest.approx(value)
    assert set(res["analyses"]) == set(ref["analyses"]) == {"rrrc", "frrc", "rrfc"}
    for name, theirs in ref["analyses"].items():
        mine = res["analyses"][name]
        assert (mine["test"] is None) == (theirs["test"] is None)
        for field in ("statistic", "ddf", "p_value"):
            if theirs["test"] is not None and theirs["test"][field] is not None:
                assert mine["test"][field] == pytest.approx(theirs["test"][field])
    assert (out / "report.html").is_file()

    # the exported CSV reads back to the same analysis
    assert main(["study", "export", str(folder), "--out", str(tmp_path / "export")]) == 0
    assert main(["study", "report", str(tmp_path / "export" / "answers.csv"), "--out", str(tmp_path / "r2"),
                 "--n-boot", "100"]) == 0
    again = pd.read_csv(tmp_path / "r2" / "per_reader.csv")
    pd.testing.assert_frame_equal(again, per_reader)
    from lesionlab.study.answers import load_answers
    from lesionlab.study.readers import per_reader as per_reader_table

    from_json = per_reader_table(load_answers(tmp_path / "export" / "answers.json"))
    pd.testing.assert_frame_equal(from_json.reset_index(drop=True),
                                  per_reader_table(load_answers(folder)).reset_index(drop=True))


REPO = Path(__file__).resolve().parents[2]
#: The shipped definition on the synthetic set: 900 images give every class the 2 x 5 (mel 6) cases it draws.
SYNTHETIC_CASES = ["cases.data.source=synthetic", "cases.data.synthetic_n=900", "cases.data.split=lesion",
                   "cases.splits=[train,val,test]"]


@pytest.mark.parametrize("key", ["ham10000-162", "ham10000-35x35"])
def test_the_contests_and_their_study_definitions_agree(key: str) -> None:
    from lesionlab.study.definition import load_definition
    from lesionlab.study.simulated_contests import CONTESTS

    contest = CONTESTS[key]
    definition = load_definition(REPO / contest.definition)
    assert definition.design == "separate" and tuple(definition.arms) == contest.arms
    assert definition.time_limit_s == contest.time_limit_s and definition.show_clinical == contest.clinical_data_shown
    assert sum(definition.cases.counts().values()) == contest.cases_per_arm
    assert set(contest.targets) <= set(definition.arms)


@pytest.mark.slow
def test_a_contest_runs_from_the_platforms_study_definition(tiny_run, tmp_path: Path, capsys) -> None:
    """configs/studies/ham10000-gp-35x2.yaml -> lesionlab study create -> simulated readers on the frozen study ->
    report; the readers read the study's own case sets and the outputs it froze, under its time limit."""
    from lesionlab.study.simulated_contests import CONTESTS

    folder = tmp_path / "study"
    assert main(["study", "create", str(REPO / CONTESTS["ham10000-35x35"].definition), f"model.run={tiny_run}",
                 *SYNTHETIC_CASES, "--out", str(folder)]) == 0
    out = tmp_path / "contest"
    assert main(["study", "simulate", "--contest", "ham10000-35x35", "--study", str(folder), "--out", str(out),
                 "--n-boot", "100"]) == 0
    printed = capsys.readouterr().out
    assert "SIMULATED readers (19), not the study's physicians" in printed and "published GP accuracy 42.4%" in printed

    export = pd.read_csv(out / "export.csv", keep_default_na=False)
    cases = cases_frame(folder).set_index("case")
    assert export["simulated"].all() and export["participant"].nunique() == 19
    assert (export["study"] == "ham10000-gp-35x2").all() and (export["design"] == "separate").all()
    assert (export["arm"].to_numpy() == cases.loc[export["case"], "case_set"].to_numpy()).all()  # its case sets
    probs = [f"model_p_{c}" for c in CLASS_CODES]
    np.testing.assert_allclose(export[probs].to_numpy(float), cases.loc[export["case"], probs].to_numpy(float))
    assert set(export["model_run"]) == set(cases["model_run"])
    answered = export[export["timed_out"] == False]  # noqa: E712
    assert export["timed_out"].any() and (answered["elapsed_ms"].astype(float) <= 45_000).all()  # the study's 45 s
    doc = json.loads((out / "contest.json").read_text())
    for arm, published in {"unassisted": 0.173, "assisted": 0.424}.items():
        assert doc["expected_accuracy_of_drawn_readers"][arm] == pytest.approx(published, abs=1e-6)
    analysis = json.loads((out / "report" / "analysis.json").read_text())
    assert analysis["simulated"] and any("study ham10000-gp-35x2" in n for n in analysis["notes"])

    # plain simulated readers of the study follow its definition too; a conflicting design is refused, named
    sim_csv = tmp_path / "sim.csv"
    assert main(["study", "simulate", "--study", str(folder), "--readers", "2", "--out", str(sim_csv)]) == 0
    sim = pd.read_csv(sim_csv, keep_default_na=False)
    assert set(sim["design"]) == {"separate"} and set(sim["study"]) == {"ham10000-gp-35x2"}
    assert (sim["arm"].to_numpy() == cases.loc[sim["case"], "case_set"].to_numpy()).all()
    capsys.readouterr()
    assert main(["study", "simulate", "--study", str(folder), "--design", "crossover", "--out",
                 str(tmp_path / "x.csv")]) == 1
    assert "--design: a study's simulated readers follow its definition" in capsys.readouterr().err
