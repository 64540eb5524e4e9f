"""The first reader-study schema: studies, cases, ground truth apart, model outputs, participants, assignments,
presentations and append-only answers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("design", sa.String(16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("admin_token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("closed_at", TZ, nullable=True),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.id"), nullable=False, index=True),
        sa.Column("case_set", sa.String(16), nullable=False),
        sa.Column("pool_position", sa.Integer(), nullable=False),
        sa.Column("image_key", sa.String(32), nullable=False, unique=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_width", sa.Integer(), nullable=False),
        sa.Column("image_height", sa.Integer(), nullable=False),
        sa.Column("age", sa.Float(), nullable=True),
        sa.Column("sex", sa.String(16), nullable=True),
        sa.Column("site", sa.String(64), nullable=True),
    )
    op.create_table(
        "case_truth",
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), primary_key=True),
        sa.Column("image_id", sa.String(128), nullable=False),
        sa.Column("lesion_id", sa.String(128), nullable=False),
        sa.Column("truth", sa.String(8), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
    )
    op.create_table(
        "model_outputs",
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), primary_key=True),
        sa.Column("variant", sa.String(8), primary_key=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("top", sa.String(8), nullable=False),
        sa.Column("malignant", sa.Float(), nullable=False),
        sa.Column("heatmap_key", sa.String(32), nullable=True, unique=True),
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("run_version", sa.String(64), nullable=False),
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.id"), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("arm_order", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("consented_at", TZ, nullable=True),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("participant_id", sa.String(32), sa.ForeignKey("participants.id"), nullable=False, index=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("session", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.UniqueConstraint("participant_id", "case_id", "arm", name="uq_assignment"),
        sa.UniqueConstraint("participant_id", "session", "position", name="uq_assignment_place"),
    )
    op.create_table(
        "presentations",
        sa.Column("assignment_id", sa.String(32), sa.ForeignKey("assignments.id"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("shown_at", TZ, nullable=False),
    )
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("participant_id", sa.String(32), sa.ForeignKey("participants.id"), nullable=False, index=True),
        sa.Column("assignment_id", sa.String(32), sa.ForeignKey("assignments.id"), nullable=False),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("answer", sa.String(8), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("management", sa.String(128), nullable=True),
        sa.Column("shown_at", TZ, nullable=False),
        sa.Column("answered_at", TZ, nullable=False),
        sa.Column("client_elapsed_ms", sa.Float(), nullable=True),
        sa.Column("server_elapsed_ms", sa.Float(), nullable=False),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.UniqueConstraint("participant_id", "case_id", "arm", "step", name="uq_answer"),
    )
    # Answers are append-only: the database itself refuses to change or remove one.
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER answers_no_{action.lower()} BEFORE {action} ON answers "
                       "BEGIN SELECT RAISE(ABORT, 'answers are append-only'); END")
    elif dialect == "postgresql":
        op.execute("CREATE FUNCTION lesionlab_answers_append_only() RETURNS trigger AS $$ "
                   "BEGIN RAISE EXCEPTION 'answers are append-only'; END; $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER answers_append_only BEFORE UPDATE OR DELETE ON answers "
                   "FOR EACH ROW EXECUTE FUNCTION lesionlab_answers_append_only()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS answers_no_update")
        op.execute("DROP TRIGGER IF EXISTS answers_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS answers_append_only ON answers")
        op.execute("DROP FUNCTION IF EXISTS lesionlab_answers_append_only()")
    for table in ("answers", "presentations", "assignments", "participants", "model_outputs", "case_truth",
                  "cases", "studies"):
        op.drop_table(table)
