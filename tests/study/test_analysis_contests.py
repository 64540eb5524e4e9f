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
