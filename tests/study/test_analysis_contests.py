"""The HAM10000 study's contests end to end with SIMULATED readers matched to the published GP figures.

Runs on the shared data's test split when present, else on the synthetic set (the pipeline is the same).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.study.columns import EXPORT_COLUMNS
from lesionlab.study.simulated_contests import CONTESTS, run_contest

pytestmark = pytest.mark.slow  # the whole pipeline, twice: about 5-10 s each on 2 cores

#: Realised mean reader accuracy against the published figure: calibration makes the expectation exact, the draw
#: adds binomial noise (sd about 0.008 for 22 x 162 answers, 0.015-0.019 for 19 x 35).
TOLERANCE = {"ham10000-162": 0.03, "ham10000-35x35": 0.05}


@pytest.mark.parametrize("key", list(CONTESTS))
def test_contest_pipeline_from_definition_to_report(key, tmp_path):
    result = run_contest(key, tmp_path, seed=0, n_boot=200)
    contest = CONTESTS[key]
    for arm, published in contest.targets.items():
        assert result.expected[arm] == pytest.approx(published, abs=1e-6)
        assert result.simulated[arm] == pytest.approx(published, abs=TOLERANCE[key]), (arm, result.simulated)
    export = pd.read_csv(result.paths["csv"])
    assert list(export.columns) == list(EXPORT_COLUMNS) and export["simulated"].all()
    assert export["participant"].nunique() == contest.readers
    per_arm = export.groupby("arm")["case"].nunique().to_dict()
    assert per_arm == dict.fromkeys(contest.arms, contest.cases_per_arm)
    if contest.time_limit_s:
        assert export["timed_out"].any() and (export["elapsed_ms"] <= 1000 * contest.time_limit_s).all()
    html = result.paths["report_html"].read_text()
    assert "SIMULATED readers" in html and "not the study&#39;s physicians" in html
    assert 'data-testid="table-summary"' in html
    doc = json.loads(result.paths["contest"].read_text())
    assert doc["statement"].startswith("SIMULATED readers")
    assert doc["model_accuracy"][contest.arms[0]] is not None


def test_contest_from_the_cli(tmp_path, capsys):
    assert main(["study", "simulate", "--contest", "ham10000-35x35", "--out", str(tmp_path), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED readers (19), not the study's physicians" in out
    assert "published GP accuracy 17.3%" in out and "published GP accuracy 42.4%" in out
    assert (tmp_path / "report" / "report.html").is_file()


def test_contest_from_a_given_case_table(tmp_path):
    """How a platform study's cases (lesionlab.study.export.cases_frame) plug in."""
    from lesionlab.study.columns import MODEL_PROB_COLUMNS
    from lesionlab.study.simulate import synthetic_model_outputs

    codes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    truth = [codes[i % 7] for i in range(70)]
    probs = synthetic_model_outputs(truth, 0.8, seed=0)
    cases = pd.DataFrame({"case": [f"k{i}" for i in range(70)], "image_id": [f"I{i}" for i in range(70)],
                          "truth": truth, **{c: probs[:, j] for j, c in enumerate(MODEL_PROB_COLUMNS)},
                          "model_run": "run-7"})
    result = run_contest("ham10000-35x35", tmp_path, cases=cases, n_boot=100)
    assert result.info["data"] == "a given case table" and result.info["model"] == "run-7"
    assert result.expected["assisted"] == pytest.approx(0.424, abs=1e-6)
