"""A run's events as Server-Sent Events: replay the record, then follow it until the run ends.

The record (Postgres/SQLite `events`) is the source, not the bus: a client that
reconnects with `Last-Event-ID` gets exactly what it missed. Each message has
`id` = the event id, `event` = its kind, `data` = the event as JSON (`EventOut`).
The stream ends once a terminal event (completed, failed, cancelled, stopped) is the
latest of the run, or once the run is in a terminal state and every event was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from anyio import to_thread
from sse_starlette import ServerSentEvent

from service.runs.schemas import EventOut
from service.storage import Repository, RunStatus
from service.storage import models as orm

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled", "stopped"})
TERMINAL_STATES = frozenset(
    {RunStatus.completed, RunStatus.failed, RunStatus.cancelled, RunStatus.stopped}
)
BATCH = 500  # events read per query while replaying


def to_message(event: orm.Event) -> ServerSentEvent:
    data = EventOut.model_validate(event, from_attributes=True)
    return ServerSentEvent(data=data.model_dump_json(), id=str(event.id), event=event.kind)


def poll(repo: Repository, run_id: int, after: int) -> tuple[RunStatus, list[orm.Event]]:
    """The run's state, then its events after `after` (one trip to a worker thread)."""
    return repo.run_status(run_id), repo.events_after(run_id, after, BATCH)


async def follow_run(
    repo: Repository, run_id: int, after: int, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    """Every event of `run_id` with an id above `after`, oldest first, then new ones as
    they are recorded (polling every `poll_s` seconds) until the run ends."""
    last_kind: str | None = None
    grace = False
    while True:
        # The status is read before the events: a run seen terminal has written its last
        # event already, or writes it within one more poll (the grace round).
        status, events = await to_thread.run_sync(poll, repo, run_id, after)
        for event in events:
            yield to_message(event)
            after, last_kind = event.id, event.kind
        if len(events) == BATCH:
            continue
        if last_kind in TERMINAL_EVENTS:
            return
        if status in TERMINAL_STATES:
            if grace:
                return
            grace = True
        await anyio.sleep(poll_s)
