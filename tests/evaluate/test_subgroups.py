"""Subgroup figures (sex, age band, site) with CIs and counts, and the test that flags a subgroup below the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.core.metrics import balanced_accuracy
from lesionlab.evaluate.report import run_report
from lesionlab.evaluate.subgroups import (
    age_band,
    balanced_accuracy_interval,
    card_summary,
    patient_levels,
    permutation_test,
    report_tables,
    subgroup_analysis,
    subgroup_cautions,
    summary_text,
    wilson,
)

MEL = CLASS_CODES.index("mel")


@pytest.mark.parametrize(("age", "band"), [(0, "<30"), (29.9, "<30"), (30, "30-44"), (44, "30-44"), (45, "45-59"),
                                           (60, "60-74"), (74.5, "60-74"), (75, "75+"), (85, "75+"),
                                           (float("nan"), "unknown"), (None, "unknown"), ("x", "unknown")])
def test_age_bands(age: object, band: str) -> None:
    assert age_band(age) == band


def test_wilson_interval() -> None:
    low, high = wilson(8, 10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * np.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert wilson(0, 0) is None


def test_balanced_accuracy_interval_stays_honest_for_tiny_classes() -> None:
    # one nevus right, one melanoma wrong: a within-class bootstrap would give [0.5, 0.5]
    low, high = balanced_accuracy_interval(np.array([True, False]), np.array([5, 4]), draws=20000)
    assert low < 0.3 and high > 0.7 and low <= 0.5 <= high
    # large classes: close to the normal approximation of the mean of two recalls
    correct = np.r_[np.ones(160, bool), np.zeros(40, bool), np.ones(120, bool), np.zeros(80, bool)]
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    low, high = balanced_accuracy_interval(correct, labels, draws=40000)
    half = 1.96 * np.sqrt(0.8 * 0.2 / 200 + 0.6 * 0.4 / 200) / 2
    assert (low, high) == pytest.approx((0.7 - half, 0.7 + half), abs=0.006)
    assert balanced_accuracy_interval(np.ones(3, bool), np.zeros(3, int))[1] == 1.0  # all right: up to the estimate


def _brute_force_p(correct: np.ndarray, labels: np.ndarray, member: np.ndarray, draws: int, seed: int) -> float:
    """The same test by literally permuting membership within each class."""
    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(labels) if member[labels == c].any() and (~member[labels == c]).any()]

    def d(m: np.ndarray) -> float:
        g = np.mean([correct[m & (labels == c)].mean() for c in classes])
        r = np.mean([correct[~m & (labels == c)].mean() for c in classes])
        return r - g

    observed = d(member)
    count = 0
    for _ in range(draws):
        perm = member.copy()
        for c in classes:
            idx = np.flatnonzero(labels == c)
            perm[idx] = rng.permutation(member[idx])
        count += d(perm) >= observed - 1e-12
    return (1 + count) / (1 + draws)


def test_hypergeometric_null_equals_permuting_membership_within_classes() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice(3, 150, p=[0.5, 0.3, 0.2])
    member = rng.random(150) < 0.3
    correct = rng.random(150) < np.where(member, 0.6, 0.75)
    fast = permutation_test(correct, labels, member, draws=4000, seed=2)["p"]
    slow = _brute_force_p(correct, labels, member, draws=1500, seed=3)
    assert fast == pytest.approx(slow, abs=0.04)


def test_the_test_holds_its_level_under_the_null_and_finds_a_real_gap() -> None:
    rng = np.random.default_rng(5)
    small = 0
    for rep in range(200):
        labels = rng.choice(4, 120)
        member = rng.random(120) < 0.25
        correct = rng.random(120) < np.array([0.9, 0.7, 0.5, 0.8])[labels]  # same recall in and out of the group
        small += permutation_test(correct, labels, member, draws=800, seed=rep)["p"] < 0.05
    assert small / 200 <= 0.09  # one-sided test at 0.05: about 5% rejections, not more
    labels = rng.choice(4, 300)
    member = rng.random(300) < 0.25
    correct = rng.random(300) < np.where(member, 0.45, 0.85)
    result = permutation_test(correct, labels, member, draws=4000, seed=0)
    assert result["p"] < 0.001 and result["difference"] == pytest.approx(
        result["rest_balanced_accuracy"] - result["group_balanced_accuracy"])
    assert permutation_test(correct, np.zeros(300, int), np.zeros(300, bool))["reason"].startswith("no class")


def _evaluation(n: int = 900, seed: int = 0, bad_site: str | None = "acral") -> tuple[pd.DataFrame, np.ndarray,
                                                                                         np.ndarray]:
    """Images with clinical data; the model is much worse on ``bad_site``."""
    rng = np.random.default_rng(seed)
    y = rng.choice(7, n, p=[0.03, 0.05, 0.11, 0.01, 0.12, 0.66, 0.02])
    sites = rng.choice(["back", "face", "lower extremity", "trunk", "acral"], n, p=[0.3, 0.15, 0.2, 0.27, 0.08])
    table = pd.DataFrame({"sex": rng.choice(["male", "female", "unknown"], n, p=[0.52, 0.46, 0.02]),
                          "age": np.where(rng.random(n) < 0.03, np.nan, rng.choice(np.arange(5, 90, 5), n)),
                          "site": sites})
    skill = np.where(sites == bad_site, 0.2, 3.5) if bad_site else np.full(n, 3.5)
    z = rng.normal(size=(n, 7)) + skill[:, None] * np.eye(7)[y]
    return table, y, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_subgroup_block_counts_intervals_and_flags_the_bad_site() -> None:
    table, y, p = _evaluation()
    block = subgroup_analysis(table, y, p, bootstrap=200, seed=0, draws=4000)
    groups = {(g["attribute"], g["level"]): g for g in block["groups"]}
    assert {a for a, _ in groups} == {"sex", "age_band", "site"}
    acral = groups[("site", "acral")]
    assert acral["flagged"] and acral["tested"] and acral["p_holm"] < 0.05
    assert block["flagged"] == ["site=acral"]
    assert not any(g["flagged"] for k, g in groups.items() if k != ("site", "acral"))
    member = table["site"].to_numpy() == "acral"
    assert acral["n"] == member.sum() and acral["n_mel"] == int((y[member] == MEL).sum())
    assert acral["balanced_accuracy"] == pytest.approx(balanced_accuracy(y[member], p[member]))
    assert acral["accuracy_ci"][0] <= acral["accuracy"] <= acral["accuracy_ci"][1]
    assert acral["balanced_accuracy_ci"][0] <= acral["balanced_accuracy"] <= acral["balanced_accuracy_ci"][1]
    tested = [g for g in block["groups"] if g["tested"]]
    assert block["test"]["n_tested"] == len(tested) and all(g["p_holm"] >= g["p"] for g in tested)
    assert sum(g["n"] for g in block["groups"] if g["attribute"] == "sex") == len(y)
    assert groups[("age_band", "unknown")]["n"] == int(table["age"].isna().sum())
    small = [g for g in block["groups"] if g["n"] < 10]
    assert all(not g["tested"] and "fewer than 10" in g["not_tested"] for g in small)
    assert "site=acral" in summary_text(block) and card_summary(block)["flagged"] == ["site=acral"]


def test_no_flag_when_the_model_is_equally_good_everywhere_and_missing_columns() -> None:
    table, y, p = _evaluation(bad_site=None, seed=3)
    block = subgroup_analysis(table, y, p, bootstrap=0, draws=2000)
    assert block["flagged"] == [] and "none flagged" in summary_text(block)
    assert all(g["balanced_accuracy_ci"] is None for g in block["groups"])
    bare = subgroup_analysis(pd.DataFrame(index=range(len(y))), y, p, bootstrap=0, draws=100)
    assert [(g["attribute"], g["level"]) for g in bare["groups"]] == [("sex", "unknown"), ("age_band", "unknown"),
                                                                      ("site", "unknown")]
    assert all("no rest" in g["not_tested"] for g in bare["groups"])
    with pytest.raises(ValueError, match="table rows"):
        subgroup_analysis(table.iloc[:5], y, p)


def test_subgroups_in_the_report(synth) -> None:
    from lesionlab.evaluate.evaluation import card_document, metrics_document
    from lesionlab.evaluate.predictions import arrays

    frame = synth(n=400, seed=1)
    y, p = arrays(frame)
    table, _, _ = _evaluation(n=400, seed=1)
    doc = metrics_document(y, p, bootstrap=0)
    doc["subgroups"] = subgroup_analysis(table, y, p, bootstrap=0, draws=500)
    tables = report_tables(doc["subgroups"])
    assert [t.testid for t in tables] == ["table-subgroups-sex", "table-subgroups-age_band", "table-subgroups-site"]
    document = run_report(doc, frame)
    assert any(t.testid == "table-subgroups-site" for t in document.tables)
    assert any(k == "Subgroups" for k, _ in document.card)
    card = card_document(doc)
    assert card["subgroups"]["summary"].startswith(f"{len(doc['subgroups']['groups'])} subgroups")


# -- cautions for one patient (what the service shows beside an answer)

FLAGGED = {"groups": [  # in the analysis's order: sex, age band, site
    {"attribute": "sex", "level": "unknown", "n": 12, "flagged": True, "p_holm": 0.02},
    {"attribute": "age_band", "level": "75+", "n": 40, "flagged": True, "p_holm": 0.01, "balanced_accuracy": 0.41},
    {"attribute": "site", "level": "back", "n": 300, "flagged": False, "p_holm": 0.9},
    {"attribute": "site", "level": "lower extremity", "n": 182, "flagged": True, "p_holm": 0.0378,
     "balanced_accuracy": 0.5, "group_balanced_accuracy_shared": 0.553, "rest_balanced_accuracy_shared": 0.814},
]}


@pytest.mark.parametrize(("age", "sex", "site", "expected"), [
    (62, "male", "lower extremity", [("site", "lower extremity")]),
    (80, "female", "lower extremity", [("age_band", "75+"), ("site", "lower extremity")]),
    (80, None, "back", [("sex", "unknown"), ("age_band", "75+")]),  # not given is a subgroup of its own
    (40, "female", "back", []),  # back is not flagged
    (None, "male", None, []),
])
def test_cautions_match_the_patients_flagged_subgroups(age: object, sex: str | None, site: str | None,
                                                       expected: list[tuple[str, str]]) -> None:
    cautions = subgroup_cautions(FLAGGED, age, sex, site, "eval-test")
    assert [(c["attribute"], c["level"]) for c in cautions] == expected
    assert all(c["source"] == "eval-test" and c["message"].startswith("Less reliable for this patient")
               for c in cautions)


def test_caution_quotes_the_figures_that_flagged_it() -> None:
    [site] = subgroup_cautions(FLAGGED, 50, "male", "lower extremity", "eval-test")
    assert (site["n"], site["balanced_accuracy"], site["rest_balanced_accuracy"], site["p_holm"]) == (
        182, 0.553, 0.814, 0.0378)  # the same-class figures the test compared, not the subgroup's own 0.5
    assert site["message"] == ("Less reliable for this patient: in its evaluation (eval-test) the model was "
                               "significantly less accurate for lesions on the lower extremity (balanced accuracy "
                               "0.55, against 0.81 for the rest; 182 images; Holm-adjusted p 0.038). Weigh its "
                               "answer accordingly.")
    [age] = subgroup_cautions(FLAGGED, 90, "male", "back")  # an older card: no same-class figures
    assert age["balanced_accuracy"] == 0.41 and age["rest_balanced_accuracy"] is None
    assert "patients aged 75+ years (balanced accuracy 0.41; 40 images" in age["message"]
    assert "in its evaluation the model" in age["message"]
    [sex] = subgroup_cautions(FLAGGED, 50, None, "back")
    assert "patients with no sex given (12 images; Holm-adjusted p 0.02)" in sex["message"]


@pytest.mark.parametrize("block", [
    None, [], "site=back", {}, {"groups": "x"}, {"groups": [None, 3, "g"]},
    {"groups": [{"attribute": "site", "level": "back", "flagged": "true"}]},  # only a real True flags
    {"groups": [{"attribute": 5, "level": "back", "flagged": True}]},
])
def test_cautions_skip_what_is_malformed(block: object) -> None:
    assert subgroup_cautions(block, 50, "male", "back") == []


def test_cautions_ignore_malformed_figures() -> None:
    block = {"groups": [{"attribute": "site", "level": "back", "flagged": True, "n": "many", "p_holm": float("nan"),
                         "group_balanced_accuracy_shared": True, "balanced_accuracy": None}]}
    [c] = subgroup_cautions(block, 50, "male", "back")
    assert (c["n"], c["p_holm"], c["balanced_accuracy"]) == (None, None, None)
    assert c["message"].endswith("for lesions on the back. Weigh its answer accordingly.")


def test_patient_levels_name_subgroups_as_the_analysis_does() -> None:
    table, y, p = _evaluation()
    block = subgroup_analysis(table, y, p, bootstrap=0, draws=2000)
    levels = {(g["attribute"], g["level"]) for g in block["groups"]}
    for row in table.itertuples():
        assert set(patient_levels(row.age, row.sex, row.site).items()) <= levels
    assert patient_levels(None, None, None) == {"sex": "unknown", "age_band": "unknown", "site": "unknown"}


def test_the_model_card_carries_what_a_caution_quotes() -> None:
    table, y, p = _evaluation()
    block = subgroup_analysis(table, y, p, bootstrap=0, draws=4000)
    acral = next(g for g in block["groups"] if g["level"] == "acral")
    [from_card] = subgroup_cautions(card_summary(block), 50, "male", "acral", "eval-test")
    assert from_card == subgroup_cautions(block, 50, "male", "acral", "eval-test")[0]
    assert from_card["balanced_accuracy"] == acral["group_balanced_accuracy_shared"]
    assert from_card["rest_balanced_accuracy"] == acral["rest_balanced_accuracy_shared"]
