"""``lesionlab predict``: score image files from the command line into a CSV, with the service's own code path.

Each input row is checked on its own: a file that is missing, not an image or has bad metadata gets its message in
the ``error`` column and no probabilities, while every other row is still scored and written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from lesionlab.classes import CLASS_CODES
from lesionlab.data.images import DataError
from lesionlab.data.splits import read_csv_columns
from lesionlab.serve.errors import ServeError
from lesionlab.serve.service import Patient, Predictor, Timer

INPUT_COLUMNS = ("image", "age", "sex", "site")


def read_input_csv(path: str | Path) -> pd.DataFrame:
    """A CSV with an ``image`` column (paths relative to the CSV's folder, or absolute) and optional age/sex/site."""
    path = Path(path)
    table = read_csv_columns(path, ("image",), "input CSV")
    unknown = sorted(set(table.columns) - set(INPUT_COLUMNS))
    if unknown:
        raise DataError(f"{path}: unknown columns {unknown}; expected {', '.join(INPUT_COLUMNS)}")
    table = table.copy()
    table["image"] = [str(p if Path(p).is_absolute() else path.parent / p) for p in table["image"]]
    for col in ("age", "sex", "site"):
        if col not in table.columns:
            table[col] = ""
    return table[list(INPUT_COLUMNS)]


def input_table(images: list[str], age: str | None = None, sex: str | None = None, site: str | None = None
                ) -> pd.DataFrame:
    """The same table from command-line arguments: one row per image, the same metadata for each."""
    return pd.DataFrame({"image": images, "age": age or "", "sex": sex or "", "site": site or ""})


def predict_table(predictor: Predictor, table: pd.DataFrame, batch_size: int = 16) -> pd.DataFrame:
    """Score every row; returns the input columns plus probabilities, top-1, referral, timing, the assessment
    (``assessed``, ``uncertain``, ``cannot_assess``) with its scope, quality and uncertainty columns, ``cautions``
    (the flagged subgroups of the run's evaluation the row's patient is in, as ``site=lower extremity``), the run's
    ``warnings`` and ``error``. A row that cannot be assessed has ``refer`` empty."""
    out_rows: list[dict[str, Any]] = []
    pending: list[tuple[int, Any, Patient, str]] = []

    def flush() -> None:
        if not pending:
            return
        timer = Timer()
        start = time.perf_counter()
        results = predictor.predict([p[1] for p in pending], [p[2] for p in pending], [p[3] for p in pending], timer)
        per_image = 1000.0 * (time.perf_counter() - start) / len(pending)
        for (row_no, _, _, _), res in zip(pending, results, strict=True):
            row = out_rows[row_no]
            for cls in res["probabilities"]:
                row[f"p_{cls['code']}"] = cls["probability"]
            row["top1"] = res["top"][0]["code"]
            row["top1_name"] = res["top"][0]["name"]
            ref = res["referral"]
            row.update(malignant_probability=ref["malignant_probability"], refer=ref["refer"],
                       threshold=ref["threshold"], threshold_source=ref["threshold_source"], ms=round(per_image, 2),
                       assessment=res["assessment"]["status"], in_scope=res["scope"]["in_scope"],
                       scope_score=res["scope"]["score"], quality_flags=" ".join(res["quality"]["flags"]),
                       uncertain=res["uncertainty"]["uncertain"], notes="; ".join(res["image"]["notes"]),
                       cautions="; ".join(f"{c['attribute']}={c['level']}" for c in res["cautions"]))
        pending.clear()

    for i, rec in enumerate(table.to_dict("records")):
        row: dict[str, Any] = {k: rec.get(k, "") for k in INPUT_COLUMNS}
        row.update({f"p_{c}": None for c in CLASS_CODES})
        row.update(top1=None, top1_name=None, malignant_probability=None, refer=None, threshold=None,
                   threshold_source=None, ms=None, assessment=None, in_scope=None, scope_score=None,
                   quality_flags=None, uncertain=None, notes=None, cautions=None,
                   warnings="; ".join(predictor.warnings), error="")
        out_rows.append(row)
        path = Path(str(rec["image"]))
        try:
            patient = predictor.check_patient(rec.get("age"), rec.get("sex"), rec.get("site"))
            if not path.is_file():
                raise ServeError(404, "missing_file", f"{path}: file not found", "image")
            image = predictor.decode(path.read_bytes(), str(path), None, "image")
        except ServeError as err:
            row["error"] = f"row {i + 1}: {err.message}"
            continue
        pending.append((i, image, patient, path.name))
        if len(pending) >= batch_size:
            flush()
    flush()
    return pd.DataFrame(out_rows)
