"""A run's events as Server-Sent Events: replay the record, then follow it until the run ends.

The record (Postgres/SQLite `events`) is the source, not the bus: a client that
reconnects with `Last-Event-ID` gets exactly what it missed. Each message has
`id` = the event id, `event` = its kind, `data` = the event as JSON (`EventOut`).
The stream ends once a terminal event (completed, failed, cancelled, stopped) is the
latest of the run, or once the run is in a terminal state and every event was sent.

Following a live run, the bus says when to read the record again: whoever records an
event also publishes it (`service.pipeline.runtime.emit`), and the stream, subscribed before its
first read, reads the record as soon as an event newer than what it sent is announced.
The bus is fire and forget, so the record is also read every FALLBACK_POLLS polls
(`poll_s` each) for what it missed; without a bus (or when it fails) every poll.
benchmarks/README.md "Live events" measures both.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Literal

import anyio
from anyio import to_thread
from sse_starlette import ServerSentEvent

from service.bus import Bus, EventStream
from service.runs.schemas import EventOut
from service.storage import Repository, RunStatus
from service.storage import models as orm

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled", "stopped"})
TERMINAL_STATES = frozenset(
    {RunStatus.completed, RunStatus.failed, RunStatus.cancelled, RunStatus.stopped}
)
BATCH = 500  # events read per query while replaying
FALLBACK_POLLS = 25  # with a bus: the record is also read every this many `poll_s`

log = logging.getLogger(__name__)


def to_message(event: orm.Event) -> ServerSentEvent:
    data = EventOut.model_validate(event, from_attributes=True)
    return ServerSentEvent(data=data.model_dump_json(), id=str(event.id), event=event.kind)


def poll(
    repo: Repository, run_id: int, after: int, with_status: bool = True
) -> tuple[RunStatus | None, list[orm.Event]]:
    """The run's state (unless not `with_status`), then its events after `after` (one trip
    to a worker thread)."""
    status = repo.run_status(run_id) if with_status else None
    return status, repo.events_after(run_id, after, BATCH)


async def follow_run(
    repo: Repository,
    run_id: int,
    after: int,
    poll_s: float,
    bus: Bus | None = None,
    seen: Callable[[int, int], None] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of `run_id` with an id above `after`, oldest first, then new ones as
    they are recorded until the run ends: read when `bus` announces one, and every
    FALLBACK_POLLS * `poll_s` seconds besides; without a bus every `poll_s` seconds.
    `seen(run_id, event_id)` is told of each event before it is sent."""
    announced = await subscribe(bus, run_id)
    try:
        async for event_id, message in _follow(repo, run_id, after, poll_s, announced):
            if seen is not None:
                seen(run_id, event_id)
            yield message
    finally:
        if announced is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await announced.aclose()
                except Exception:  # noqa: BLE001 - a broken subscription ends with the stream
                    log.debug("run %d: closing its live events failed", run_id, exc_info=True)


async def subscribe(bus: Bus | None, run_id: int) -> EventStream | None:
    """The run's live events, subscribed before the record is first read (so no event
    falls between the two); None without a bus or when it cannot subscribe."""
    if bus is None:
        return None
    announced = bus.subscribe_events(str(run_id))
    try:
        await announced.__aenter__()
    except Exception:  # noqa: BLE001 - the record has every event; polling it is enough
        log.warning(
            "run %d: no live events from the bus; polling the record", run_id, exc_info=True
        )
        return None
    return announced


async def _follow(
    repo: Repository, run_id: int, after: int, poll_s: float, announced: EventStream | None
) -> AsyncIterator[tuple[int, ServerSentEvent]]:
    last_kind: str | None = None
    grace = False
    with_status = True
    while True:
        # The status is read before the events: a run seen terminal has written its last
        # event already, or writes it within one more poll (the grace round). An announced
        # event is in the record already: reading the events alone finds it.
        status, events = await to_thread.run_sync(poll, repo, run_id, after, with_status)
        for event in events:
            yield event.id, to_message(event)
            after, last_kind = event.id, event.kind
        if len(events) == BATCH:
            continue
        if last_kind in TERMINAL_EVENTS:
            return
        if status in TERMINAL_STATES:
            if grace:
                return
            grace = True
        if grace or announced is None:
            await anyio.sleep(poll_s)
            continue
        wake = await next_wake(announced, after, FALLBACK_POLLS * poll_s)
        with_status = wake != "announced"
        if wake == "failed":
            announced = None  # poll from now on


async def next_wake(
    announced: EventStream, after: int, timeout_s: float
) -> Literal["announced", "timeout", "failed"]:
    """Wait up to `timeout_s` for the announcement of an event with an id above `after`
    (older ones were read from the record already): `announced`, `timeout`, or `failed`
    when the bus failed or closed."""
    with anyio.move_on_after(timeout_s):
        try:
            async for event in announced:
                if event.get("id", after + 1) > after:
                    return "announced"
        except Exception:  # noqa: BLE001 - the record still has every event
            log.warning("live events failed; polling the record", exc_info=True)
        return "failed"
    return "timeout"
