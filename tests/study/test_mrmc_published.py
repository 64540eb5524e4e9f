"""OR-Hillis against the published Van Dyke example (../shared/data/mrmc): every published number, 6+ digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.study.mrmc import mrmc

pytestmark = pytest.mark.realdata
MRMC_DIR = Path(os.environ.get("LESIONLAB_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "data" \
    / "mrmc"

# The published figures, as printed in ../shared/data/mrmc/README.md (RJafroc / OR-DBM MRMC 2.51).
AUC = {0: [0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
       1: [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]}
MEANS = {0: 0.89703704, 1: 0.94083736}
PUBLISHED = {
    "ms_t": 0.004796170532, "ms_r": 0.003836199989, "ms_tr": 0.000551030622,
    "var": 0.000802288266, "cov1": 0.000346613709, "cov2": 0.000344074829, "cov3": 0.000239028371,
    "f": 4.456318693157, "ddf": 15.259674589142, "p": 0.051665685819,
    "diff": -0.043800322061, "se": 0.020748618379, "ci_low": -0.087959498567, "ci_high": 0.000358854444,
    "frrc_chi2": 5.475953242477, "frrc_p": 0.019279843071, "rrfc_p": 0.041958752495,
}
RRFC_F = 8.704  # published to four significant digits only


def sig_equal(got: float, published: float, digits: int) -> bool:
    """``got`` agrees with ``published`` to ``digits`` significant digits (half a unit in the last one)."""
    return abs(got - published) <= 0.5 * 10 ** (np.floor(np.log10(abs(published))) - digits + 1)


@pytest.fixture(scope="module")
def vandyke():
    path = MRMC_DIR / "VanDyke.csv"
    if not path.is_file():
        pytest.skip(f"published MRMC example not found at {MRMC_DIR} (place ../shared beside the repository)")
    frame = pd.read_csv(path)
    return mrmc(frame, "reader", "modality", "case", "truth", "auc", rating="rating", where=str(path))


def test_published_readme_holds_the_figures_we_check():
    readme = MRMC_DIR / "README.md"
    if not readme.is_file():
        pytest.skip(f"published MRMC example not found at {MRMC_DIR}")
    text = readme.read_text()
    for value in [*PUBLISHED.values(), *AUC[0], *AUC[1], *MEANS.values()]:
        assert f"{value:.12f}".rstrip("0").lstrip("-").lstrip("0") in text, value
    assert "8.704" in text


def test_per_reader_auc_and_means(vandyke):
    assert vandyke.readers == ("0", "1", "2", "3", "4") and vandyke.modalities == ("0", "1")
    assert vandyke.n_cases == 114
    for i, values in AUC.items():
        for j, published in enumerate(values):
            assert sig_equal(vandyke.theta[i, j], published, 8), (i, j, vandyke.theta[i, j], published)
        assert sig_equal(vandyke.means[i], MEANS[i], 8)


def test_mean_squares_and_covariances(vandyke):
    cov = vandyke.covariances
    got = {"ms_t": vandyke.ms_t, "ms_r": vandyke.ms_r, "ms_tr": vandyke.ms_tr, "var": cov.var, "cov1": cov.cov1,
           "cov2": cov.cov2, "cov3": cov.cov3}
    for key, value in got.items():
        assert sig_equal(value, PUBLISHED[key], 9), (key, value, PUBLISHED[key])


def test_random_readers_random_cases(vandyke):
    rrrc = vandyke.analyses["rrrc"]
    assert rrrc.test.ndf == 1
    for got, key in ((rrrc.test.statistic, "f"), (rrrc.test.ddf, "ddf"), (rrrc.test.p_value, "p")):
        assert sig_equal(got, PUBLISHED[key], 10), (key, got)
    (diff,) = rrrc.differences
    assert diff.label == "0 - 1"
    for got, key in ((diff.estimate, "diff"), (diff.se, "se"), (diff.low, "ci_low"), (diff.high, "ci_high"),
                     (diff.p_value, "p")):
        assert sig_equal(got, PUBLISHED[key], 9), (key, got)


def test_fixed_readers_and_fixed_cases(vandyke):
    frrc, rrfc = vandyke.analyses["frrc"], vandyke.analyses["rrfc"]
    assert sig_equal(frrc.test.statistic, PUBLISHED["frrc_chi2"], 10)
    assert sig_equal(frrc.test.p_value, PUBLISHED["frrc_p"], 10)
    assert frrc.test.ddf is None and frrc.test.ndf == 1
    assert sig_equal(rrfc.test.statistic, RRFC_F, 4)
    # beyond its four printed digits, F(fixed cases) is MS(T) / MS(T:R) of the published mean squares
    assert sig_equal(rrfc.test.statistic, PUBLISHED["ms_t"] / PUBLISHED["ms_tr"], 9)
    assert rrfc.test.ddf == 4
    assert sig_equal(rrfc.test.p_value, PUBLISHED["rrfc_p"], 10)


def test_json_round_trip_keeps_the_figures(vandyke):
    doc = json.loads(json.dumps(vandyke.to_dict()))
    assert sig_equal(doc["analyses"]["rrrc"]["test"]["ddf"], PUBLISHED["ddf"], 10)
    assert doc["fom_per_reader"]["1"]["3"] == pytest.approx(0.99935588, abs=5e-9)
    assert "Hillis" in doc["method"]
