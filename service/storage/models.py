"""The record's models, for Postgres and SQLite alike (docs/architecture.md "The record and the bus").

Every change here needs an Alembic migration under `service/migrations/versions/`;
`tests/service/storage/test_migrations.py` fails when models and migrations drift.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on Postgres (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGINT ids on Postgres; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on both backends (SQLite drops the zone; we put UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; store timezone-aware timestamps")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    # Named constraints: Alembic (and SQLite batch mode) can only alter what has a name.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    stopped = "stopped"
    failed = "failed"
    cancelled = "cancelled"
    completed = "completed"


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(128))  # the environment class name
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index(None, "status", "id"),)  # the list by status; the active runs

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="RESTRICT"), index=True
    )
    model: Mapped[str] = mapped_column(String(256))
    # VARCHAR + CHECK rather than a native enum: new states need no ALTER TYPE.
    status: Mapped[RunStatus] = mapped_column(
        Enum(
            RunStatus,
            name="run_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=RunStatus.queued,
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)  # RunConfig.model_dump(mode="json")
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    policy_version: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Step(Base):
    """One optimiser step; `batch_id` is the exactly-once guard against redelivered batches."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "step"),
        UniqueConstraint("run_id", "batch_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[str] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    policy_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Trajectory(Base):
    """One scored response (trainer.rollout.Rollout) and where it sits in its step."""

    __tablename__ = "trajectories"
    __table_args__ = (
        Index(None, "run_id", "step"),
        Index(None, "run_id", "verdict"),
        Index(None, "run_id", "id"),  # a run's pages, in the order they were written
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    group_index: Mapped[int] = mapped_column(Integer)  # which task of the step
    sample_index: Mapped[int] = mapped_column(Integer)  # which of the G samples of that task
    task_id: Mapped[str] = mapped_column(String(256))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    reward: Mapped[float]
    verdict: Mapped[str] = mapped_column(String(32))
    feedback: Mapped[str | None] = mapped_column(Text)
    teacher_context: Mapped[str | None] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(default=False)
    policy_version: Mapped[int] = mapped_column(Integer)  # the policy that sampled it
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # turns, tool calls, ...
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TokenScores(Base):
    """Per-token teacher-student log-ratios of one trajectory (trainer.step.StepResult)."""

    __tablename__ = "token_scores"

    trajectory_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("trajectories.id", ondelete="CASCADE"), primary_key=True
    )
    log_ratios: Mapped[list[float | None]] = mapped_column(JSONType)
    tokens: Mapped[list[str] | None] = mapped_column(JSONType)  # the response tokens, decoded


class PendingBatch(Base):
    """A published batch, kept until trained (docs/architecture.md "The record and the bus").

    The orchestrator writes it before publishing on the bus; the worker reads the
    rollouts from here when it records the step and sets `trained` in the same
    transaction. Untrained rows are what gets re-published when Redis loses a stream.
    """

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("run_id", "step"),
        UniqueConstraint("run_id", "batch_id"),
        Index(None, "run_id", "trained"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[int] = mapped_column(Integer)  # the policy that sampled it
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # service.bus.codec.encode_batch
    rollouts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType)  # rollout metrics of the step
    trained: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evaluation(Base):
    """Held-out accuracy of the policy after `step` optimiser steps (0 = the base model)."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index(None, "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """Something that happened; the increasing `id` is the SSE `Last-Event-ID`."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "run_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunLease(Base):
    """Which API replica drives a run (service.pipeline.orchestrator), and until when.

    `token` grows by one with every take and never goes back (a released lease keeps its
    row): a driver's writes check it in their own transaction (a fencing token), so a
    driver whose lease was taken over cannot write (service/storage/leases.py).
    """

    __tablename__ = "run_leases"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))  # Settings.replica_id
    token: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
