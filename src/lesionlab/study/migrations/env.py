"""Alembic environment of the reader-study storage.

lesionlab runs migrations itself (``lesionlab study create`` and ``lesionlab study migrate``), handing over an open
connection in ``config.attributes["connection"]``; no ``alembic.ini`` is needed. The version table is
``lesionlab_study_version``, so a study can live in a database that other applications' Alembic also manages.
"""

from __future__ import annotations

from alembic import context

from lesionlab.study.storage import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("lesionlab study migrations run through `lesionlab study migrate STUDY`, with a connection")

context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
