"""Clinical metadata (age, sex, anatomical site) as a fixed-length float vector for fusion models.

The encoder is fitted on training rows only (the age scale), saved inside the run, and never fails at inference:
a missing or unseen sex or site becomes ``unknown`` and a missing age sets a flag, because a clinician may not know
or may not enter them. :func:`validate_patient` is the strict check the service uses on what a user typed, before
encoding.

Layout of one vector (``dim`` = 20): ``[age_scaled, age_missing, sex one-hot (3), site one-hot (15)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionlab.classes import CLASS_CODES, UnknownClassError, index_of
from lesionlab.data.images import DataError
from lesionlab.data.splits import read_csv_columns

SEXES: tuple[str, ...] = ("male", "female", "unknown")
# The 14 HAM10000 localizations, then "unknown".
SITES: tuple[str, ...] = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                          "lower extremity", "neck", "scalp", "trunk", "upper extremity", "unknown")
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
HAM_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "age", "sex", "localization")
_VERSION = 1


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip() == "")


def normalise_sex(value: Any) -> str:
    """Lower-cased sex, ``unknown`` when missing; the value may still be outside :data:`SEXES`."""
    return "unknown" if _is_missing(value) else str(value).strip().lower()


def normalise_site(value: Any) -> str:
    """Lower-cased anatomical site with single spaces, ``unknown`` when missing."""
    return "unknown" if _is_missing(value) else " ".join(str(value).strip().lower().replace("_", " ").split())


class MetadataError(DataError):
    """A patient's age, sex or site that cannot be used; ``field`` names it and ``code`` says what is wrong."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a user-sent value, cut so that a megabyte of junk does not come back in the error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def validate_patient(age: Any, sex: Any, site: Any, sexes: tuple[str, ...] = SEXES, sites: tuple[str, ...] = SITES,
                     age_range: tuple[float, float] = AGE_RANGE) -> tuple[float | None, str, str]:
    """Strict check of what a user typed (the service, ``lesionlab predict``); returns (age or None, sex, site).

    Sex and site are normalised as in training (case, underscores, spaces) and must then be in the vocabulary: the
    encoder would silently map an unseen value to ``unknown``, which a typo must not become. Raises
    :class:`MetadataError` naming the field.
    """
    clean_age: float | None = None
    if not _is_missing(age):
        try:
            clean_age = float(str(age).strip())
        except ValueError:
            raise MetadataError("age", "invalid_age", f"age: {_short(age)} is not a number") from None
        lo, hi = age_range
        if not (math.isfinite(clean_age) and lo <= clean_age <= hi):
            raise MetadataError("age", "age_out_of_range", f"age: {clean_age:g} is outside {lo:g}..{hi:g} years")
    clean_sex = normalise_sex(sex)
    if clean_sex not in sexes:
        raise MetadataError("sex", "unknown_sex", f"sex: {_short(sex)} is not one of {', '.join(sexes)}")
    clean_site = normalise_site(site)
    if clean_site not in sites:
        raise MetadataError("site", "unknown_site", f"site: {_short(site)} is not one of {', '.join(sites)}")
    return clean_age, clean_sex, clean_site


@dataclass(frozen=True)
class MetadataEncoder:
    """Age scaled by the training mean/std plus a missing flag; one-hot sex and site with an ``unknown`` slot."""

    age_mean: float
    age_std: float
    sexes: tuple[str, ...] = SEXES
    sites: tuple[str, ...] = SITES
    fitted_on: int = 0  # number of training rows, for the record
    version: int = field(default=_VERSION)

    @classmethod
    def fit(cls, table: pd.DataFrame) -> MetadataEncoder:
        """Fit on the training rows of a sample table; rows of other splits are refused to rule out leakage."""
        for column in ("age", "sex", "site"):
            if column not in table.columns:
                raise DataError(f"cannot fit the metadata encoder: the table has no {column!r} column")
        if "split" in table.columns:
            other = sorted(set(table["split"].astype(str)) - {"train"})
            if other:
                raise DataError(f"fit the metadata encoder on training rows only; the table also has splits {other}")
        if len(table) == 0:
            raise DataError("cannot fit the metadata encoder on an empty table")
        ages = pd.to_numeric(table["age"], errors="coerce").dropna()
        mean = float(ages.mean()) if len(ages) else 50.0
        std = float(ages.std(ddof=0)) if len(ages) > 1 else 0.0
        return cls(age_mean=mean, age_std=std if std > 1e-6 else 1.0, fitted_on=len(table))

    @property
    def dim(self) -> int:
        """Length of one encoded vector."""
        return 2 + len(self.sexes) + len(self.sites)

    def encode_table(self, table: pd.DataFrame) -> np.ndarray:
        """Encode every row of a sample table -> float32 array [N, dim]."""
        n = len(table)
        out = np.zeros((n, self.dim), dtype=np.float32)
        ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=np.float64)
        missing = np.isnan(ages)
        out[:, 0] = np.where(missing, 0.0, (ages - self.age_mean) / self.age_std)
        out[:, 1] = missing
        sex_pos = {s: i for i, s in enumerate(self.sexes)}
        site_pos = {s: i for i, s in enumerate(self.sites)}
        sex_idx = [sex_pos.get(normalise_sex(v), sex_pos["unknown"]) for v in table["sex"]]
        site_idx = [site_pos.get(normalise_site(v), site_pos["unknown"]) for v in table["site"]]
        rows = np.arange(n)
        out[rows, 2 + np.asarray(sex_idx, dtype=np.int64)] = 1.0
        out[rows, 2 + len(self.sexes) + np.asarray(site_idx, dtype=np.int64)] = 1.0
        return out

    def encode_one(self, age: float | None, sex: str | None, site: str | None) -> np.ndarray:
        """Encode one patient -> float32 [dim]; missing or unseen values map to ``unknown``, never an error."""
        frame = pd.DataFrame({"age": [np.nan if _is_missing(age) else age], "sex": [sex], "site": [site]})
        return self.encode_table(frame)[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for ``run.json``."""
        return {"version": self.version, "age_mean": self.age_mean, "age_std": self.age_std,
                "sexes": list(self.sexes), "sites": list(self.sites), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetadataEncoder:
        """Inverse of :meth:`to_dict`, checking the record so a damaged run fails here, not inside the model."""
        expected = {"version", "age_mean", "age_std", "sexes", "sites", "fitted_on"}
        if set(data) != expected:
            raise ValueError(f"metadata encoder record has keys {sorted(data)}, expected {sorted(expected)}")
        if data["version"] != _VERSION:
            raise ValueError(f"metadata encoder record version {data['version']} is not supported ({_VERSION})")
        for key in ("sexes", "sites"):
            if "unknown" not in data[key]:
                raise ValueError(f"metadata encoder record: {key} lacks the 'unknown' slot")
        if not float(data["age_std"]) > 0:
            raise ValueError(f"metadata encoder record: age_std must be positive, got {data['age_std']}")
        return cls(age_mean=float(data["age_mean"]), age_std=float(data["age_std"]), sexes=tuple(data["sexes"]),
                   sites=tuple(data["sites"]), fitted_on=int(data["fitted_on"]), version=int(data["version"]))


def first_index(mask: pd.Series | np.ndarray) -> int:
    """Position of the first true value: the row an error message names."""
    return int(np.flatnonzero(np.asarray(mask))[0])


def parse_ham_metadata(path: str | Path) -> pd.DataFrame:
    """Read and validate a HAM10000 metadata CSV -> sample table (no split), in file order.

    Errors name the file, the CSV line and the field: a missing or renamed column, an empty or duplicate id, an
    unknown diagnosis code, an age that is not a number in 0..120, a sex or site outside the HAM10000 vocabulary.
    """
    path = Path(path)
    raw = read_csv_columns(path, HAM_COLUMNS, "HAM10000 metadata CSV")
    if raw.empty:
        raise DataError(f"{path}: no data rows")

    def fail(i: int, message: str) -> DataError:
        return DataError(f"{path}: line {i + 2} (image {raw['image_id'].iloc[i] or '?'}): {message}")

    for column in ("image_id", "lesion_id", "dx"):
        empty = raw[column] == ""
        if empty.any():
            raise fail(first_index(empty), f"empty {column}")
    dup = raw["image_id"].duplicated(keep="first")
    if dup.any():
        i = first_index(dup)
        raise fail(i, f"image_id also on line {first_index(raw['image_id'] == raw['image_id'].iloc[i]) + 2}")
    labels = []
    for i, code in enumerate(raw["dx"]):
        try:
            labels.append(index_of(code))
        except UnknownClassError:
            raise fail(i, f"unknown diagnosis code {code!r} in column 'dx'; expected one of "
                          f"{', '.join(CLASS_CODES)}") from None
    missing_age = raw["age"].str.lower().isin(["", "nan", "na", "unknown"])
    age = pd.to_numeric(raw["age"].where(~missing_age), errors="coerce")
    bad_age = (~missing_age & age.isna()) | (age < AGE_RANGE[0]) | (age > AGE_RANGE[1])
    if bad_age.any():
        i = first_index(bad_age)
        raise fail(i, f"age {raw['age'].iloc[i]!r} is not a number in {AGE_RANGE[0]:g}..{AGE_RANGE[1]:g}")
    sex = raw["sex"].map(normalise_sex)
    if (~sex.isin(SEXES)).any():
        i = first_index(~sex.isin(SEXES))
        raise fail(i, f"sex {raw['sex'].iloc[i]!r} is not one of {', '.join(SEXES)}")
    site = raw["localization"].map(normalise_site)
    if (~site.isin(SITES)).any():
        i = first_index(~site.isin(SITES))
        raise fail(i, f"localization {raw['localization'].iloc[i]!r} is not one of {', '.join(SITES)}")
    table = pd.DataFrame({"image_id": raw["image_id"], "lesion_id": raw["lesion_id"], "label": labels,
                          "dx": raw["dx"].str.lower(), "age": age.astype(float), "sex": sex, "site": site,
                          "split": ""})
    if "dx_type" in raw.columns:
        table["dx_type"] = raw["dx_type"]
    return table


def missingness(table: pd.DataFrame) -> dict[str, int]:
    """How many rows lack each clinical field (age NaN, sex or site ``unknown``)."""
    return {"age": int(table["age"].isna().sum()), "sex": int((table["sex"] == "unknown").sum()),
            "site": int((table["site"] == "unknown").sum())}
