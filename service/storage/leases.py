"""Run leases: the record decides which API replica drives a run.

A replica takes a run's lease when it has expired, or at once when the lease is its own
(its holder id is the replica's `Settings.replica_id`, stable across restarts: a replica
that comes back takes back its runs without waiting). Every take increments the lease's
`token`. While driving, the holder renews the lease; each batch and evaluation it writes
first checks (`fence`) in the same transaction that the lease still carries its token,
so a driver whose lease was taken over (it froze, or lost touch with the database past
the expiry) writes nothing. Expiry uses the replicas' clocks; the token does not, so
clock skew can only delay or hasten a takeover, never let two drivers write.

Each function runs its statements in the caller's transaction (session `s`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.storage.models import RunLease, utcnow


@dataclass(frozen=True)
class Lease:
    """A run's lease as its holder took it; `token` fences the holder's writes."""

    run_id: int
    holder: str
    token: int


def _updated(s: Session, lease: Lease, **values) -> bool:
    """Set `values` on the lease row if `lease` still holds; whether it did."""
    held = (
        update(RunLease)
        .where(
            RunLease.run_id == lease.run_id,
            RunLease.holder == lease.holder,
            RunLease.token == lease.token,
        )
        .values(**values)
        .returning(RunLease.run_id)
    )
    return s.scalar(held) is not None


def take(s: Session, run_id: int, holder: str, ttl_s: float) -> Lease | None:
    """Take the lease of `run_id` for `ttl_s` if it is free, expired or `holder`'s own;
    None if another holder has it."""
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl_s)
    # Conditional writes: on Postgres a concurrent take waits for the row and re-checks
    # the condition on the committed row; SQLite runs one write transaction at a time.
    # RETURNING, not rowcount: psycopg reports no rowcount for INSERT ... ON CONFLICT.
    token = s.scalar(
        update(RunLease)
        .where(
            RunLease.run_id == run_id,
            or_(RunLease.holder == holder, RunLease.expires_at <= now),
        )
        .values(holder=holder, token=RunLease.token + 1, expires_at=expires_at)
        .returning(RunLease.token)
    )
    if token is None:  # no row yet (the run's first take), or another holder's live lease
        dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
        first = dialect.insert(RunLease).values(
            run_id=run_id, holder=holder, token=1, expires_at=expires_at
        )
        token = s.scalar(first.on_conflict_do_nothing().returning(RunLease.token))
    return Lease(run_id, holder, token) if token is not None else None


def renew(s: Session, lease: Lease, ttl_s: float) -> bool:
    """Extend `lease` by `ttl_s` from now; False if it was taken over."""
    expires_at = utcnow() + timedelta(seconds=ttl_s)
    return _updated(s, lease, expires_at=expires_at)


def release(s: Session, lease: Lease) -> None:
    """Let another holder take the run now (the row, and so its token, stays)."""
    _updated(s, lease, expires_at=utcnow())


def fence(s: Session, lease: Lease) -> bool:
    """Does `lease` still hold, and will it until this transaction ends?

    A write, not a read: it locks the lease row (Postgres) or the database (SQLite)
    until commit, so no take can come between this check and the caller's writes.
    """
    return _updated(s, lease, token=RunLease.token)
