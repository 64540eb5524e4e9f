"""Opening a created study: its folder, manifest, database and media, for the server, the CLI and the export."""

from __future__ import annotations

import json
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from lesionlab.study.create import ADMIN_TOKEN_FILE, DB_FILE, MANIFEST, MEDIA_DIR
from lesionlab.study.definition import StudyDefinition, definition_from_dict
from lesionlab.study.errors import StudyError
from lesionlab.study.storage import Study, check_schema, make_engine, session_factory, sqlite_url


@dataclass
class StudyFolder:
    """A created study: ``definition`` (frozen), ``engine`` and ``sessions`` on its database, ``media`` folder."""

    path: Path
    manifest: dict[str, Any]
    definition: StudyDefinition
    url: str
    engine: Engine
    sessions: sessionmaker = field(repr=False)
    # SQLite has one writer at a time; its busy handler makes waiting writers sleep in steps of up to 100 ms, so
    # the server queues its own transactions on a lock instead (PostgreSQL needs none).
    write_lock: Any = field(default_factory=nullcontext, repr=False)

    @property
    def study_id(self) -> str:
        return str(self.manifest["study"])

    @property
    def media(self) -> Path:
        return self.path / MEDIA_DIR

    def admin_token_file(self) -> Path:
        return self.path / ADMIN_TOKEN_FILE

    def study_row(self) -> Study:
        """The study's row (closed time, admin-token hash)."""
        with self.sessions() as db:
            row = db.get(Study, self.study_id)
        if row is None:
            raise StudyError(f"{self.path}: study {self.study_id!r} is not in its database {self.safe_url}")
        return row

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def resolve_url(path: Path, stored: str) -> str:
    """The manifest's database URL; a relative SQLite file is relative to the study folder."""
    if stored.startswith("sqlite:///") and not stored.startswith("sqlite:////"):
        return sqlite_url(path / stored[len("sqlite:///"):])
    return stored


def open_study(path: str | Path, database: str | None = None, check: bool = True) -> StudyFolder:
    """Open the study folder ``path`` (written by ``lesionlab study create``); ``database`` overrides its URL.

    With ``check`` the database schema must be at the revision this code writes (``lesionlab study migrate``).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = f" (a study definition? create the study first: lesionlab study create {path})" \
            if path.suffix in (".yaml", ".yml") else " (create one with `lesionlab study create STUDY.yaml`)"
        raise StudyError(f"{path}: not a study folder, {MANIFEST} not found{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{manifest_path}: not valid JSON ({err})") from None
    for key in ("study", "database", "definition"):
        if key not in manifest:
            raise StudyError(f"{manifest_path}: missing field {key!r}")
    definition = definition_from_dict(manifest["definition"], where=f"{manifest_path} (definition)")
    url = resolve_url(path, database or str(manifest["database"]))
    if url.startswith("sqlite") and not (path / DB_FILE).is_file() and database is None \
            and manifest["database"] == f"sqlite:///{DB_FILE}":
        raise StudyError(f"{path / DB_FILE}: the study's database is missing")
    engine = make_engine(url)
    if check:
        try:
            check_schema(engine)
        except Exception:
            engine.dispose()
            raise
    return StudyFolder(path=path, manifest=manifest, definition=definition, url=url, engine=engine,
                       sessions=session_factory(engine),
                       write_lock=threading.Lock() if engine.dialect.name == "sqlite" else nullcontext())
