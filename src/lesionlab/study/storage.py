"""Storage of reader studies: SQLAlchemy 2 models, the engine (SQLite in WAL mode or PostgreSQL), migrations.

Tables (the Alembic migrations in ``study/migrations/versions`` create them; :func:`upgrade` runs them):

- ``studies``: one row per study: frozen definition (JSON, no ground truth), admin-token hash, closed time.
- ``cases``: what a participant may see of a case: opaque id, opaque image key, clinical data, its case set.
- ``case_truth``: ground truth and source image id, apart; only the export and the admin side read it.
- ``model_outputs``: per case and variant (``model``: what the run computed; ``faulty``: the wrong output the
  faulty arm shows), the seven probabilities, top class, malignant probability, heatmap key, run id and version.
- ``participants``: opaque id, SHA-256 of the invite token (never the token), label, arm order, consent, expiry.
- ``assignments``: the cases a participant reads: opaque item id, case, arm, session, position.
- ``presentations``: when the server first served an item's step (insert-once).
- ``answers``: append-only (triggers refuse UPDATE and DELETE), one per (participant, case, arm, step) by a
  unique constraint, with server times, the client's elapsed time and the time-out flag.

SQLite write transactions start with ``BEGIN IMMEDIATE`` (a deferred transaction that later needs the write lock
can fail at once with "database is locked" instead of waiting), with WAL and a busy timeout, so concurrent requests
queue rather than fail. PostgreSQL runs the same code; the unique constraint settles every race.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from lesionlab.study.errors import StudyError

SCHEMA_HEAD = "0001"
VERSION_TABLE = "lesionlab_study_version"  # not alembic_version: a shared database may hold other apps' Alembic
SQLITE_BUSY_TIMEOUT_MS = 30_000


def utcnow() -> dt.datetime:
    """Server time, UTC, timezone-aware."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the study tables."""


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    design: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    admin_token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    case_set: Mapped[str] = mapped_column(String(16))
    pool_position: Mapped[int] = mapped_column(Integer)
    image_key: Mapped[str] = mapped_column(String(32), unique=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    age: Mapped[float | None] = mapped_column(Float, nullable=True)
    sex: Mapped[str | None] = mapped_column(String(16), nullable=True)
    site: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CaseTruth(Base):
    __tablename__ = "case_truth"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(128))
    lesion_id: Mapped[str] = mapped_column(String(128))
    truth: Mapped[str] = mapped_column(String(8))
    source_sha256: Mapped[str] = mapped_column(String(64))


class ModelOutput(Base):
    __tablename__ = "model_outputs"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    variant: Mapped[str] = mapped_column(String(8), primary_key=True)  # model | faulty
    probabilities: Mapped[list[float]] = mapped_column(JSON)  # CLASS_CODES order
    top: Mapped[str] = mapped_column(String(8))
    malignant: Mapped[float] = mapped_column(Float)
    heatmap_key: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    run_id: Mapped[str] = mapped_column(String(256))
    run_version: Mapped[str] = mapped_column(String(64))


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    arm_order: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    consented_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("participant_id", "case_id", "arm", name="uq_assignment"),
                      UniqueConstraint("participant_id", "session", "position", name="uq_assignment_place"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the opaque item id participants see
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    arm: Mapped[str] = mapped_column(String(16))
    session: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)


class Presentation(Base):
    __tablename__ = "presentations"

    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    shown_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("participant_id", "case_id", "arm", "step", name="uq_answer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"))
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    arm: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    answer: Mapped[str | None] = mapped_column(String(8), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    management: Mapped[str | None] = mapped_column(String(128), nullable=True)
    shown_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    client_elapsed_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    server_elapsed_ms: Mapped[float] = mapped_column(Float)
    timed_out: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16), default="client")  # client | server (time-out recorded on resume)


# ------------------------------------------------------------------------------------------------------- engine


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver for the bare scheme is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for a study database: SQLite (WAL, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg 3)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                               pool_size=8, max_overflow=56, pool_timeout=60)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a confirmed answer survives a power cut, not only a crash
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401
        except ImportError as err:  # pragma: no cover - psycopg is a dependency
            raise StudyError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'") from err
        return create_engine(url, pool_size=8, max_overflow=56, pool_timeout=60, pool_pre_ping=True)
    raise StudyError(f"database URL {url.split('://')[0]}://... is not supported; use sqlite:///FILE or "
                     "postgresql://USER@HOST:PORT/DB")


def session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded attributes after commit (responses are built from them)."""
    return sessionmaker(engine, expire_on_commit=False)


# --------------------------------------------------------------------------------------------------- migrations


def migrations_dir() -> Path:
    """The Alembic scripts, shipped as package data."""
    return Path(__file__).resolve().parent / "migrations"


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (creating every table in an empty database)."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base``: no study tables); for rolling back a failed upgrade."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: no lesionlab study tables yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Refuse to serve a database whose schema is not the one this code writes."""
    rev = current_revision(engine)
    if rev != SCHEMA_HEAD:
        where = engine.url.render_as_string(hide_password=True)
        raise StudyError(f"{where}: study schema is at revision {rev or 'none'}, this lesionlab needs "
                         f"{SCHEMA_HEAD}; run `lesionlab study migrate STUDY`")


def table_names(engine: Engine) -> list[str]:
    """Tables present (tests and diagnostics)."""
    return sorted(inspect(engine).get_table_names())


def ping(engine: Engine) -> None:
    """One round trip (health check)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
