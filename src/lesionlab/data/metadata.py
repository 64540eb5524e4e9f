"""Clinical metadata (age, sex, anatomical site) as a fixed-length float vector for fusion models.

The encoder is fitted on training rows only (the age scale), saved inside the run, and never fails at inference:
a missing or unseen sex or site becomes ``unknown`` and a missing age sets a flag, because a clinician may not know
or may not enter them. :meth:`MetadataEncoder.validate_one` is the strict check the service uses on what a user
typed, before encoding.

Layout of one vector (``dim`` = 20): ``[age_scaled, age_missing, sex one-hot (3), site one-hot (15)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SEXES: tuple[str, ...] = ("male", "female", "unknown")
# The 14 HAM10000 localizations, then "unknown".
SITES: tuple[str, ...] = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                          "lower extremity", "neck", "scalp", "trunk", "upper extremity", "unknown")
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
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
                raise ValueError(f"cannot fit the metadata encoder: the table has no {column!r} column")
        if "split" in table.columns:
            other = sorted(set(table["split"].astype(str)) - {"train"})
            if other:
                raise ValueError(f"fit the metadata encoder on training rows only; the table also has splits {other}")
        if len(table) == 0:
            raise ValueError("cannot fit the metadata encoder on an empty table")
        ages = pd.to_numeric(table["age"], errors="coerce").dropna()
        mean = float(ages.mean()) if len(ages) else 50.0
        std = float(ages.std(ddof=0)) if len(ages) > 1 else 0.0
        return cls(age_mean=mean, age_std=std if std > 1e-6 else 1.0, fitted_on=len(table))

    @property
    def dim(self) -> int:
        """Length of one encoded vector."""
        return 2 + len(self.sexes) + len(self.sites)

    @property
    def feature_names(self) -> list[str]:
        """Name of each vector position, for reports and model cards."""
        return ["age_scaled", "age_missing", *(f"sex={s}" for s in self.sexes), *(f"site={s}" for s in self.sites)]

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

    def validate_one(self, age: Any, sex: Any, site: Any) -> tuple[float | None, str, str]:
        """Strict check of user input (the service); returns (age or None, sex, site) or raises ValueError."""
        clean_age: float | None = None
        if not _is_missing(age):
            try:
                clean_age = float(age)
            except (TypeError, ValueError):
                raise ValueError(f"age: {age!r} is not a number") from None
            lo, hi = AGE_RANGE
            if not lo <= clean_age <= hi:
                raise ValueError(f"age: {clean_age:g} is outside {lo:g}..{hi:g} years")
        clean_sex = normalise_sex(sex)
        if clean_sex not in self.sexes:
            raise ValueError(f"sex: {sex!r} is not one of {', '.join(self.sexes)}")
        clean_site = normalise_site(site)
        if clean_site not in self.sites:
            raise ValueError(f"site: {site!r} is not one of {', '.join(self.sites)}")
        return clean_age, clean_sex, clean_site

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
