"""What participants and admins can do, free of HTTP: invite, authenticate, next case, answer, media, progress, close.

Every function takes an open SQLAlchemy session and returns plain dicts; the FastAPI app wraps them, the CLI and the
tests call them directly. Refusals are :class:`StudyRequestError` (a 4xx status, a code, a message naming the field).

Participant-facing payloads are built here and only here, from the ``cases``, ``assignments`` and ``model_outputs``
tables: this module never reads ``case_truth``, and no payload carries an arm name, a source image id or a case id.

The time limit is the server's: it records when it first served each item (``presentations``); an answer that
arrives later than ``time_limit_s + grace_s`` after that is stored with ``timed_out`` true, and an item still
unanswered past that point is stored as a time-out without an answer the next time the participant asks for a case
(after closing the browser, for example).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lesionlab.classes import CLASS_CODES, CLASSES
from lesionlab.study.columns import answer_steps, model_on_screen, session_of
from lesionlab.study.definition import StudyDefinition
from lesionlab.study.errors import StudyRequestError
from lesionlab.study.storage import (
    Answer,
    Assignment,
    Case,
    ModelOutput,
    Participant,
    Presentation,
    Study,
    as_utc,
    utcnow,
)
from lesionlab.study.tokens import hash_token, new_key, new_token

MAX_ELAPSED_MS = 24 * 3600 * 1000.0


# ---------------------------------------------------------------------------------------------------- invites


@dataclass(frozen=True)
class Invite:
    """One invited participant; ``token`` exists only here and in the link printed for the admin."""

    participant: str
    label: str
    token: str

    def link(self, base_url: str) -> str:
        """The invite link: the token travels in the fragment, which browsers never send to a server or a log."""
        return f"{base_url.rstrip('/')}/join#{self.token}"


def plan_assignments(definition: StudyDefinition, cases_by_set: dict[str, list[str]], rng: np.random.Generator
                     ) -> tuple[list[str], list[tuple[str, str, int, int]]]:
    """(arm order, [(case id, arm, session, position)]) for one participant, seeded by ``rng``.

    ``crossover``: one session per arm, the arms in a random order per participant, the same cases in each, freshly
    shuffled per session. ``separate`` / ``revise``: one session, the arms in the listed order (or a random one with
    ``randomise_arm_order``), each arm with its own case set, positions running on across arms.
    """
    arms = list(definition.arms)
    if definition.design == "crossover" or definition.randomise_arm_order:
        arms = [arms[i] for i in rng.permutation(len(arms))]
    chosen: dict[str, list[str]] = {}
    for name, ids in cases_by_set.items():
        ids = list(ids)
        k = definition.cases_per_participant
        if k is not None and k < len(ids):
            ids = [ids[i] for i in sorted(rng.choice(len(ids), size=k, replace=False))]
        chosen[name] = ids
    plan: list[tuple[str, str, int, int]] = []
    position = 0
    for k, arm in enumerate(arms):
        ids = list(chosen[definition.arm_sets()[arm]])
        if definition.shuffle:
            ids = [ids[i] for i in rng.permutation(len(ids))]
        session = session_of(definition.design, arms, arm)
        if k and session != session_of(definition.design, arms, arms[k - 1]):
            position = 0  # positions count within a session
        plan += [(cid, arm, session, position + j + 1) for j, cid in enumerate(ids)]
        position += len(ids)
    return arms, plan


def invite(db: Session, study_id: str, definition: StudyDefinition, n: int, label: str = "",
           expires_at: dt.datetime | None = None) -> list[Invite]:
    """Create ``n`` participants with fresh tokens (only hashes stored) and their case assignments."""
    if n < 1:
        raise StudyRequestError(422, "invalid_count", f"--n {n}: invite at least one participant", "n")
    study = db.get(Study, study_id)
    if study is None:
        raise StudyRequestError(404, "unknown_study", f"study {study_id!r} not found")
    if study.closed_at is not None:
        raise StudyRequestError(409, "study_closed", f"study {study_id!r} is closed; no new participants")
    cases_by_set: dict[str, list[str]] = {}
    for case in db.scalars(select(Case).where(Case.study_id == study_id).order_by(Case.pool_position)):
        cases_by_set.setdefault(case.case_set, []).append(case.id)
    start = db.scalar(select(func.count()).select_from(Participant).where(Participant.study_id == study_id)) or 0
    now = utcnow()
    invites = []
    for i in range(n):
        index = start + i
        rng = np.random.default_rng([definition.seed, index])
        arms, plan = plan_assignments(definition, cases_by_set, rng)
        token = new_token()
        pid = "p" + new_key(6)
        name = f"{label}{index + 1}" if label else f"reader {index + 1}"
        db.add(Participant(id=pid, study_id=study_id, token_hash=hash_token(token), label=name, arm_order=arms,
                           created_at=now, expires_at=expires_at))
        db.flush()
        db.add_all(Assignment(id=new_key(), participant_id=pid, case_id=cid, arm=arm, session=session,
                              position=position) for cid, arm, session, position in plan)
        invites.append(Invite(participant=pid, label=name, token=token))
    return invites


# ----------------------------------------------------------------------------------------------- authentication


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header (401 when absent or malformed)."""
    if not header:
        raise StudyRequestError(401, "missing_token", "no token: open the study through your invite link")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise StudyRequestError(401, "invalid_token", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def authenticate(db: Session, study_id: str, token: str, lock: bool = False) -> Participant:
    """The participant a token belongs to, in this study and not expired; ``lock``: row lock (PostgreSQL)."""
    query = select(Participant).where(Participant.token_hash == hash_token(token))
    if lock:
        query = query.with_for_update()
    participant = db.scalar(query)
    if participant is None:
        raise StudyRequestError(401, "invalid_token", "this invite link is not valid; ask the study's organiser")
    if participant.study_id != study_id:
        raise StudyRequestError(403, "foreign_token", "this invite link belongs to another study")
    expires = as_utc(participant.expires_at)
    if expires is not None and expires <= utcnow():
        raise StudyRequestError(401, "token_expired", f"this invite link expired on {expires:%Y-%m-%d %H:%M} UTC")
    return participant


def authenticate_admin(db: Session, study_id: str, token: str) -> Study:
    """The study, when ``token`` is its admin token (401 otherwise)."""
    import hmac

    study = db.get(Study, study_id)
    if study is None or not hmac.compare_digest(hash_token(token), study.admin_token_hash):
        raise StudyRequestError(401, "invalid_admin_token", "not the admin token of this study (see admin-token.txt "
                                "in the study folder)")
    return study


# -------------------------------------------------------------------------------------------------- progress


@dataclass
class Step:
    """One thing to answer: an assignment (item) and a step (2: after seeing the model, ``revise`` design)."""

    assignment: Assignment
    step: int


@dataclass
class Standing:
    """A participant's place in the study, read in one go."""

    sequence: list[Step]
    answers: dict[tuple[str, int], Answer]
    shown: dict[tuple[str, int], Presentation]

    @property
    def done(self) -> int:
        return sum(1 for s in self.sequence if (s.assignment.id, s.step) in self.answers)

    def current(self) -> Step | None:
        for s in self.sequence:
            if (s.assignment.id, s.step) not in self.answers:
                return s
        return None


def steps_for(definition: StudyDefinition, arm: str) -> list[int]:
    """``revise``: answer alone (1), then with the model (2); otherwise one answer.

    The rule is :func:`lesionlab.study.columns.answer_steps`, shared with the simulated readers and the analysis.
    """
    return list(answer_steps(definition.design, arm))


def standing(db: Session, definition: StudyDefinition, participant_id: str) -> Standing:
    """Assignments in order, with their answers and presentations."""
    assignments = db.scalars(select(Assignment).where(Assignment.participant_id == participant_id)
                             .order_by(Assignment.session, Assignment.position)).all()
    answers = {(a.assignment_id, a.step): a
               for a in db.scalars(select(Answer).where(Answer.participant_id == participant_id))}
    shown = {(p.assignment_id, p.step): p for p in db.scalars(
        select(Presentation).join(Assignment, Assignment.id == Presentation.assignment_id)
        .where(Assignment.participant_id == participant_id))}
    sequence = [Step(a, s) for a in assignments for s in steps_for(definition, a.arm)]
    return Standing(sequence, answers, shown)


def model_shown(definition: StudyDefinition, arm: str, step: int) -> bool:
    """Whether the model's output is on screen for this arm and step (:func:`lesionlab.study.columns.model_on_screen`).
    """
    return model_on_screen(definition.design, arm, step)


def shown_variant(db: Session, case_id: str, arm: str) -> ModelOutput | None:
    """The output an arm shows for a case: the faulty one in the faulty arm where the case has one."""
    if arm == "faulty":
        row = db.get(ModelOutput, (case_id, "faulty"))
        if row is not None:
            return row
    return db.get(ModelOutput, (case_id, "model"))


def _deadline(definition: StudyDefinition, shown_at: dt.datetime) -> dt.datetime | None:
    if definition.time_limit_s is None:
        return None
    return shown_at + dt.timedelta(seconds=definition.time_limit_s + definition.grace_s)


def _ms(later: dt.datetime, earlier: dt.datetime) -> float:
    return round((later - earlier).total_seconds() * 1000.0, 3)


def expire_overdue(db: Session, definition: StudyDefinition, participant_id: str, now: dt.datetime) -> Standing:
    """Store a time-out (no answer) for every presented item whose limit plus grace has passed; return the standing."""
    stand = standing(db, definition, participant_id)
    while (cur := stand.current()) is not None:
        shown = stand.shown.get((cur.assignment.id, cur.step))
        deadline = _deadline(definition, as_utc(shown.shown_at)) if shown is not None else None
        if deadline is None or now <= deadline:
            break
        row = Answer(participant_id=participant_id, assignment_id=cur.assignment.id, case_id=cur.assignment.case_id,
                     arm=cur.assignment.arm, step=cur.step, answer=None, confidence=None, management=None,
                     shown_at=as_utc(shown.shown_at), answered_at=now, client_elapsed_ms=None,
                     server_elapsed_ms=_ms(now, as_utc(shown.shown_at)), timed_out=True, source="server")
        db.add(row)
        db.flush()
        stand.answers[(cur.assignment.id, cur.step)] = row
    return stand


# ------------------------------------------------------------------------------------------------- payloads


def form_payload(definition: StudyDefinition) -> dict[str, Any]:
    """The answer form: the seven classes (full names, keys 1-7), optional confidence and management."""
    return {"classes": [{"code": c.code, "name": c.name, "key": str(c.index + 1)} for c in CLASSES],
            "confidence": definition.form.confidence, "management": definition.form.management}


def study_payload(study: Study, definition: StudyDefinition) -> dict[str, Any]:
    """What a participant learns about the study before the first case."""
    return {"title": study.title, "instructions": definition.instructions, "consent": definition.consent,
            "time_limit_s": definition.time_limit_s, "clinical_shown": definition.show_clinical,
            "form": form_payload(definition)}


def support_payload(definition: StudyDefinition, output: ModelOutput, media_prefix: str) -> dict[str, Any]:
    """The model's output in the configured forms (never saying whether it is faulty)."""
    assert definition.model is not None
    forms = definition.model.support
    out: dict[str, Any] = {}
    if "probabilities" in forms:
        out["probabilities"] = [{"code": c.code, "name": c.name, "malignant": c.malignant,
                                 "probability": round(float(p), 4)} for c, p in zip(CLASSES, output.probabilities,
                                                                                     strict=True)]
    if "top1" in forms:
        top = next(c for c in CLASSES if c.code == output.top)
        out["top1"] = {"code": top.code, "name": top.name}
    if "malignant" in forms:
        out["malignant"] = round(float(output.malignant), 4)
    if "heatmap" in forms and output.heatmap_key:
        out["heatmap"] = f"{media_prefix}/heatmap/{output.heatmap_key}"
    return out


def participant_state(db: Session, study: Study, definition: StudyDefinition, participant: Participant
                      ) -> dict[str, Any]:
    """Read-only: the study's texts, consent, progress and whether the participant is finished or the study closed."""
    stand = standing(db, definition, participant.id)
    phase = "consent" if participant.consented_at is None else "ready"
    if stand.current() is None:
        phase = "finished"
    elif study.closed_at is not None:
        phase = "closed"
    sessions = max((s.assignment.session for s in stand.sequence), default=1)
    return {"phase": phase, "study": study_payload(study, definition), "done": stand.done,
            "total": len(stand.sequence), "sessions": sessions}


def consent(db: Session, participant: Participant) -> dict[str, Any]:
    """Record consent (once; repeating it changes nothing)."""
    if participant.consented_at is None:
        participant.consented_at = utcnow()
    return {"consented": True}


def next_item(db: Session, study: Study, definition: StudyDefinition, participant: Participant,
              start_session: int | None = None, media_prefix: str = "/api") -> dict[str, Any]:
    """The current item, recording when the server first served it; a break before a new session; or finished.

    Overdue items are stored as time-outs first. Asking again for the same item returns it with less time left
    (the clock never restarts): closing and reopening the browser resumes exactly here.
    """
    if participant.consented_at is None:
        raise StudyRequestError(409, "consent_required", "read the instructions and give consent first")
    if study.closed_at is not None:
        raise StudyRequestError(409, "study_closed", "this study is closed; no more answers are accepted")
    now = utcnow()
    stand = expire_overdue(db, definition, participant.id, now)
    cur = stand.current()
    total = len(stand.sequence)
    sessions = max((s.assignment.session for s in stand.sequence), default=1)
    if cur is None:
        return {"phase": "finished", "done": stand.done, "total": total}
    key = (cur.assignment.id, cur.step)
    shown = stand.shown.get(key)
    session = cur.assignment.session
    if shown is None and session > 1 and cur.assignment.position == 1 and cur.step == 1:
        previous = [a for (aid, _), a in stand.answers.items()
                    if any(s.assignment.id == aid and s.assignment.session == session - 1 for s in stand.sequence)]
        last = max((as_utc(a.answered_at) for a in previous), default=now)
        available = last + dt.timedelta(minutes=definition.washout_minutes)
        wait = max(0.0, (available - now).total_seconds())
        if start_session != session or wait > 0:
            return {"phase": "break", "session": session, "sessions": sessions, "available_in_s": round(wait, 1),
                    "done": stand.done, "total": total}
    if shown is None:
        shown = Presentation(assignment_id=cur.assignment.id, step=cur.step, shown_at=now)
        db.add(shown)
        db.flush()
    shown_at = as_utc(shown.shown_at)
    case = db.get(Case, cur.assignment.case_id)
    assert case is not None
    in_session = [s for s in stand.sequence if s.assignment.session == session and s.step == 1]
    remaining = None
    if definition.time_limit_s is not None:
        remaining = max(0.0, definition.time_limit_s - (now - shown_at).total_seconds())
    item: dict[str, Any] = {
        "phase": "case", "item": cur.assignment.id, "step": cur.step,
        "steps": len(steps_for(definition, cur.assignment.arm)), "session": session, "sessions": sessions,
        "position": cur.assignment.position - (in_session[0].assignment.position - 1 if in_session else 0),
        "session_total": len(in_session), "done": stand.done, "total": total,
        "image": f"{media_prefix}/image/{case.image_key}", "image_size": [case.image_width, case.image_height],
        "clinical": ({"age": case.age, "sex": case.sex, "site": case.site} if definition.show_clinical else None),
        "time_limit_s": definition.time_limit_s,
        "remaining_s": None if remaining is None else round(remaining, 3),
        "support": None, "first_answer": None,
    }
    if model_shown(definition, cur.assignment.arm, cur.step):
        output = shown_variant(db, case.id, cur.assignment.arm)
        if output is not None:
            item["support"] = support_payload(definition, output, media_prefix)
    if cur.step == 2:
        first = stand.answers.get((cur.assignment.id, 1))
        item["first_answer"] = None if first is None else {"answer": first.answer, "confidence": first.confidence,
                                                           "management": first.management}
    return item


# --------------------------------------------------------------------------------------------------- answers


def _number(value: Any, field: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StudyRequestError(422, "invalid_field", f"{field} must be a number, not {type(value).__name__}", field)
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise StudyRequestError(422, "out_of_range", f"{field} {value:g} is outside {low:g}..{high:g}", field)
    return value


def check_answer(definition: StudyDefinition, body: Any) -> dict[str, Any]:
    """Validate an answer body; a malformed one is a 422 that names the field."""
    if not isinstance(body, dict):
        raise StudyRequestError(422, "invalid_body", "the answer must be a JSON object")
    allowed = {"item", "step", "answer", "confidence", "management", "elapsed_ms", "timeout"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise StudyRequestError(422, "unknown_field", f"unknown field(s) {unknown}; expected {sorted(allowed)}",
                                unknown[0])
    item = body.get("item")
    if not isinstance(item, str) or not item or len(item) > 64:
        raise StudyRequestError(422, "missing_field" if item is None else "invalid_field",
                                "item: the id of the case being answered is required", "item")
    step = body.get("step", 1)
    if isinstance(step, bool) or step not in (1, 2):
        raise StudyRequestError(422, "invalid_field", f"step {step!r} must be 1 or 2", "step")
    timeout = body.get("timeout", False)
    if not isinstance(timeout, bool):
        raise StudyRequestError(422, "invalid_field", "timeout must be true or false", "timeout")
    answer = body.get("answer")
    if answer is None:
        if not timeout:
            raise StudyRequestError(422, "missing_field", "answer: choose one of the seven classes", "answer")
    elif not isinstance(answer, str) or answer not in CLASS_CODES:
        raise StudyRequestError(422, "unknown_class", f"answer {str(answer)[:20]!r} is not one of "
                                f"{', '.join(CLASS_CODES)}", "answer")
    confidence = _number(body.get("confidence"), "confidence", 0.0, 100.0)
    if confidence is not None and not definition.form.confidence:
        raise StudyRequestError(422, "invalid_field", "confidence: this study asks no confidence", "confidence")
    management = body.get("management")
    if management is not None and (not isinstance(management, str) or not definition.form.management
                                   or management not in definition.form.management):
        choices = ", ".join(definition.form.management or []) or "none (this study asks no management question)"
        raise StudyRequestError(422, "invalid_field", f"management {str(management)[:40]!r} is not one of: {choices}",
                                "management")
    if answer is not None:
        if definition.form.confidence and confidence is None:
            raise StudyRequestError(422, "missing_field", "confidence: give your malignancy confidence 0-100",
                                    "confidence")
        if definition.form.management and management is None:
            raise StudyRequestError(422, "missing_field", "management: choose a management option", "management")
    elapsed = _number(body.get("elapsed_ms"), "elapsed_ms", 0.0, MAX_ELAPSED_MS)
    return {"item": item, "step": int(step), "answer": answer, "confidence": confidence, "management": management,
            "elapsed_ms": elapsed, "timeout": timeout}


def answer_payload(row: Answer) -> dict[str, Any]:
    """The stored answer as the participant may see it."""
    return {"item": row.assignment_id, "step": row.step, "answer": row.answer, "confidence": row.confidence,
            "management": row.management, "timed_out": bool(row.timed_out),
            "answered_at": as_utc(row.answered_at).isoformat(timespec="milliseconds")}


def submit_answer(db: Session, study: Study, definition: StudyDefinition, participant: Participant, body: Any
                  ) -> dict[str, Any]:
    """Store one answer; a repeat of a stored answer returns the stored one (``duplicate`` true), stored once."""
    data = check_answer(definition, body)
    now = utcnow()
    assignment = db.get(Assignment, data["item"])
    if assignment is None or assignment.participant_id != participant.id:
        raise StudyRequestError(404, "not_assigned", "this case is not one of yours", "item")
    if data["step"] not in steps_for(definition, assignment.arm):
        raise StudyRequestError(422, "invalid_field", f"step {data['step']}: this case has one answer step", "step")
    existing = db.scalar(select(Answer).where(Answer.participant_id == participant.id,
                                              Answer.case_id == assignment.case_id, Answer.arm == assignment.arm,
                                              Answer.step == data["step"]))
    if existing is not None:
        return {"stored": answer_payload(existing), "duplicate": True}
    if study.closed_at is not None:
        raise StudyRequestError(409, "study_closed", "this study is closed; no more answers are accepted")
    stand = standing(db, definition, participant.id)
    cur = stand.current()
    if cur is None or (cur.assignment.id, cur.step) != (assignment.id, data["step"]):
        raise StudyRequestError(409, "out_of_order", "this is not the current case; answer the case on screen "
                                "(reload the page)", "item")
    shown = stand.shown.get((assignment.id, data["step"]))
    if shown is None:
        raise StudyRequestError(409, "not_shown", "this case has not been shown yet; ask for it first", "item")
    shown_at = as_utc(shown.shown_at)
    deadline = _deadline(definition, shown_at)
    late = deadline is not None and now > deadline
    row = Answer(participant_id=participant.id, assignment_id=assignment.id, case_id=assignment.case_id,
                 arm=assignment.arm, step=data["step"], answer=data["answer"], confidence=data["confidence"],
                 management=data["management"], shown_at=shown_at, answered_at=now,
                 client_elapsed_ms=data["elapsed_ms"], server_elapsed_ms=_ms(now, shown_at),
                 timed_out=bool(late or data["answer"] is None), source="client")
    try:
        with db.begin_nested():
            db.add(row)
    except IntegrityError:  # the same answer raced in from another request: return the one that won
        winner = db.scalar(select(Answer).where(Answer.participant_id == participant.id,
                                                Answer.case_id == assignment.case_id, Answer.arm == assignment.arm,
                                                Answer.step == data["step"]))
        if winner is None:
            raise
        return {"stored": answer_payload(winner), "duplicate": True}
    return {"stored": answer_payload(row), "duplicate": False, "done": stand.done + 1,
            "total": len(stand.sequence)}


# ---------------------------------------------------------------------------------------------------- media


def media_key(db: Session, definition: StudyDefinition, participant: Participant, kind: str, key: str) -> str:
    """Check that ``key`` is the image (or heatmap) of the participant's current, served item; 404 otherwise.

    Only the item on screen can be fetched: not later cases, not other participants' cases, not earlier ones.
    """
    stand = standing(db, definition, participant.id)
    cur = stand.current()
    missing = StudyRequestError(404, "not_found", f"no such {kind}")
    if cur is None or (cur.assignment.id, cur.step) not in stand.shown:
        raise missing
    case = db.get(Case, cur.assignment.case_id)
    assert case is not None
    if kind == "image" and key == case.image_key:
        return key
    if kind == "heatmap" and model_shown(definition, cur.assignment.arm, cur.step):
        output = shown_variant(db, case.id, cur.assignment.arm)
        if output is not None and output.heatmap_key == key:
            return key
    raise missing


def media_path(media_dir: Path, key: str) -> Path:
    """The file of a checked key (keys are URL-safe random strings; nothing else reaches the filesystem)."""
    path = media_dir / f"{key}.png"
    if not path.is_file():
        raise StudyRequestError(404, "not_found", "no such image")
    return path


# ----------------------------------------------------------------------------------------------------- admin


def progress(db: Session, study: Study, definition: StudyDefinition) -> dict[str, Any]:
    """Participants with answered / time-outs per arm, and totals per arm (no answers themselves, no truth)."""
    participants = db.scalars(select(Participant).where(Participant.study_id == study.id)
                              .order_by(Participant.created_at, Participant.label)).all()
    arms = list(definition.arms)
    totals = {arm: {"answered": 0, "timed_out": 0, "required": 0} for arm in arms}
    rows = []
    for p in participants:
        stand = standing(db, definition, p.id)
        per_arm = {arm: {"answered": 0, "timed_out": 0, "required": 0} for arm in arms}
        for s in stand.sequence:
            per_arm[s.assignment.arm]["required"] += 1
            ans = stand.answers.get((s.assignment.id, s.step))
            if ans is not None:
                per_arm[s.assignment.arm]["answered"] += 1
                per_arm[s.assignment.arm]["timed_out"] += int(bool(ans.timed_out))
        for arm in arms:
            for k in ("answered", "timed_out", "required"):
                totals[arm][k] += per_arm[arm][k]
        last = max((as_utc(a.answered_at) for a in stand.answers.values()), default=None)
        rows.append({"participant": p.id, "label": p.label, "consented": p.consented_at is not None,
                     "done": stand.done, "total": len(stand.sequence), "finished": stand.current() is None,
                     "arms": per_arm, "last_answer": last.isoformat(timespec="seconds") if last else None,
                     "arm_order": list(p.arm_order)})
    return {"study": study.id, "title": study.title, "design": study.design, "arms": arms,
            "closed": study.closed_at is not None,
            "closed_at": as_utc(study.closed_at).isoformat(timespec="seconds") if study.closed_at else None,
            "participants": rows, "totals": totals,
            "finished": sum(1 for r in rows if r["finished"]), "started": sum(1 for r in rows if r["done"] > 0)}


def close_study(db: Session, study_id: str) -> dict[str, Any]:
    """Close a study: no more answers or invites (idempotent; keeps the first closing time)."""
    study = db.get(Study, study_id)
    if study is None:
        raise StudyRequestError(404, "unknown_study", f"study {study_id!r} not found")
    if study.closed_at is None:
        study.closed_at = utcnow()
    return {"study": study_id, "closed_at": as_utc(study.closed_at).isoformat(timespec="seconds")}


def iso(values: Sequence[dt.datetime | None]) -> list[str | None]:
    """ISO 8601 (UTC, milliseconds) of each time, None kept."""
    return [as_utc(v).isoformat(timespec="milliseconds") if v is not None else None for v in values]
