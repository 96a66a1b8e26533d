"""What the orchestrator and the trainer worker share: names, events, replay.

Events go to the record first (their ids are the SSE `Last-Event-ID`) and then on
the bus, which tells the SSE streams following the run to read the record now. Replay is what makes Redis not the record: the batches
a lost stream held are published again from Postgres.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from service.bus import Bus
from service.storage import Repository

log = logging.getLogger(__name__)

TRAINERS = "trainers"  # the consumer group every trainer worker joins
TERMINAL_EVENTS = ("completed", "failed", "cancelled", "stopped")


def batch_id_for(run_id: int, step: int) -> str:
    """Deterministic, so a re-sampled step after an orchestrator restart keeps its id."""
    return f"run-{run_id}-step-{step}"


async def emit(repo: Repository, bus: Bus, run_id: int, kind: str, payload: dict[str, Any]) -> None:
    """Record an event, then publish it live (a bus hiccup loses only the live copy)."""
    event = await asyncio.to_thread(repo.add_event, run_id, kind, payload)
    document = {
        "id": event.id,
        "kind": kind,
        "run_id": run_id,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
    }
    try:
        await bus.publish_event(str(run_id), document)
    except Exception:  # noqa: BLE001 - the record has it; SSE streams also poll it
        log.warning("could not publish event %s of run %d", kind, run_id, exc_info=True)


async def republish_untrained(repo: Repository, bus: Bus, run_id: int) -> int:
    """Publish every batch the record says is not trained yet; returns how many.

    Called when the run's stream or consumer group was found missing (Redis flushed
    or restarted without persistence). A batch that was in fact trained is skipped by
    the worker through its batch id, so publishing too much is harmless.
    """
    pending = await asyncio.to_thread(repo.untrained_batches, run_id)
    for row in pending:
        await bus.publish_batch(str(run_id), row.batch_id, row.payload)
    if pending:
        log.info("run %d: re-published %d untrained batches from the record", run_id, len(pending))
    return len(pending)


async def cancel_and_wait(task: asyncio.Task, every_s: float = 1.0) -> None:
    """Cancel `task` and wait for it to end, cancelling again every `every_s`: a library
    that swallows one cancellation (seen with redis-py inside a blocking read) must not
    leave a task that never stops."""
    task.cancel()
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=every_s)
        if not done:
            log.warning("task %s ignored a cancellation; cancelling again", task.get_name())
            task.cancel()
    with suppress(asyncio.CancelledError):
        task.result()
