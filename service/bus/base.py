"""The bus: what moves between the orchestrator and the trainer workers.

One protocol, two implementations (docs/architecture.md "The record and the bus"):
`redis_bus.RedisBus` (distributed) and `memory_bus.MemoryBus` (embedded, one process).
`service.bus.make_bus` picks one.

What it carries, per run:
- the batch stream: at-least-once delivery through consumer groups. A batch is
  acknowledged only after the optimiser step is durable; a batch a dead worker held
  is taken over with `claim_stale`. Redelivery is possible, so the trainer skips a
  batch id it has already trained (the id is recorded with the step in the checkpoint).
- events: live pub/sub (fire and forget; history lives in Postgres).
- the live feedback stream: capped, newest entries only.
And, across runs: worker heartbeats and named locks.

Lost streams. Redis is not the record: it may be flushed or restarted without
persistence. A group operation (`read_batches`, `claim_stale`) that
finds its consumer group gone recreates the group at the start of whatever stream
exists now and raises `StreamLost`. Whoever catches it must have the unacknowledged
batches re-published from Postgres (the orchestrator does this); re-publishing a batch
that was in fact trained is harmless because of the batch-id skip above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


class BusError(Exception):
    """Base of the bus's typed errors."""


class StreamLost(BusError):
    """The run's consumer group (and so its pending batches) vanished; the group is recreated.

    Raised once, to the first caller that notices. Unacknowledged batches must be
    re-published from the record (Postgres).
    """

    def __init__(self, run_id: str, group: str) -> None:
        super().__init__(f"batch stream of run {run_id!r} lost its group {group!r}; recreated")
        self.run_id = run_id
        self.group = group


class LockNotAcquired(BusError):
    """`lock(..., wait_s=...)` gave up waiting for the lock."""


class LockLost(BusError):
    """The lock expired (ttl) before its holder released it: exclusion was not guaranteed."""


@dataclass(frozen=True)
class Delivery:
    """One batch handed to one consumer. Ack `message_id` once the step is durable."""

    message_id: str
    batch_id: str
    payload: bytes
    delivery_count: int  # 1 on first delivery; +1 each time it is claimed by a consumer


class EventStream(Protocol):
    """Events of one run, as they are published.

    Use `async with bus.subscribe_events(run) as events:` to be subscribed before the
    first event you must see; plain `async for` subscribes on its first iteration.
    """

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def __anext__(self) -> dict[str, Any]: ...
    async def __aenter__(self) -> EventStream: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def aclose(self) -> None: ...


class Bus(Protocol):
    # --- batch stream (per run, consumer groups, at-least-once) ---
    async def publish_batch(self, run_id: str, batch_id: str, payload: bytes) -> str:
        """Append a batch; returns its message id. Creates the stream if needed."""
        ...

    async def ensure_group(self, run_id: str, group: str) -> bool:
        """Create `group` reading from the stream's start; True if it had to be created."""
        ...

    async def read_batches(
        self, run_id: str, group: str, consumer: str, count: int = 1, block_ms: int = 0
    ) -> list[Delivery]:
        """New batches for `consumer` (never delivered to the group before).

        `block_ms` <= 0 returns at once; otherwise waits up to that long for one.
        Raises `StreamLost` (after recreating the group) if the group is gone.
        """
        ...

    async def ack(self, run_id: str, group: str, message_id: str, *, delete: bool = True) -> bool:
        """Acknowledge a delivery; False if it was not pending (already acked, or lost).

        `delete` also removes the entry from the stream (batches are large and one
        group reads them); pass False if a second group must still read it.
        """
        ...

    async def claim_stale(
        self, run_id: str, group: str, consumer: str, min_idle_ms: int, count: int = 1
    ) -> list[Delivery]:
        """Take over pending batches idle >= `min_idle_ms` (a dead worker's). Raises `StreamLost`."""
        ...

    async def delete_run(self, run_id: str) -> None:
        """Drop the run's batch and feedback streams (and their groups)."""
        ...

    # --- events and live feedback ---
    async def publish_event(self, run_id: str, event: dict[str, Any]) -> None: ...

    def subscribe_events(self, run_id: str) -> EventStream: ...

    async def publish_feedback(self, run_id: str, items: Sequence[dict[str, Any]]) -> list[str]:
        """Append to the run's capped live feedback stream (one round trip); returns entry ids."""
        ...

    async def recent_feedback(self, run_id: str, count: int) -> list[dict[str, Any]]:
        """The newest `count` feedback items, oldest first."""
        ...

    # --- workers and locks ---
    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Mark `worker_id` alive for `ttl_s` seconds."""
        ...

    async def live_workers(self) -> list[str]:
        """Workers whose last heartbeat has not expired, sorted."""
        ...

    def lock(
        self, name: str, ttl_s: float, *, wait_s: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold lock `name`; it expires `ttl_s` after its holder stops renewing it (dies),
        however long the body runs.

        Waits forever by default; with `wait_s`, raises `LockNotAcquired` after that long.
        """
        ...

    # --- lifecycle ---
    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...
