"""The storage API the app and the worker use: one session (one transaction) per call.

Returned objects are detached ORM rows: read their attributes, do not lazy-load or
mutate them (change things through a repository method). Lists page with opaque
cursors: `items, next_cursor = repo.list_runs(limit, cursor)`; `next_cursor` is None
on the last page.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.storage import leases
from service.storage.leases import Lease
from service.storage.models import (
    Checkpoint,
    Environment,
    Evaluation,
    Event,
    PendingBatch,
    Run,
    RunStatus,
    Step,
    TokenScores,
    Trajectory,
)
from trainer.config import RunConfig


class StorageError(Exception):
    """Base of the typed storage errors the API turns into 4xx responses."""


class NotFound(StorageError):
    pass


class AlreadyExists(StorageError):
    pass


class InvalidCursor(StorageError, ValueError):
    pass


class Conflict(StorageError):
    """The request does not fit the current state (stopping a finished run, say)."""


class LeaseLost(StorageError):
    """A write under a run's lease whose holder no longer holds it: nothing was written."""


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != "id":
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from error


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity (Postgres refuses them): store such floats as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


class Repository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def _page(
        self, query: Select, id_column, limit: int, cursor: str | None, newest_first: bool
    ) -> tuple[list, str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if cursor is not None:
            after = decode_cursor(cursor)
            query = query.where(id_column < after if newest_first else id_column > after)
        query = query.order_by(id_column.desc() if newest_first else id_column.asc())
        with self.sessions() as s:
            rows = list(s.scalars(query.limit(limit + 1)))
        if len(rows) <= limit:
            return rows, None
        return rows[:limit], encode_cursor(rows[limit - 1].id)

    # environments

    def create_environment(self, name: str, kind: str, config: dict[str, Any]) -> Environment:
        env = Environment(name=name, kind=kind, config=config)
        try:
            with self.sessions.begin() as s:
                s.add(env)
        except IntegrityError as error:
            raise AlreadyExists(f"environment {name!r} already exists") from error
        return env

    def get_environment(self, key: int | str) -> Environment:
        """By id (int) or by name (str)."""
        column = Environment.id if isinstance(key, int) else Environment.name
        with self.sessions() as s:
            env = s.scalar(select(Environment).where(column == key))
        if env is None:
            raise NotFound(f"environment {key!r} not found")
        return env

    def list_environments(self) -> list[Environment]:
        with self.sessions() as s:
            return list(s.scalars(select(Environment).order_by(Environment.name)))

    # runs

    def create_run(self, environment_id: int, config: RunConfig) -> Run:
        run = Run(
            environment_id=environment_id,
            model=config.model,
            status=RunStatus.queued,
            config=config.model_dump(mode="json"),
        )
        try:
            with self.sessions.begin() as s:
                s.add(run)
        except IntegrityError as error:
            raise NotFound(f"environment {environment_id} not found") from error
        return run

    def get_run(self, run_id: int) -> Run:
        with self.sessions() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    def run_status(self, run_id: int) -> RunStatus:
        """The run's state alone (what a poll needs: no configuration read and parsed)."""
        with self.sessions() as s:
            status = s.scalar(select(Run.status).where(Run.id == run_id))
        if status is None:
            raise NotFound(f"run {run_id} not found")
        return status

    def list_runs(
        self, limit: int = 50, cursor: str | None = None, status: RunStatus | None = None
    ) -> tuple[list[Run], str | None]:
        """Newest first."""
        query = select(Run)
        if status is not None:
            query = query.where(Run.status == status)
        return self._page(query, Run.id, limit, cursor, newest_first=True)

    def runs_with_status(self, *statuses: RunStatus) -> list[Run]:
        """Every run in one of `statuses`, oldest first."""
        with self.sessions() as s:
            query = select(Run).where(Run.status.in_(statuses)).order_by(Run.id)
            return list(s.scalars(query))

    def transition(
        self,
        run_id: int,
        allowed: Sequence[RunStatus],
        status: RunStatus,
        error: str | None = None,
    ) -> Run:
        """Move a run to `status` if it is in one of `allowed` now; else raise Conflict."""
        with self.sessions.begin() as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFound(f"run {run_id} not found")
            if run.status not in allowed:
                names = ", ".join(a.value for a in allowed)
                raise Conflict(
                    f"run {run_id} is {run.status.value}; only a run that is {names} "
                    f"can become {status.value}"
                )
            run.status = status
            run.error = error
        return run

    # steps, trajectories, token scores

    def record_step(
        self,
        run_id: int,
        step: int,
        batch_id: str,
        metrics: dict[str, float],
        policy_version: int,
        trajectories: Sequence[dict[str, Any]],
        log_ratios: Sequence[Sequence[float]] = (),
        tokens: Sequence[Sequence[str]] = (),
    ) -> bool:
        """Write a step, its trajectories and token scores in one transaction.

        Each trajectory dict holds the `Rollout` fields plus `group_index` and
        `sample_index` (optionally `policy_version`, `metrics`). `log_ratios` (and
        `tokens`, the decoded response tokens) are empty or one list per trajectory, in
        the same order. Returns False, writing nothing, when this run already recorded
        `batch_id` (a redelivered batch). Also advances the run's `steps_done` and
        `policy_version`, and marks the pending batch `batch_id` (if any) trained.
        NaN/inf floats are stored as null.
        """
        for name, rows in (("log-ratio", log_ratios), ("token", tokens)):
            if rows and len(rows) != len(trajectories):
                raise ValueError(f"{len(rows)} {name} rows for {len(trajectories)} trajectories")
        try:
            with self.sessions.begin() as s:
                if self._has_batch(s, run_id, batch_id):
                    return False
                run = s.get(Run, run_id, with_for_update=True)
                if run is None:
                    raise NotFound(f"run {run_id} not found")
                s.add(
                    Step(
                        run_id=run_id,
                        step=step,
                        batch_id=batch_id,
                        metrics=finite_or_none(metrics),
                        policy_version=policy_version,
                    )
                )
                # Core bulk inserts (one multi-row statement each), not ORM objects: the
                # ORM unit of work cost most of a step's recording time.
                table = Trajectory.__table__
                rows = [
                    {"policy_version": policy_version, "metrics": None}
                    | finite_or_none(dict(t))
                    | {"run_id": run_id, "step": step}
                    for t in trajectories
                ]
                returned = s.execute(
                    insert(table).returning(table.c.id, table.c.group_index, table.c.sample_index),
                    rows,
                )
                # Matched back by place, not by order: asking for ordered RETURNING makes
                # SQLAlchemy insert row by row.
                id_of = {(g, i): trajectory_id for trajectory_id, g, i in returned}
                ids = [id_of[r["group_index"], r["sample_index"]] for r in rows]
                if log_ratios:
                    texts = tokens or [None] * len(ids)
                    # RETURNING makes it one multi-row INSERT (psycopg's executemany
                    # sends a statement per row).
                    s.execute(
                        insert(TokenScores.__table__).returning(
                            TokenScores.__table__.c.trajectory_id
                        ),
                        [
                            {
                                "trajectory_id": trajectory_id,
                                "log_ratios": finite_or_none(list(ratios)),
                                "tokens": list(text) if text is not None else None,
                            }
                            for trajectory_id, ratios, text in zip(
                                ids, log_ratios, texts, strict=True
                            )
                        ],
                    )
                s.execute(
                    update(PendingBatch)
                    .where(PendingBatch.run_id == run_id, PendingBatch.batch_id == batch_id)
                    .values(trained=True)
                )
                run.steps_done += 1
                run.policy_version = max(run.policy_version, policy_version)
        except IntegrityError:
            # A concurrent delivery of the same batch may have won the race.
            if self.batch_recorded(run_id, batch_id):
                return False
            raise
        return True

    @staticmethod
    def _has_batch(s: Session, run_id: int, batch_id: str) -> bool:
        query = select(Step.id).where(Step.run_id == run_id, Step.batch_id == batch_id)
        return s.scalar(query) is not None

    def batch_recorded(self, run_id: int, batch_id: str) -> bool:
        """The worker's check before training: was this batch already trained on?"""
        with self.sessions() as s:
            return self._has_batch(s, run_id, batch_id)

    def list_trajectories(
        self,
        run_id: int,
        step: int | None = None,
        verdict: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        min_reward: float | None = None,
        max_reward: float | None = None,
    ) -> tuple[list[Trajectory], str | None]:
        """In the order they were written (step, then group, then sample); the reward
        bounds are inclusive."""
        query = select(Trajectory).where(Trajectory.run_id == run_id)
        if step is not None:
            query = query.where(Trajectory.step == step)
        if verdict is not None:
            query = query.where(Trajectory.verdict == verdict)
        if min_reward is not None:
            query = query.where(Trajectory.reward >= min_reward)
        if max_reward is not None:
            query = query.where(Trajectory.reward <= max_reward)
        return self._page(query, Trajectory.id, limit, cursor, newest_first=False)

    def get_trajectory(self, trajectory_id: int) -> tuple[Trajectory, list[float | None] | None]:
        """The trajectory and its per-token log-ratios (None when none were recorded)."""
        trajectory, scores = self.get_trajectory_scores(trajectory_id)
        return trajectory, scores.log_ratios if scores is not None else None

    def get_trajectory_scores(self, trajectory_id: int) -> tuple[Trajectory, TokenScores | None]:
        """The trajectory and its token scores row (log-ratios and tokens), if recorded."""
        with self.sessions() as s:
            trajectory = s.get(Trajectory, trajectory_id)
            if trajectory is None:
                raise NotFound(f"trajectory {trajectory_id} not found")
            return trajectory, s.get(TokenScores, trajectory_id)

    # pending batches (what the bus carries, kept until trained)

    def add_batch(
        self,
        run_id: int,
        step: int,
        batch_id: str,
        policy_version: int,
        payload: bytes,
        rollouts: Sequence[dict[str, Any]],
        stats: dict[str, Any],
        lease: Lease | None = None,
    ) -> PendingBatch:
        """Keep a batch before it is published; AlreadyExists if the step has one.
        With `lease`: LeaseLost, writing nothing, unless it still holds."""
        row = PendingBatch(
            run_id=run_id,
            step=step,
            batch_id=batch_id,
            policy_version=policy_version,
            payload=payload,
            rollouts=finite_or_none(list(rollouts)),
            stats=finite_or_none(stats),
            trained=False,
        )
        try:
            with self.sessions.begin() as s:
                self._fence(s, lease)
                s.add(row)
        except IntegrityError as error:
            raise AlreadyExists(f"run {run_id} already has a batch for step {step}") from error
        return row

    def get_batch(self, run_id: int, batch_id: str) -> PendingBatch:
        query = select(PendingBatch).where(
            PendingBatch.run_id == run_id, PendingBatch.batch_id == batch_id
        )
        with self.sessions() as s:
            row = s.scalar(query)
        if row is None:
            raise NotFound(f"run {run_id} has no batch {batch_id!r}")
        return row

    def untrained_batches(self, run_id: int) -> list[PendingBatch]:
        """Published batches not trained yet, in step order (what a lost stream held)."""
        query = select(PendingBatch).where(
            PendingBatch.run_id == run_id, PendingBatch.trained.is_(False)
        )
        with self.sessions() as s:
            return list(s.scalars(query.order_by(PendingBatch.step)))

    def last_batch_step(self, run_id: int) -> int:
        """The highest step with a published batch (0 if none)."""
        query = select(func.max(PendingBatch.step)).where(PendingBatch.run_id == run_id)
        with self.sessions() as s:
            return s.scalar(query) or 0

    # run leases (which API replica drives a run: service/storage/leases.py)

    def take_lease(self, run_id: int, holder: str, ttl_s: float) -> Lease | None:
        """The run's lease for `holder` (free, expired or its own), or None: another has it."""
        try:
            with self.sessions.begin() as s:
                return leases.take(s, run_id, holder, ttl_s)
        except IntegrityError as error:
            raise NotFound(f"run {run_id} not found") from error

    def renew_lease(self, lease: Lease, ttl_s: float) -> bool:
        """Extend `lease` by `ttl_s` from now; False if another holder took it over."""
        with self.sessions.begin() as s:
            return leases.renew(s, lease, ttl_s)

    def release_lease(self, lease: Lease) -> None:
        with self.sessions.begin() as s:
            leases.release(s, lease)

    @staticmethod
    def _fence(s: Session, lease: Lease | None) -> None:
        if lease is not None and not leases.fence(s, lease):
            raise LeaseLost(f"run {lease.run_id}: {lease.holder} no longer holds its lease")

    # evaluations

    def add_evaluation(
        self, run_id: int, step: int, accuracy: float, lease: Lease | None = None
    ) -> bool:
        """Record held-out accuracy after `step` steps; False if that step has one.
        With `lease`: LeaseLost, writing nothing, unless it still holds."""
        try:
            with self.sessions.begin() as s:
                self._fence(s, lease)
                s.add(Evaluation(run_id=run_id, step=step, accuracy=accuracy))
        except IntegrityError:
            return False
        return True

    def evaluations(self, run_id: int) -> list[tuple[int, float]]:
        """`[(step, accuracy), ...]` in step order."""
        query = select(Evaluation.step, Evaluation.accuracy).where(Evaluation.run_id == run_id)
        with self.sessions() as s:
            return [
                (step, accuracy) for step, accuracy in s.execute(query.order_by(Evaluation.step))
            ]

    def evaluations_of(self, run_ids: Sequence[int]) -> dict[int, list[tuple[int, float]]]:
        """`{run_id: [(step, accuracy), ...]}` for many runs in one query, in step order."""
        query = (
            select(Evaluation.run_id, Evaluation.step, Evaluation.accuracy)
            .where(Evaluation.run_id.in_(run_ids))
            .order_by(Evaluation.run_id, Evaluation.step)
        )
        found: dict[int, list[tuple[int, float]]] = {}
        with self.sessions() as s:
            for run_id, step, accuracy in s.execute(query):
                found.setdefault(run_id, []).append((step, accuracy))
        return found

    def metrics_series(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """`{metric: [(step, value), ...]}` in step order; null (non-finite) values left out."""
        series: dict[str, list[tuple[int, float]]] = {}
        query = select(Step.step, Step.metrics).where(Step.run_id == run_id).order_by(Step.step)
        with self.sessions() as s:
            rows = s.execute(query).all()  # columns, not Step objects: a third of the time
        for step, metrics in rows:
            for name, value in metrics.items():
                if value is not None:
                    series.setdefault(name, []).append((step, value))
        if evaluations := self.evaluations(run_id):
            series["eval_accuracy"] = evaluations
        return series

    def steps_after(
        self, run_id: int, after: int
    ) -> list[tuple[int, dict[str, float | None], datetime]]:
        """`(step, metrics, recorded at)` of the run's steps after step `after`, in step
        order (non-finite values are null)."""
        query = (
            select(Step.step, Step.metrics, Step.created_at)
            .where(Step.run_id == run_id, Step.step > after)
            .order_by(Step.step)
        )
        with self.sessions() as s:
            return [(step, metrics, at) for step, metrics, at in s.execute(query)]

    def step_times(self, run_id: int) -> list[tuple[int, datetime]]:
        """`(step, when it was recorded)` in step order."""
        query = select(Step.step, Step.created_at).where(Step.run_id == run_id)
        with self.sessions() as s:
            return [(step, at) for step, at in s.execute(query.order_by(Step.step))]

    def step_metrics(self, run_id: int, first: int, last: int) -> list[tuple[int, dict[str, Any]]]:
        """`[(step, metrics), ...]` of the recorded steps `first`..`last`, in step order
        (what the run's guards read; non-finite values are null)."""
        query = (
            select(Step.step, Step.metrics)
            .where(Step.run_id == run_id, Step.step >= first, Step.step <= last)
            .order_by(Step.step)
        )
        with self.sessions() as s:
            return [(step, metrics) for step, metrics in s.execute(query)]

    def steps_done(self, run_id: int) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).where(Step.run_id == run_id)) or 0

    # checkpoints

    def add_checkpoint(self, run_id: int, step: int, path: str) -> Checkpoint:
        checkpoint = Checkpoint(run_id=run_id, step=step, path=path)
        with self.sessions.begin() as s:
            s.add(checkpoint)
        return checkpoint

    def list_checkpoints(self, run_id: int) -> list[Checkpoint]:
        query = select(Checkpoint).where(Checkpoint.run_id == run_id)
        with self.sessions() as s:
            return list(s.scalars(query.order_by(Checkpoint.step, Checkpoint.id)))

    # events

    def add_event(self, run_id: int | None, kind: str, payload: dict[str, Any]) -> Event:
        event = Event(run_id=run_id, kind=kind, payload=finite_or_none(payload))
        with self.sessions.begin() as s:
            s.add(event)
        return event

    def read_version(self, run_id: int | None = None) -> tuple[int, int]:
        """Changes whenever what a reader sees of the run (None: of the run list) changes:
        `(newest run id, newest event id)` of the run or of all runs, 0 for none. Every
        change to a run is followed by one of its events (service.runs.cache)."""
        newest_event = select(func.max(Event.id))
        newest_run = select(func.max(Run.id))
        if run_id is not None:
            newest_event = newest_event.where(Event.run_id == run_id)
            newest_run = newest_run.where(Run.id == run_id)
        with self.sessions() as s:
            run, event = s.execute(
                select(newest_run.scalar_subquery(), newest_event.scalar_subquery())
            ).one()
        return run or 0, event or 0

    def events_after(self, run_id: int | None, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """Events with id > after_id, oldest first; run_id None means every run's and global."""
        query = select(Event).where(Event.id > after_id)
        if run_id is not None:
            query = query.where(Event.run_id == run_id)
        with self.sessions() as s:
            return list(s.scalars(query.order_by(Event.id).limit(limit)))
