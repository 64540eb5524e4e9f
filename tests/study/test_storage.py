"""Storage and the participant API on SQLite and on a real PostgreSQL server: schema, idempotent answers, every
refusal as a 4xx JSON error, append-only answers, concurrent duplicates, the server-side time limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from lesionlab.study.storage import SCHEMA_HEAD, Answer, Assignment, Participant, current_revision, table_names

pytestmark = pytest.mark.slow  # the PostgreSQL half starts a server


@pytest.fixture(scope="module")
def unassisted(study_definition) -> dict:
    return study_definition(name="storage-study", arms=["unassisted"])


def _answers(server) -> int:
    with server.folder.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Answer)))


def test_schema_is_created_by_the_migration_at_head(make_study, unassisted, database, serve_study) -> None:
    server = serve_study(make_study(unassisted, db=database), database)
    engine = server.folder.engine
    assert current_revision(engine) == SCHEMA_HEAD
    assert {"studies", "cases", "case_truth", "model_outputs", "participants", "assignments", "presentations",
            "answers", "lesionlab_study_version"} <= set(table_names(engine))
    from lesionlab.study.storage import downgrade, upgrade

    downgrade(engine, "base")  # the downgrade works too, and upgrading again restores the schema
    assert "answers" not in table_names(engine)
    upgrade(engine)
    assert current_revision(engine) == SCHEMA_HEAD


def test_a_participant_completes_and_repeats_are_idempotent(make_study, unassisted, database, serve_study) -> None:
    server = serve_study(make_study(unassisted, db=database), database)
    reader, other = server.invite(2)
    assert reader.next().json()["error"]["code"] == "consent_required"
    assert reader.consent().status_code == 200
    item = reader.next().json()
    assert item["phase"] == "case" and item["remaining_s"] is None
    again = reader.next().json()  # asking again returns the same case (a reload resumes it)
    assert again["item"] == item["item"]
    first = reader.answer(item["item"], "mel", elapsed_ms=812.5)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    repeat = reader.answer(item["item"], "nv")  # a repeat, even with another answer, returns what was stored
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    assert repeat.json()["stored"]["answer"] == "mel"
    n = 1 + reader.finish("bkl")
    assert n == 7 and _answers(server) == 7
    assert reader.next().json()["phase"] == "finished"
    other.consent()
    assert other.finish() == 7 and _answers(server) == 14


def test_every_refusal_is_a_clear_4xx_json_error(make_study, unassisted, database, serve_study, tmp_path) -> None:
    study_path = make_study(unassisted, db=database)
    server = serve_study(study_path, database)
    reader, other = server.invite(2)
    for r in (reader, other):
        r.consent()
    item = reader.next().json()
    other_item = other.next().json()
    with server.folder.sessions() as db:
        later = db.scalars(select(Assignment).where(Assignment.participant_id == _pid(server, reader))
                           .where(Assignment.position == 3)).one()

    def expect(resp, status: int, code: str) -> None:
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["error"]["code"] == code and body["error"]["message"], body

    expect(reader.answer(other_item["item"], "nv"), 404, "not_assigned")  # someone else's case
    expect(reader.answer("no-such-item", "nv"), 404, "not_assigned")
    expect(reader.answer(later.id, "nv"), 409, "out_of_order")  # a later case of one's own, before the current
    expect(reader.answer(item["item"], "melanoma"), 422, "unknown_class")
    expect(reader.answer(item["item"], None), 422, "missing_field")  # no answer without a time-out
    expect(reader.answer(item["item"], "nv", step=3), 422, "invalid_field")
    expect(reader.answer(item["item"], "nv", step=2), 422, "invalid_field")  # separate design: one step
    expect(reader.answer(item["item"], "nv", confidence=150), 422, "out_of_range")
    expect(reader.answer(item["item"], "nv", confidence=50), 422, "invalid_field")  # the form asks none
    expect(reader.answer(item["item"], "nv", elapsed_ms="fast"), 422, "invalid_field")
    expect(reader.answer(item["item"], "nv", colour="red"), 422, "unknown_field")
    bad_json = reader.client.post("/api/answer", headers={**reader.headers, "Content-Type": "application/json"},
                                  content=b"{not json")
    assert bad_json.status_code == 422 and "error" in bad_json.json()
    huge = reader.client.post("/api/answer", headers=reader.headers, json={"item": "x" * 20000})
    expect(huge, 413, "too_large")
    expect(reader.client.post("/api/answer", json={"item": item["item"], "answer": "nv"}), 401, "missing_token")
    expect(reader.client.post("/api/answer", headers={"Authorization": "Bearer " + "A" * 43},
                              json={"item": item["item"], "answer": "nv"}), 401, "invalid_token")
    expect(reader.client.post("/api/answer", headers={"Authorization": "Basic abc"}, json={}), 401, "invalid_token")
    assert _answers(server) == 0  # nothing of the above was stored

    # An expired token.
    from lesionlab.study.storage import utcnow

    (expired,) = server.invite(1, expires_at=utcnow())
    expect(expired.state(), 401, "token_expired")

    # A token of another study in the same database is refused as foreign.
    second = dict(unassisted, name="storage-second")
    same_db = database or f"sqlite:///{(study_path / 'study.db').resolve()}"
    second_path = make_study(second, db=same_db, out=tmp_path / "second")
    foreign = serve_study(second_path, same_db).invite(1)[0]
    expect(server.client.get("/api/state", headers=foreign.headers), 403, "foreign_token")

    # Admin endpoints need the admin token; a participant's is refused.
    expect(server.client.get("/api/admin/progress", headers=reader.headers), 401, "invalid_admin_token")

    # A closed study accepts no new answer, but a repeat of a stored one still returns it.
    assert reader.answer(item["item"], "nv").status_code == 200
    closed = server.client.post("/api/admin/close", headers=server.admin_headers())
    assert closed.status_code == 200
    expect(other.answer(other_item["item"], "nv"), 409, "study_closed")
    expect(reader.next(), 409, "study_closed")
    assert reader.answer(item["item"], "bkl").json()["duplicate"] is True
    assert reader.state().json()["phase"] == "closed"
    assert _answers(server) == 1


def _pid(server, reader) -> str:
    from lesionlab.study.tokens import hash_token

    with server.folder.sessions() as db:
        return db.scalar(select(Participant.id).where(Participant.token_hash == hash_token(reader.token)))


def test_answers_are_append_only_and_unique_in_the_database(make_study, unassisted, database, serve_study) -> None:
    server = serve_study(make_study(unassisted, db=database), database)
    (reader,) = server.invite(1)
    reader.consent()
    item = reader.next().json()
    reader.answer(item["item"], "mel")
    engine = server.folder.engine
    for statement in ("UPDATE answers SET answer = 'nv'", "DELETE FROM answers"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    with server.folder.sessions() as db:
        row = db.scalars(select(Answer)).one()
        assert row.answer == "mel"
        clone = Answer(**{c.name: getattr(row, c.name) for c in Answer.__table__.columns if c.name != "id"})
        db.add(clone)
        with pytest.raises(IntegrityError):
            db.commit()


def test_concurrent_duplicate_submissions_store_one_answer(make_study, unassisted, database, serve_study) -> None:
    from fastapi.testclient import TestClient

    server = serve_study(make_study(unassisted, db=database), database)
    (reader,) = server.invite(1)
    reader.consent()
    item = reader.next().json()
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def submit() -> None:
        with TestClient(server.client.app) as client:
            barrier.wait()
            resp = client.post("/api/answer", headers=reader.headers, json={"item": item["item"], "answer": "df"})
            with lock:
                results.append((resp.status_code, resp.json().get("duplicate")))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [200] * 8
    assert sorted(d for _, d in results) == [False] + [True] * 7
    assert _answers(server) == 1


def test_the_server_enforces_the_time_limit(make_study, study_definition, database, serve_study) -> None:
    definition = study_definition(name="timed-study", arms=["unassisted"], time_limit_s=0.4, grace_s=0.1)
    server = serve_study(make_study(definition, db=database), database)
    (reader,) = server.invite(1)
    reader.consent()
    first = reader.next().json()
    assert 0 < first["remaining_s"] <= 0.4
    time.sleep(0.7)  # past limit + grace: the late answer is kept, flagged as a time-out
    late = reader.answer(first["item"], "mel", elapsed_ms=300)
    assert late.status_code == 200 and late.json()["stored"]["timed_out"] is True
    second = reader.next().json()
    on_time = reader.answer(second["item"], "nv")
    assert on_time.json()["stored"]["timed_out"] is False
    third = reader.next().json()
    time_out = reader.answer(third["item"], None, timeout=True)  # the page at zero: no answer
    assert time_out.json()["stored"] == {**time_out.json()["stored"], "answer": None, "timed_out": True}
    fourth = reader.next().json()
    time.sleep(0.7)  # the browser was closed past the deadline: the server records the time-out itself
    fifth = reader.next().json()
    assert fifth["item"] != fourth["item"] and fifth["done"] == 4
    from lesionlab.study.export import answers_frame

    frame = answers_frame(server.folder)
    assert frame["timed_out"].tolist() == [True, False, True, True]
    assert frame["answer"].tolist() == ["mel", "nv", "", ""]
    assert frame.loc[0, "server_elapsed_ms"] >= 600 and frame.loc[0, "elapsed_ms"] == 300


def test_only_token_hashes_are_stored(make_study, unassisted, serve_study) -> None:
    study_path = make_study(unassisted)
    server = serve_study(study_path)
    readers = server.invite(3)
    admin = server.folder.admin_token_file().read_text().strip()
    server.folder.engine.dispose()
    raw = b"".join(p.read_bytes() for p in Path(study_path).glob("study.db*"))
    for token in [r.token for r in readers] + [admin]:
        assert len(token) >= 43  # 256 random bits
        assert token.encode() not in raw
