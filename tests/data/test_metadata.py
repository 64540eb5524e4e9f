"""Clinical metadata encoder: fitted on train only, serialisable, unknown instead of failure at inference."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lesionlab.data import SEXES, SITES, MetadataEncoder
from lesionlab.data.metadata import validate_patient


def _table() -> pd.DataFrame:
    return pd.DataFrame({"age": [30.0, 50.0, np.nan, 70.0], "sex": ["male", "female", "unknown", "male"],
                         "site": ["back", "face", "unknown", "lower extremity"], "split": "train"})


def test_layout_and_values() -> None:
    enc = MetadataEncoder.fit(_table())
    assert len(SITES) == 15 and SITES[-1] == "unknown" and enc.dim == 2 + 3 + 15
    assert enc.age_mean == pytest.approx(50.0) and enc.age_std == pytest.approx(np.std([30, 50, 70]))
    x = enc.encode_table(_table())
    assert x.dtype == np.float32 and x.shape == (4, 20)
    assert x[0, 0] == pytest.approx((30 - 50) / enc.age_std) and x[0, 1] == 0
    assert x[2, 0] == 0 and x[2, 1] == 1  # missing age: 0 and the flag
    assert (x[:, 2:5].sum(axis=1) == 1).all() and (x[:, 5:].sum(axis=1) == 1).all()
    assert x[1, 2 + SEXES.index("female")] == 1 and x[1, 5 + SITES.index("face")] == 1


def test_fit_refuses_non_training_rows() -> None:
    with pytest.raises(ValueError, match=r"training rows only; the table also has splits \['test'\]"):
        MetadataEncoder.fit(_table().assign(split=["train", "train", "test", "train"]))
    with pytest.raises(ValueError, match="empty table"):
        MetadataEncoder.fit(_table().iloc[:0])


@pytest.mark.parametrize(("age", "sex", "site", "expect_age_missing", "sex_slot", "site_slot"), [
    (None, None, None, 1, "unknown", "unknown"),
    (float("nan"), "", "", 1, "unknown", "unknown"),
    (40, "other", "elbow", 0, "unknown", "unknown"),  # unseen values map to unknown
    ("forty", "MALE", "Lower_Extremity", 1, "male", "lower extremity"),  # unparseable age -> missing; case folded
    (40, "female", "acral", 0, "female", "acral"),
])
def test_encode_one_never_fails(age, sex, site, expect_age_missing, sex_slot, site_slot) -> None:
    enc = MetadataEncoder.fit(_table())
    v = enc.encode_one(age, sex, site)
    assert v.shape == (enc.dim,) and v[1] == expect_age_missing
    assert v[2 + SEXES.index(sex_slot)] == 1 and v[5 + SITES.index(site_slot)] == 1


@pytest.mark.parametrize(("age", "sex", "site", "message"), [
    (130, "male", "back", r"age: 130 is outside 0\.\.120"),
    (-1, "male", "back", r"age: -1 is outside"),
    ("old", "male", "back", r"age: 'old' is not a number"),
    (40, "m", "back", r"sex: 'm' is not one of male, female, unknown"),
    (40, "male", "elbow", r"site: 'elbow' is not one of abdomen"),
])
def test_validate_patient_rejects_bad_input(age, sex, site, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_patient(age, sex, site)


def test_validate_patient_accepts_and_normalises() -> None:
    enc = MetadataEncoder.fit(_table())
    assert validate_patient("45", " Female ", "Upper Extremity", enc.sexes, enc.sites) == (45.0, "female",
                                                                                          "upper extremity")
    assert validate_patient(None, None, None, enc.sexes, enc.sites) == (None, "unknown", "unknown")


def test_round_trip_and_damaged_record() -> None:
    enc = MetadataEncoder.fit(_table())
    again = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again == enc
    assert np.array_equal(again.encode_table(_table()), enc.encode_table(_table()))
    record = enc.to_dict()
    with pytest.raises(ValueError, match="expected"):
        MetadataEncoder.from_dict({k: v for k, v in record.items() if k != "age_std"})
    with pytest.raises(ValueError, match="lacks the 'unknown' slot"):
        MetadataEncoder.from_dict(record | {"sites": ["back"]})


def test_constant_or_missing_ages_do_not_divide_by_zero() -> None:
    enc = MetadataEncoder.fit(_table().assign(age=[40.0] * 4))
    assert enc.age_std == 1.0
    enc = MetadataEncoder.fit(_table().assign(age=[np.nan] * 4))
    assert all(math.isfinite(v) for v in enc.encode_one(40, "male", "back"))
