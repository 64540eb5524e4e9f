"""Reading and checking an answer export (the table of :mod:`lesionlab.study.columns`) for the analysis.

:func:`load_answers` takes an export file (CSV, or JSON records), a DataFrame, or a study created by the platform
(read through ``lesionlab.study.export.answers_frame``), checks every column and value with errors that name the
file, row, column and value, and returns :class:`Answers`: the typed table plus what the analysis derives from it:

* ``condition``: what the reader saw when answering. ``unassisted``, ``assisted`` or ``faulty`` from ``arm``; in
  the ``revise`` design the first answer (step 1) is ``unassisted`` whatever the row's arm, and the second (step 2)
  takes the row's arm (``assisted`` or ``faulty``).
* ``correct``: the answer equals the truth. An answer flagged ``timed_out`` does not count, even when a class
  arrived late (the server enforces the limit; the submitted class stays in ``answer_submitted``). No answer is
  wrong: an error in accuracy and neither a hit nor a correct rejection in every sensitivity and specificity (the
  ``exclude`` policy drops such rows from every figure instead, and says so).
* ``model_pred``: the class with the highest shown probability, when the export carries model outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.core.errors import MissingFileError
from lesionlab.study.analysis_errors import ExportError
from lesionlab.study.columns import ARMS, BOOL_COLUMNS, DESIGNS, EXPORT_COLUMNS, MODEL_PROB_COLUMNS, condition_of

#: Columns without which no analysis is possible; the others of the contract are optional (filled, and said so).
REQUIRED_COLUMNS: tuple[str, ...] = ("design", "participant", "case", "arm", "step", "answer", "truth")
CONDITIONS: tuple[str, ...] = ARMS  # unassisted, assisted, faulty: the order every table uses
TIMEOUT_POLICIES: tuple[str, ...] = ("wrong", "exclude")
EXPORT_SUFFIXES: tuple[str, ...] = (".csv", ".json")
PROB_ATOL = 1e-3
#: Float rounding: a sum of float32 softmax outputs (model_malignant) can pass 1 by a few 1e-8; clipped, not refused.
PROB_SLACK = 1e-6
_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n", ""})


@dataclass
class Answers:
    """A checked answer export with the analysis' derived columns (see the module docstring)."""

    frame: pd.DataFrame
    study: str
    design: str
    source: str
    conditions: tuple[str, ...]
    participants: tuple[str, ...]
    has_model: bool
    has_confidence: bool
    simulated: bool
    timeouts: str = "wrong"
    notes: list[str] = field(default_factory=list)

    @property
    def paired_cases(self) -> bool:
        """Whether the same cases are read in every condition (crossover, revise): case-paired tests apply."""
        return self.design in ("crossover", "revise")

    def condition(self, name: str) -> pd.DataFrame:
        """The rows of one condition."""
        return self.frame[self.frame["condition"] == name]


# ------------------------------------------------------------------------------------------------- reading


def read_export(path: str | Path) -> pd.DataFrame:
    """An export file as a text DataFrame (CSV, or JSON records: a list of objects or ``{"answers": [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"answer export not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: not a readable CSV ({err})") from None
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("answers"), list):
            data = data["answers"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ExportError(f"{path}: expected JSON records (a list of objects, one per answer, or "
                              '{"answers": [...]})')
        return pd.DataFrame.from_records(data)
    raise ExportError(f"{path}: an answer export is a .csv or .json file (got {suffix or 'no suffix'})")


def study_answers_frame(study: str | Path) -> pd.DataFrame:
    """The answers of a study created by the platform, through ``lesionlab.study.export.answers_frame``."""
    try:
        from lesionlab.study.export import answers_frame  # the platform's; imported only when a study is given
    except ImportError as err:
        raise ExportError(f"{study}: not an export file ({'/'.join(EXPORT_SUFFIXES)}), and this installation cannot "
                          f"read a study directly (lesionlab.study.export.answers_frame is unavailable: {err}); "
                          "export the answers with `lesionlab study export STUDY` and pass the CSV") from None
    return answers_frame(study)


def is_export_file(source: str | Path) -> bool:
    """Whether ``source`` names an export file rather than a study."""
    return Path(source).suffix.lower() in EXPORT_SUFFIXES


def load_answers(source: str | Path | pd.DataFrame, study: str | None = None, drop_incomplete: bool = False,
                 timeouts: str = "wrong") -> Answers:
    """Read (file, DataFrame or platform study) and check an answer export; see :func:`check_answers`."""
    if isinstance(source, pd.DataFrame):
        return check_answers(source, "answers", study=study, drop_incomplete=drop_incomplete, timeouts=timeouts)
    frame = read_export(source) if is_export_file(source) else study_answers_frame(source)
    return check_answers(frame, str(source), study=study, drop_incomplete=drop_incomplete, timeouts=timeouts)


# ------------------------------------------------------------------------------------------------ checking


def _row(where: str, i: int) -> str:
    return f"{where}: row {i + 1}" + (f" (line {i + 2})" if where.lower().endswith(".csv") else "")


def _text(series: pd.Series) -> pd.Series:
    return series.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())


def _bools(series: pd.Series, column: str, where: str) -> np.ndarray:
    out = np.zeros(len(series), dtype=bool)
    for i, v in enumerate(series.tolist()):
        if isinstance(v, bool | np.bool_):
            out[i] = bool(v)
            continue
        text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().lower()
        if text in _TRUE:
            out[i] = True
        elif text not in _FALSE:
            raise ExportError(f"{_row(where, i)}: column {column!r} must be true or false, got {v!r}")
    return out


def _numbers(series: pd.Series, column: str, where: str, low: float | None = None,
             high: float | None = None, slack: float = 0.0) -> np.ndarray:
    """The column as floats (empty: NaN); values past a bound by at most ``slack`` (rounding) are clipped to it."""
    text = _text(series)
    values = pd.to_numeric(text.replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & (text.to_numpy() != ""))
    if bad.size:
        raise ExportError(f"{_row(where, int(bad[0]))}: column {column!r} must be a number, got "
                          f"{series.iloc[int(bad[0])]!r}")
    for bound, test, word in ((low, np.less, "below"), (high, np.greater, "above")):
        if bound is None:
            continue
        out = np.flatnonzero(test(values, bound + (slack if word == "above" else -slack)) & ~np.isnan(values))
        if out.size:
            raise ExportError(f"{_row(where, int(out[0]))}: column {column!r} is {values[out[0]]:g}, {word} "
                              f"{bound:g}")
    if slack:
        values = np.clip(values, low if low is not None else -np.inf, high if high is not None else np.inf)
    return values


def _codes(series: pd.Series, column: str, where: str, allow_empty: bool) -> np.ndarray:
    text = _text(series).str.lower()
    valid = set(CLASS_CODES) | ({""} if allow_empty else set())
    bad = np.flatnonzero(~text.isin(valid).to_numpy())
    if bad.size:
        i = int(bad[0])
        what = "is empty" if text.iloc[i] == "" else f"has unknown class {series.iloc[i]!r}"
        others = sorted(set(text.iloc[bad].tolist()) - {text.iloc[i]})
        raise ExportError(f"{_row(where, i)}: column {column!r} {what}; expected one of {', '.join(CLASS_CODES)}"
                          + ("" if not allow_empty else " (or empty for no answer)")
                          + (f" ({bad.size} bad rows; other values: {others[:5]})" if bad.size > 1 else ""))
    return text.to_numpy(dtype=object)


def _choice(series: pd.Series, column: str, where: str, allowed: Sequence[str]) -> np.ndarray:
    text = _text(series).str.lower()
    bad = np.flatnonzero(~text.isin(list(allowed)).to_numpy())
    if bad.size:
        raise ExportError(f"{_row(where, int(bad[0]))}: column {column!r} is {series.iloc[int(bad[0])]!r}; "
                          f"expected one of {', '.join(allowed)}")
    return text.to_numpy(dtype=object)


def check_answers(frame: pd.DataFrame, where: str = "answers", study: str | None = None,
                  drop_incomplete: bool = False, timeouts: str = "wrong") -> Answers:
    """Check every column and value of an export and derive the analysis columns.

    Errors (each naming ``where`` and the row, column or participant): missing required columns; unknown classes
    in ``answer``, ``truth`` or ``model_top``; bad designs, arms, steps, booleans or numbers; model probabilities
    that are partly missing or do not sum to 1; a case whose truth differs between rows; an answer stored twice;
    a ``revise`` second answer without its first; several studies or designs in one table (choose with ``study``);
    a participant with no answers in a condition the others answered (``drop_incomplete`` drops such participants
    instead, and says so).
    """
    if timeouts not in TIMEOUT_POLICIES:
        raise ExportError(f"timeouts policy {timeouts!r}: choose {' or '.join(TIMEOUT_POLICIES)}")
    if frame.empty:
        raise ExportError(f"{where}: no answers (the export is empty)")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ExportError(f"{where}: missing column(s) {', '.join(missing)}; an answer export has the columns "
                          f"{', '.join(EXPORT_COLUMNS)} (lesionlab.study.columns)")
    notes: list[str] = []
    frame = frame.reset_index(drop=True)
    absent = [c for c in EXPORT_COLUMNS if c not in frame.columns]
    present_probs = [c for c in MODEL_PROB_COLUMNS if c in frame.columns]
    if present_probs and len(present_probs) < len(MODEL_PROB_COLUMNS):
        raise ExportError(f"{where}: model probability column(s) "
                          f"{', '.join(c for c in MODEL_PROB_COLUMNS if c not in frame.columns)} missing; an export "
                          "has all seven or none")
    extra = [c for c in frame.columns if c not in EXPORT_COLUMNS]
    if extra:
        notes.append(f"columns not in the export contract were ignored: {', '.join(map(str, extra))}")
    informative = [c for c in absent if c not in MODEL_PROB_COLUMNS]
    if informative:
        notes.append(f"optional columns absent from {where} (left empty): {', '.join(informative)}")

    if "study" in frame.columns:
        names = _text(frame["study"])
        studies = list(dict.fromkeys(names))
        if study is not None:
            if study not in studies:
                raise ExportError(f"{where}: no answers of study {study!r}; studies present: {studies}")
            frame = frame[names == study].reset_index(drop=True)
        elif len(studies) > 1:
            raise ExportError(f"{where}: answers of {len(studies)} studies ({', '.join(studies)}); choose one "
                              "(--study NAME)")
        study_name = study or studies[0] or Path(where).stem
    else:
        study_name = study or Path(where).stem

    out = pd.DataFrame(index=frame.index)
    out["study"] = study_name
    designs = _choice(frame["design"], "design", where, DESIGNS)
    if len(set(designs)) > 1:
        raise ExportError(f"{where}: study {study_name!r} mixes designs {sorted(set(designs))}; one study has one "
                          "design")
    design = str(designs[0])
    out["design"] = designs
    out["participant"] = _text(frame["participant"])
    out["case"] = _text(frame["case"])
    for col in ("participant", "case"):
        blank = np.flatnonzero(out[col].to_numpy() == "")
        if blank.size:
            raise ExportError(f"{_row(where, int(blank[0]))}: column {col!r} is empty")
    out["arm"] = _choice(frame["arm"], "arm", where, ARMS)
    step = _numbers(frame["step"], "step", where)
    bad_step = np.flatnonzero(~np.isin(step, [1, 2]))
    if bad_step.size:
        raise ExportError(f"{_row(where, int(bad_step[0]))}: column 'step' must be 1 or 2, got "
                          f"{frame['step'].iloc[int(bad_step[0])]!r}")
    out["step"] = step.astype(int)
    if design != "revise" and (out["step"] == 2).any():
        i = int(np.flatnonzero(out["step"].to_numpy() == 2)[0])
        raise ExportError(f"{_row(where, i)}: step 2 (a revised answer) in a {design!r} study; only the revise "
                          "design has second answers")
    out["answer"] = _codes(frame["answer"], "answer", where, allow_empty=True)
    out["truth"] = _codes(frame["truth"], "truth", where, allow_empty=False)
    for col in ("image_id", "management", "model_run", "model_top", "shown_at", "answered_at"):
        out[col] = _text(frame[col]) if col in frame.columns else ""
    if "model_top" in frame.columns:
        out["model_top"] = _codes(frame["model_top"], "model_top", where, allow_empty=True)
    for col in ("session", "position"):
        out[col] = (_numbers(frame[col], col, where, low=1) if col in frame.columns
                    else np.full(len(frame), np.nan))
    out["confidence"] = (_numbers(frame["confidence"], "confidence", where, 0, 100) if "confidence" in frame.columns
                         else np.full(len(frame), np.nan))
    for col in ("elapsed_ms", "server_elapsed_ms"):
        out[col] = (_numbers(frame[col], col, where, low=0) if col in frame.columns
                    else np.full(len(frame), np.nan))
    for col in BOOL_COLUMNS:
        out[col] = _bools(frame[col], col, where) if col in frame.columns else False
    if "timed_out" not in frame.columns:
        out["timed_out"] = out["answer"] == ""

    has_model = bool(present_probs)
    if has_model:
        probs = np.column_stack([_numbers(frame[c], c, where, 0, 1, PROB_SLACK) for c in MODEL_PROB_COLUMNS])
        filled = ~np.isnan(probs)
        partial = np.flatnonzero(filled.any(axis=1) & ~filled.all(axis=1))
        if partial.size:
            raise ExportError(f"{_row(where, int(partial[0]))}: some model probabilities are empty; a row has all "
                              "seven or none")
        full = filled.all(axis=1)
        sums = probs[full].sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1) > PROB_ATOL)
        if off.size:
            i = int(np.flatnonzero(full)[off[0]])
            raise ExportError(f"{_row(where, i)}: model probabilities sum to {sums[off[0]]:.4f}, not 1")
        has_model = bool(full.any())
        for k, col in enumerate(MODEL_PROB_COLUMNS):
            out[col] = probs[:, k]
        pred = np.full(len(frame), "", dtype=object)
        pred[full] = np.asarray(CLASS_CODES, dtype=object)[probs[full].argmax(axis=1)]
        out["model_pred"] = pred
        mal = [CLASS_CODES.index(c) for c in MALIGNANT_CODES]
        computed = np.where(full, probs[:, mal].sum(axis=1), np.nan)
        given = (_numbers(frame["model_malignant"], "model_malignant", where, 0, 1, PROB_SLACK)
                 if "model_malignant" in frame.columns else np.full(len(frame), np.nan))
        out["model_malignant"] = np.where(np.isnan(given), computed, given)
        out["model_confidence"] = np.where(full, probs.max(axis=1) if len(probs) else np.nan, np.nan)
        empty_top = (out["model_top"].to_numpy() == "") & full & out["model_shown"].to_numpy()
        out.loc[empty_top, "model_top"] = pred[empty_top]
    else:
        for col in MODEL_PROB_COLUMNS:
            out[col] = np.nan
        out["model_pred"] = ""
        out["model_malignant"] = np.nan
        out["model_confidence"] = np.nan
        notes.append("the export carries no model outputs: no comparison with the model")

    out["condition"] = [condition_of(design, a, int(st)) for a, st in zip(out["arm"], out["step"], strict=True)]
    if design == "revise":
        bad = np.flatnonzero((out["step"].to_numpy() == 2) & (out["arm"].to_numpy() == "unassisted"))
        if bad.size:
            raise ExportError(f"{_row(where, int(bad[0]))}: a revised answer (step 2) in arm 'unassisted'; the second "
                              "answer of the revise design follows the model's output (arm assisted or faulty)")

    key = ["participant", "case", "condition", "step"] if design == "revise" else ["participant", "case", "arm",
                                                                                   "step"]
    dup = out.duplicated(key, keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        first = out.iloc[int(rows[0])]
        raise ExportError(f"{where}: participant {first['participant']!r} answered case {first['case']!r} in arm "
                          f"{first['arm']!r} (step {first['step']}) more than once (rows "
                          f"{', '.join(str(int(r) + 1) for r in rows[:6])}); one answer per participant, case, arm "
                          "and step")
    truth_n = out.groupby("case")["truth"].nunique()
    conflicting = truth_n[truth_n > 1].index.tolist()
    if conflicting:
        raise ExportError(f"{where}: the truth of case(s) {conflicting[:8]} differs between rows; a case has one "
                          "truth")
    if design == "revise":
        firsts = set(zip(out.loc[out.step == 1, "participant"], out.loc[out.step == 1, "case"], strict=True))
        orphans = [(p, c) for p, c in zip(out.loc[out.step == 2, "participant"], out.loc[out.step == 2, "case"],
                                          strict=True) if (p, c) not in firsts]
        if orphans:
            raise ExportError(f"{where}: {len(orphans)} revised answer(s) (step 2) without a first answer, e.g. "
                              f"participant {orphans[0][0]!r}, case {orphans[0][1]!r}")

    # the server enforces the time limit: an answer that arrived after it is stored as a time-out and does not count
    out["answer_submitted"] = out["answer"]
    late = out["timed_out"].to_numpy(bool) & (out["answer"].to_numpy(dtype=object) != "")
    if late.any():
        notes.append(f"{int(late.sum())} answers arrived after the time limit (stored as time-outs); they count as no "
                     "answer (the submitted class stays in answer_submitted)")
        out.loc[late, "answer"] = ""
    out["answered"] = out["answer"] != ""
    out["correct"] = out["answer"] == out["truth"]
    missing = int((~out["answered"]).sum())
    if timeouts == "exclude":
        if missing:
            notes.append(f"{missing} time-outs and empty answers were left out of every figure (policy 'exclude')")
        out = out[out["answered"]].reset_index(drop=True)
    elif missing:
        notes.append(f"{missing} time-outs and empty answers count as wrong (in accuracy) and as neither hit nor "
                     "correct rejection (in sensitivity and specificity)")
    ms = out["elapsed_ms"].where(out["elapsed_ms"].notna(), out["server_elapsed_ms"])
    out["time_s"] = ms / 1000.0

    conditions = tuple(c for c in CONDITIONS if (out["condition"] == c).any())
    out, dropped = _complete_participants(out, conditions, where, drop_incomplete)
    if dropped:
        notes.append(f"participants without answers in every condition were left out: {', '.join(dropped)}")
    participants = tuple(sorted(out["participant"].unique(), key=_natural))
    if not participants:
        raise ExportError(f"{where}: no participant has answers in every condition ({', '.join(conditions)})")
    simulated = bool(out["simulated"].all())
    if out["simulated"].any() and not simulated:
        notes.append("the export mixes simulated and real participants")
    return Answers(frame=out, study=study_name, design=design, source=where, conditions=conditions,
                   participants=participants, has_model=has_model,
                   has_confidence=bool(out["confidence"].notna().any()), simulated=simulated, timeouts=timeouts,
                   notes=notes)


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key: ``r2`` before ``r10``."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


def _complete_participants(out: pd.DataFrame, conditions: Sequence[str], where: str,
                           drop: bool) -> tuple[pd.DataFrame, list[str]]:
    """Every participant needs answers in every condition; name (or drop) those who lack one."""
    have = out.groupby("participant")["condition"].agg(lambda s: set(s))
    lacking = {p: [c for c in conditions if c not in got] for p, got in have.items()
               if any(c not in got for c in conditions)}
    if not lacking:
        return out, []
    if not drop:
        p, cs = next(iter(sorted(lacking.items(), key=lambda kv: _natural(kv[0]))))
        others = len(lacking) - 1
        raise ExportError(f"{where}: participant {p!r} has no answers in arm {', '.join(cs)} (answers only in "
                          f"{', '.join(sorted(have[p]))})" + (f"; {others} more participant(s) likewise" if others
                                                               else "")
                          + "; every participant needs answers in every arm to be compared across arms. Leave such "
                          "participants out with --drop-incomplete")
    return out[~out["participant"].isin(list(lacking))].reset_index(drop=True), sorted(lacking, key=_natural)
