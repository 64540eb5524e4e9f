"""Reliability of the served study, with the server in its own process: 50 simulated participants at once lose no
answer and get no 5xx; a SIGKILL in the middle of a study loses nothing that was confirmed."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from lesionlab.serve.bench import free_port
from lesionlab.study.folder import open_study
from lesionlab.study.loadtest import running_server, simulate_participants, start_server, stop_server
from lesionlab.study.participation import invite
from lesionlab.study.storage import Answer

pytestmark = pytest.mark.slow


def _tokens(study_path, n: int, db: str | None = None) -> list[str]:
    folder = open_study(study_path, db)
    try:
        with folder.sessions.begin() as session:
            return [i.token for i in invite(session, folder.study_id, folder.definition, n)]
    finally:
        folder.close()


def _stored(study_path, db: str | None = None) -> dict[tuple[str, int], str | None]:
    folder = open_study(study_path, db)
    try:
        with folder.sessions() as session:
            rows = session.scalars(select(Answer)).all()
            keys = [(a.assignment_id, a.step) for a in rows]
            assert len(keys) == len(set(keys)), "an answer was stored twice"
            return {(a.assignment_id, a.step): a.answer for a in rows}
    finally:
        folder.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fifty_concurrent_participants_lose_no_answer(study_definition, make_study, backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    db = request.getfixturevalue("postgres_db") if backend == "postgresql" else None
    definition = study_definition(name=f"load-{backend}", arms=["unassisted"], time_limit_s=45)
    study_path = make_study(definition, db=db)
    tokens = _tokens(study_path, 50, db)
    with running_server(study_path, db=db) as base:
        report = simulate_participants(base, tokens, max_seconds=90, think_s=0.05)
    assert report.errors_5xx == 0 and report.errors_4xx == 0, report.error_samples
    assert report.connection_retries == 0, report.error_samples
    assert report.finished == 50 and report.answers_confirmed == 50 * 7
    stored = _stored(study_path, db)
    assert stored == report.confirmed  # every confirmed answer, as confirmed, and nothing else
    print(f"\n{backend}: answer latency p50 {report.answer_p50:.1f} ms, p99 {report.answer_p99:.1f} ms "
          f"({report.answers_confirmed} answers in {report.seconds:.1f} s)")


def test_sigkill_mid_study_loses_nothing_confirmed(study_definition, make_study) -> None:
    definition = study_definition(name="kill", arms=["unassisted"], time_limit_s=45,
                                  cases={"per_class": 2})
    study_path = make_study(definition)
    tokens = _tokens(study_path, 10)
    port = free_port()
    proc = start_server(study_path, port)
    result: dict = {}

    def readers() -> None:
        result["report"] = simulate_participants(f"http://127.0.0.1:{port}", tokens, max_seconds=120, think_s=0.2)

    thread = threading.Thread(target=readers)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(_stored(study_path)) < 40:  # well into the study
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        stop_server(proc, kill=True)  # SIGKILL: no shutdown handler runs
        before = _stored(study_path)
        assert 40 <= len(before) < 10 * 14
        time.sleep(1.0)  # the readers meanwhile retry against a dead port, as the page does
        proc = start_server(study_path, port)
        thread.join(150)
        assert not thread.is_alive()
    finally:
        stop_server(proc)
    report = result["report"]
    assert report.connection_retries > 0  # the kill did land in the middle of the readers' requests
    assert report.errors_5xx == 0, report.error_samples
    stored = _stored(study_path)
    assert len(stored) == 10 * 14 and report.finished == 10
    assert all(stored[key] == value for key, value in report.confirmed.items())  # nothing confirmed was lost
    assert all(stored[key] == value for key, value in before.items())  # nor changed after the restart
