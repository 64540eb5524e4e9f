"""The answer export (:mod:`lesionlab.study.columns`) and the case table, read from a created study.

``answers_frame(study)``: one row per stored answer, exactly ``EXPORT_COLUMNS``, ordered by participant, session,
position and step. ``cases_frame(study)``: one row per case with its truth and the model's outputs, for the analysis
(the model alone on the same cases). ``write_export`` writes both as CSV and JSON records, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from lesionlab.classes import CLASS_CODES
from lesionlab.core.io import atomic_write, atomic_write_text, json_safe
from lesionlab.study.columns import EXPORT_COLUMNS, MODEL_PROB_COLUMNS
from lesionlab.study.folder import StudyFolder, open_study
from lesionlab.study.participation import model_shown
from lesionlab.study.storage import Answer, Assignment, Case, CaseTruth, ModelOutput, Study, as_utc

CASE_COLUMNS: tuple[str, ...] = (
    "case", "image_id", "lesion_id", "truth", "case_set", "arms", *MODEL_PROB_COLUMNS, "model_top", "model_malignant",
    "model_run", "faulty", "faulty_top", *(f"faulty_p_{c}" for c in CLASS_CODES), "faulty_malignant",
    "image_sha256", "source_sha256",
)


def _open(study: str | Path | StudyFolder) -> tuple[StudyFolder, bool]:
    if isinstance(study, StudyFolder):
        return study, False
    return open_study(study), True


def _iso(value: Any) -> str:
    return as_utc(value).isoformat(timespec="milliseconds") if value is not None else ""


def _outputs(db: Any, study_id: str) -> dict[tuple[str, str], ModelOutput]:
    rows = db.scalars(select(ModelOutput).join(Case, Case.id == ModelOutput.case_id).where(Case.study_id == study_id))
    return {(r.case_id, r.variant): r for r in rows}


def answers_frame(study: str | Path | StudyFolder) -> pd.DataFrame:
    """Every stored answer of a study, in the export's columns and types."""
    folder, owned = _open(study)
    try:
        definition = folder.definition
        with folder.sessions() as db:
            srow = db.get(Study, folder.study_id)
            design = srow.design if srow is not None else definition.design
            outputs = _outputs(db, folder.study_id)
            truths = {t.case_id: t for t in db.scalars(
                select(CaseTruth).join(Case, Case.id == CaseTruth.case_id).where(Case.study_id == folder.study_id))}
            query = (select(Answer, Assignment).join(Assignment, Assignment.id == Answer.assignment_id)
                     .join(Case, Case.id == Answer.case_id).where(Case.study_id == folder.study_id)
                     .order_by(Answer.participant_id, Assignment.session, Assignment.position, Answer.step))
            records = []
            for ans, asg in db.execute(query):
                truth = truths[ans.case_id]
                shown = model_shown(definition, ans.arm, ans.step)
                model = outputs.get((ans.case_id, "model"))
                faulty = outputs.get((ans.case_id, "faulty")) if ans.arm == "faulty" and shown else None
                out = faulty or model
                probs = list(out.probabilities) if out is not None else [np.nan] * len(CLASS_CODES)
                records.append({
                    "study": folder.study_id, "design": design, "participant": ans.participant_id,
                    "simulated": False, "case": ans.case_id, "image_id": truth.image_id, "arm": ans.arm,
                    "session": asg.session, "step": ans.step, "position": asg.position,
                    "answer": ans.answer or "", "confidence": ans.confidence,
                    "management": ans.management or "", "shown_at": _iso(ans.shown_at),
                    "answered_at": _iso(ans.answered_at), "elapsed_ms": ans.client_elapsed_ms,
                    "server_elapsed_ms": ans.server_elapsed_ms, "timed_out": bool(ans.timed_out),
                    "truth": truth.truth, "model_shown": bool(shown and out is not None),
                    "model_top": out.top if (shown and out is not None) else "",
                    **dict(zip(MODEL_PROB_COLUMNS, probs, strict=True)),
                    "model_malignant": out.malignant if out is not None else np.nan,
                    "model_faulty": faulty is not None, "model_run": out.run_id if out is not None else "",
                })
    finally:
        if owned:
            folder.close()
    frame = pd.DataFrame.from_records(records, columns=list(EXPORT_COLUMNS))
    for col in ("session", "step", "position"):
        frame[col] = frame[col].astype("int64")
    for col in ("confidence", "elapsed_ms", "server_elapsed_ms", *MODEL_PROB_COLUMNS, "model_malignant"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in ("simulated", "timed_out", "model_shown", "model_faulty"):
        frame[col] = frame[col].astype(bool)
    return frame


def cases_frame(study: str | Path | StudyFolder) -> pd.DataFrame:
    """One row per case: truth, which arms read it, the model's output and, in the faulty arm, what was shown."""
    folder, owned = _open(study)
    try:
        definition = folder.definition
        arms_of_set: dict[str, list[str]] = {}
        for arm, case_set in definition.arm_sets().items():
            arms_of_set.setdefault(case_set, []).append(arm)
        with folder.sessions() as db:
            outputs = _outputs(db, folder.study_id)
            query = (select(Case, CaseTruth).join(CaseTruth, CaseTruth.case_id == Case.id)
                     .where(Case.study_id == folder.study_id).order_by(Case.pool_position))
            records = []
            for case, truth in db.execute(query):
                model = outputs.get((case.id, "model"))
                faulty = outputs.get((case.id, "faulty"))
                probs = list(model.probabilities) if model is not None else [np.nan] * len(CLASS_CODES)
                fprobs = list(faulty.probabilities) if faulty is not None else [np.nan] * len(CLASS_CODES)
                records.append({
                    "case": case.id, "image_id": truth.image_id, "lesion_id": truth.lesion_id, "truth": truth.truth,
                    "case_set": case.case_set, "arms": ",".join(arms_of_set.get(case.case_set, [])),
                    **dict(zip(MODEL_PROB_COLUMNS, probs, strict=True)),
                    "model_top": model.top if model is not None else "",
                    "model_malignant": model.malignant if model is not None else np.nan,
                    "model_run": model.run_id if model is not None else "",
                    "faulty": faulty is not None, "faulty_top": faulty.top if faulty is not None else "",
                    **{f"faulty_p_{c}": p for c, p in zip(CLASS_CODES, fprobs, strict=True)},
                    "faulty_malignant": faulty.malignant if faulty is not None else np.nan,
                    "image_sha256": case.image_sha256, "source_sha256": truth.source_sha256,
                })
    finally:
        if owned:
            folder.close()
    return pd.DataFrame.from_records(records, columns=list(CASE_COLUMNS))


def write_export(study: str | Path | StudyFolder, out_dir: str | Path) -> dict[str, Path]:
    """``answers.csv``, ``answers.json`` (records), ``cases.csv`` and ``cases.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, frame in (("answers", answers_frame(study)), ("cases", cases_frame(study))):
        csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
        atomic_write(csv_path, lambda tmp, f=frame: f.to_csv(tmp, index=False))
        records = json_safe(frame.replace({np.nan: None}).to_dict(orient="records"))
        atomic_write_text(json_path, json.dumps(records, indent=1, allow_nan=False) + "\n")
        written[f"{name}_csv"], written[f"{name}_json"] = csv_path, json_path
    return written
