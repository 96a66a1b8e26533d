"""Indexes of the hot reads: a run's trajectory pages, runs by status.

A page of trajectories (`WHERE run_id = ? AND id > ? ORDER BY id`) read the run's
whole (run_id, step) index and sorted it; runs by status (the list filter, and the
active runs the orchestrator and the workers poll for) scanned the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_trajectories_run_id_id"), "trajectories", ["run_id", "id"])
    op.create_index(op.f("ix_runs_status_id"), "runs", ["status", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_status_id"), table_name="runs")
    op.drop_index(op.f("ix_trajectories_run_id_id"), table_name="trajectories")
