"""OR-Hillis MRMC on synthetic tables: jackknife against brute force, the covariance definitions, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.study.analysis_errors import ExportError, NotCrossedError, UndefinedFOMError
from lesionlab.study.mrmc import (
    auc_with_jackknife,
    estimate_fom,
    jackknife_covariances,
    mrmc,
    or_hillis,
    reader_table,
)

MRMC_CSV = Path(os.environ.get("LESIONLAB_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "data" \
    / "mrmc" / "VanDyke.csv"


def crossed(readers: int = 4, modalities: int = 2, cases: int = 30, seed: int = 0, ties: bool = True) -> pd.DataFrame:
    """A fully crossed long table with 5-point (tied) or continuous ratings that depend on the truth."""
    rng = np.random.default_rng(seed)
    truth = (np.arange(cases) % 3 == 0).astype(int)
    rows = []
    for m in range(modalities):
        for r in range(readers):
            latent = truth * (1.0 + 0.4 * m) + rng.normal(0, 1, cases)
            rating = np.clip(np.round(latent * 1.5 + 3), 1, 5) if ties else latent
            answer = np.where(latent > 0.5, 1, 0)
            for k in range(cases):
                rows.append({"reader": f"r{r}", "modality": f"m{m}", "case": f"c{k}", "truth": truth[k],
                             "rating": rating[k], "answer": answer[k]})
    return pd.DataFrame(rows)


def brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(np.mean([(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]))


def test_auc_and_its_jackknife_match_brute_force():
    rng = np.random.default_rng(1)
    ratings = np.round(rng.normal(0, 1, 25) * 2) / 2
    diseased = np.arange(25) % 2 == 0
    auc, jack = auc_with_jackknife(ratings[None, :], diseased)
    assert auc[0] == pytest.approx(brute_auc(ratings[diseased], ratings[~diseased]), abs=1e-12)
    for k in range(25):
        keep = np.arange(25) != k
        expected = brute_auc(ratings[keep & diseased], ratings[keep & ~diseased])
        assert jack[0, k] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fom, kwargs, subset", [
    ("accuracy", {"answer": "answer"}, "all"),
    ("sensitivity", {"answer": "answer"}, "diseased"),
    ("specificity", {"rating": "rating", "threshold": 3}, "healthy"),
    ("accuracy", {"rating": "rating", "threshold": 4}, "all"),
])
def test_binary_figures_jackknife_over_their_subset(fom, kwargs, subset):
    frame = crossed()
    table = reader_table(frame, "reader", "modality", "case", "truth", rating=kwargs.get("rating"),
                         answer=kwargs.get("answer"))
    est = estimate_fom(table, fom, threshold=kwargs.get("threshold"))
    truth = table.truth.astype(int).astype(bool)
    mask = {"all": np.ones_like(truth), "diseased": truth, "healthy": ~truth}[subset]
    assert len(est.cases) == int(mask.sum())
    values = table.values.astype(float)
    calls = values >= kwargs["threshold"] if "threshold" in kwargs else values == 1
    hits = {"accuracy": calls == truth, "sensitivity": calls, "specificity": ~calls}[fom]
    np.testing.assert_allclose(est.theta, hits[..., mask].mean(axis=-1))
    idx = np.flatnonzero(mask)
    for pos, k in enumerate(idx[:5]):  # leaving a case out of the subset
        keep = np.setdiff1d(idx, [k])
        np.testing.assert_allclose(est.jackknife[..., pos], hits[..., keep].mean(axis=-1))


def test_covariances_are_the_averages_of_the_jackknife_cross_products():
    rng = np.random.default_rng(2)
    jack = rng.normal(0, 1, (3, 4, 20))
    cov = jackknife_covariances(jack)
    k = jack.shape[2]

    def c(i, j, i2, j2):
        a, b = jack[i, j] - jack[i, j].mean(), jack[i2, j2] - jack[i2, j2].mean()
        return (k - 1) / k * float((a * b).sum())

    pairs = [(i, j, i2, j2) for i in range(3) for j in range(4) for i2 in range(3) for j2 in range(4)]
    assert cov.var == pytest.approx(np.mean([c(*p) for p in pairs if p[0] == p[2] and p[1] == p[3]]))
    assert cov.cov1 == pytest.approx(np.mean([c(*p) for p in pairs if p[0] != p[2] and p[1] == p[3]]))
    assert cov.cov2 == pytest.approx(np.mean([c(*p) for p in pairs if p[0] == p[2] and p[1] != p[3]]))
    assert cov.cov3 == pytest.approx(np.mean([c(*p) for p in pairs if p[0] != p[2] and p[1] != p[3]]))


def test_three_modalities_give_every_pairwise_difference_and_one_f_test():
    res = mrmc(crossed(readers=5, modalities=3, cases=45), "reader", "modality", "case", "truth", "auc",
               rating="rating")
    rrrc = res.analyses["rrrc"]
    assert rrrc.test.ndf == 2
    assert [d.label for d in rrrc.differences] == ["m0 - m1", "m0 - m2", "m1 - m2"]
    assert all(d.low < d.estimate < d.high for d in rrrc.differences)
    assert len(rrrc.modality_means) == 3 and 0 < rrrc.test.p_value <= 1


def test_not_fully_crossed_names_the_missing_cells():
    frame = crossed()
    frame = frame.drop(frame[(frame.reader == "r2") & (frame.modality == "m1") & frame.case.isin(["c3", "c7"])].index)
    with pytest.raises(NotCrossedError, match=r"2 of 240 .*reader r2, modality m1, case c3.*reader r2 in modality "
                                              r"m1: 2 case") as err:
        reader_table(frame, "reader", "modality", "case", "truth", rating="rating")
    assert ("r2", "m1", "c3") in err.value.missing and len(err.value.missing) == 2


def test_repeated_cells_and_conflicting_truth_are_errors():
    frame = crossed()
    with pytest.raises(NotCrossedError, match=r"more than once.*reader r0, modality m0, case c0"):
        reader_table(pd.concat([frame, frame.iloc[[0]]]), "reader", "modality", "case", "truth", rating="rating")
    bad = frame.copy()
    bad.loc[(bad.case == "c4") & (bad.reader == "r1"), "truth"] = 1 - bad.loc[bad.case == "c4", "truth"].iloc[0]
    with pytest.raises(ExportError, match=r"truth of case\(s\) \['c4'\] differs"):
        reader_table(bad, "reader", "modality", "case", "truth", rating="rating")


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["truth"]), r"missing column\(s\) truth \(truth\)"),
    (lambda f: f.assign(rating=f.rating.astype(object).where(f.index != 5, "high")), "row 6 has a missing or "
                                                                                     "non-numeric rating 'high'"),
    (lambda f: f.assign(truth=np.where(f.truth == 1, "mel", "nv")), "not binary.*--positive"),
])
def test_bad_tables_get_clear_errors(change, message):
    with pytest.raises(ExportError, match=message):
        mrmc(change(crossed()), "reader", "modality", "case", "truth", "auc", rating="rating")


def test_undefined_figures_of_merit_say_why():
    frame = crossed().assign(truth=0)
    with pytest.raises(UndefinedFOMError, match="0 diseased and 30 non-diseased"):
        mrmc(frame, "reader", "modality", "case", "truth", "auc", rating="rating")
    with pytest.raises(UndefinedFOMError, match="sensitivity is undefined: there are no diseased cases"):
        mrmc(frame, "reader", "modality", "case", "truth", "sensitivity", answer="answer")
    with pytest.raises(ExportError, match="needs --threshold"):
        mrmc(crossed(), "reader", "modality", "case", "truth", "sensitivity", rating="rating")
    with pytest.raises(ExportError, match="auc needs confidence ratings"):
        mrmc(crossed(), "reader", "modality", "case", "truth", "auc", answer="answer")


def test_a_single_reader_gets_the_fixed_reader_analysis_and_is_told_why():
    frame = crossed()
    res = mrmc(frame[frame.reader == "r0"], "reader", "modality", "case", "truth", "auc", rating="rating")
    assert set(res.analyses) == {"frrc"}
    assert any("random-reader analyses (RRRC, RRFC) need at least two readers" in n for n in res.notes)
    assert res.analyses["frrc"].test.p_value is not None
    assert "need at least two readers" in res.text()


def test_positive_labels_turn_class_answers_into_calls():
    frame = crossed()
    frame["truth"] = np.where(frame.truth == 1, "mel", "nv")
    frame["answer"] = np.where(frame.answer == 1, "mel", "nv")
    res = mrmc(frame, "reader", "modality", "case", "truth", "sensitivity", answer="answer", positive=["mel"])
    assert res.n_cases == 10 and res.n_cases_total == 30
    multi = mrmc(frame, "reader", "modality", "case", "truth", "accuracy", answer="answer")
    assert multi.n_cases == 30


def test_or_hillis_from_given_covariances_and_tests_rows():
    theta = np.array([[0.80, 0.82, 0.78], [0.86, 0.88, 0.83]])
    res = or_hillis(theta, jackknife=np.random.default_rng(0).normal(0.8, 0.01, (2, 3, 40)), fom="accuracy",
                    modalities=["alone", "assisted"])
    rows = res.tests(label="pilot")
    assert {r.test.split()[1] for r in rows} == {"RRRC", "FRRC", "RRFC"}
    assert all(r.n == {"readers": 3, "cases": 40} for r in rows)
    assert json.loads(json.dumps(res.to_dict()))["fom_mean"]["assisted"] == pytest.approx(theta[1].mean())


def test_cli_mrmc_prints_and_writes_json(tmp_path, capsys):
    path = tmp_path / "reads.csv"
    crossed(readers=3).to_csv(path, index=False)
    out = tmp_path / "mrmc.json"
    code = main(["study", "mrmc", str(path), "--reader", "reader", "--modality", "modality", "--case", "case",
                 "--truth", "truth", "--rating", "rating", "--fom", "auc", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "random readers, random cases" in text and "ddf" in text
    assert json.loads(out.read_text())["n_cases"] == 30


def test_cli_mrmc_errors_name_the_problem(tmp_path, capsys):
    path = tmp_path / "reads.csv"
    frame = crossed(readers=3)
    frame.iloc[:-1].to_csv(path, index=False)
    code = main(["study", "mrmc", str(path), "--reader", "reader", "--modality", "modality", "--case", "case",
                 "--truth", "truth", "--answer", "answer", "--fom", "accuracy"])
    assert code == 1
    assert "not fully crossed" in capsys.readouterr().err


@pytest.mark.realdata
def test_cli_mrmc_on_the_published_example(capsys):
    if not MRMC_CSV.is_file():
        pytest.skip(f"published MRMC example not found at {MRMC_CSV}")
    assert main(["study", "mrmc", str(MRMC_CSV), "--reader", "reader", "--modality", "modality", "--case", "case",
                 "--truth", "truth", "--rating", "rating", "--fom", "auc"]) == 0
    out = capsys.readouterr().out
    assert "F = 4.456319, ndf = 1, ddf = 15.259675, p = 0.0516657" in out
    assert "chi2 = 5.475953" in out and "F = 8.704000" in out
