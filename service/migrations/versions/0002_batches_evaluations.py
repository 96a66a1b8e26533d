"""Pending batches (the record behind the Redis batch stream), evaluations, token texts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("rollouts", JSON, nullable=False),
        sa.Column("stats", JSON, nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("run_id", "batch_id", name=op.f("uq_batches_run_id_batch_id")),
        sa.UniqueConstraint("run_id", "step", name=op.f("uq_batches_run_id_step")),
    )
    op.create_index(op.f("ix_batches_run_id_trained"), "batches", ["run_id", "trained"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Double(), nullable=False),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("run_id", "step", name=op.f("uq_evaluations_run_id_step")),
    )
    with op.batch_alter_table("token_scores") as batch:
        batch.add_column(sa.Column("tokens", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("token_scores") as batch:
        batch.drop_column("tokens")
    op.drop_table("evaluations")
    op.drop_index(op.f("ix_batches_run_id_trained"), table_name="batches")
    op.drop_table("batches")
