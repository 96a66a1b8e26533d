"""The bus in one process (embedded mode): the same semantics as RedisBus, in memory.

Streams keep Redis-style ids ("<ms>-<seq>"), consumer groups keep a last-delivered id
and a pending-entries list (consumer, delivery count, last delivery time), so
at-least-once delivery, `claim_stale` and `StreamLost` behave as on Redis.

State sits behind one `threading.Lock`, and waiters are woken with
`loop.call_soon_threadsafe`, so an orchestrator and a trainer running event loops in
different threads of the same process can share one MemoryBus. It cannot be shared
across processes (use Redis for that). Locks are in-process: `ttl_s` is accepted and
ignored (a holder cannot die without taking the whole process, and the bus, with it).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from service.bus.base import Delivery, LockNotAcquired, StreamLost

EVENT_QUEUE_SIZE = 1000  # a subscriber this far behind loses its oldest events


def _copy(document: dict[str, Any]) -> dict[str, Any]:
    """What a Redis round trip does to a dict: JSON in, JSON out (and a fresh object)."""
    return json.loads(json.dumps(document))


@dataclass
class _Pending:
    consumer: str
    delivery_count: int
    delivered_at: float  # time.monotonic()


@dataclass
class _Group:
    last_delivered: tuple[int, int] = (0, 0)
    pending: dict[tuple[int, int], _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: dict[tuple[int, int], tuple[str, bytes]] = field(default_factory=dict)  # id order
    groups: dict[str, _Group] = field(default_factory=dict)
    last_id: tuple[int, int] = (0, 0)

    def next_id(self) -> tuple[int, int]:
        ms, seq = int(time.time() * 1000), 0
        if ms <= self.last_id[0]:
            ms, seq = self.last_id[0], self.last_id[1] + 1
        self.last_id = (ms, seq)
        return self.last_id


def _format(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _parse(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryBus:
    def __init__(self, prefix: str = "opsd", feedback_maxlen: int = 1000) -> None:
        self._prefix = prefix  # kept for symmetry with RedisBus; nothing is shared by name
        self._feedback_maxlen = feedback_maxlen
        self._mutex = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._feedback: dict[str, deque[tuple[str, dict[str, Any]]]] = {}
        self._feedback_ids: dict[str, _Stream] = {}
        self._subscribers: dict[str, set[_MemoryEvents]] = {}
        self._heartbeats: dict[str, float] = {}  # worker id -> monotonic deadline
        self._locks: dict[str, threading.Lock] = {}

    # --- batch stream ---
    async def publish_batch(self, run_id: str, batch_id: str, payload: bytes) -> str:
        with self._mutex:
            stream = self._streams.setdefault(run_id, _Stream())
            entry_id = stream.next_id()
            stream.entries[entry_id] = (batch_id, bytes(payload))
            waiters = self._waiters.pop(run_id, [])
        for loop, waiter in waiters:
            _wake(loop, waiter)
        return _format(entry_id)

    async def ensure_group(self, run_id: str, group: str) -> bool:
        with self._mutex:
            return self._ensure_group(run_id, group)

    def _ensure_group(self, run_id: str, group: str) -> bool:
        stream = self._streams.setdefault(run_id, _Stream())
        if group in stream.groups:
            return False
        stream.groups[group] = _Group()
        return True

    def _group(self, run_id: str, group: str) -> tuple[_Stream, _Group]:
        """The group, or recreate it and raise StreamLost (call with the mutex held)."""
        stream = self._streams.get(run_id)
        if stream is None or group not in stream.groups:
            self._ensure_group(run_id, group)
            raise StreamLost(run_id, group)
        return stream, stream.groups[group]

    async def read_batches(
        self, run_id: str, group: str, consumer: str, count: int = 1, block_ms: int = 0
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        loop = asyncio.get_running_loop()
        while True:
            with self._mutex:
                stream, state = self._group(run_id, group)
                deliveries = []
                for entry_id, (batch_id, payload) in stream.entries.items():
                    if len(deliveries) == count:
                        break
                    if entry_id <= state.last_delivered:
                        continue
                    state.last_delivered = entry_id
                    state.pending[entry_id] = _Pending(consumer, 1, time.monotonic())
                    deliveries.append(Delivery(_format(entry_id), batch_id, payload, 1))
                remaining = deadline - time.monotonic()
                if deliveries or remaining <= 0:
                    return deliveries
                waiter = loop.create_future()
                self._waiters.setdefault(run_id, []).append((loop, waiter))
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                with self._mutex:
                    waiting = self._waiters.get(run_id, [])
                    if (loop, waiter) in waiting:
                        waiting.remove((loop, waiter))

    async def ack(self, run_id: str, group: str, message_id: str, *, delete: bool = True) -> bool:
        entry_id = _parse(message_id)
        with self._mutex:
            stream = self._streams.get(run_id)
            state = stream.groups.get(group) if stream else None
            acked = state is not None and state.pending.pop(entry_id, None) is not None
            if delete and stream is not None:
                stream.entries.pop(entry_id, None)
        return acked

    async def claim_stale(
        self, run_id: str, group: str, consumer: str, min_idle_ms: int, count: int = 1
    ) -> list[Delivery]:
        now = time.monotonic()
        with self._mutex:
            stream, state = self._group(run_id, group)
            deliveries = []
            for entry_id in sorted(state.pending):
                if len(deliveries) == count:
                    break
                pending = state.pending[entry_id]
                if (now - pending.delivered_at) * 1000 < min_idle_ms:
                    continue
                if entry_id not in stream.entries:  # deleted while pending: Redis drops it too
                    del state.pending[entry_id]
                    continue
                pending.consumer, pending.delivered_at = consumer, now
                pending.delivery_count += 1
                batch_id, payload = stream.entries[entry_id]
                deliveries.append(
                    Delivery(_format(entry_id), batch_id, payload, pending.delivery_count)
                )
            return deliveries

    async def delete_run(self, run_id: str) -> None:
        with self._mutex:
            self._streams.pop(run_id, None)
            self._feedback.pop(run_id, None)
            self._feedback_ids.pop(run_id, None)

    # --- events and live feedback ---
    async def publish_event(self, run_id: str, event: dict[str, Any]) -> None:
        event = _copy(event)
        with self._mutex:
            subscribers = list(self._subscribers.get(run_id, ()))
        for subscriber in subscribers:
            subscriber.push(event)

    def subscribe_events(self, run_id: str) -> _MemoryEvents:
        return _MemoryEvents(self, run_id)

    async def publish_feedback(self, run_id: str, items: Sequence[dict[str, Any]]) -> list[str]:
        copies = [_copy(item) for item in items]
        with self._mutex:
            ids = self._feedback_ids.setdefault(run_id, _Stream())
            entries = self._feedback.setdefault(run_id, deque(maxlen=self._feedback_maxlen))
            entry_ids = [_format(ids.next_id()) for _ in copies]
            entries.extend(zip(entry_ids, copies, strict=True))
        return entry_ids

    async def recent_feedback(self, run_id: str, count: int) -> list[dict[str, Any]]:
        with self._mutex:
            entries = list(self._feedback.get(run_id, ()))
        return [_copy(item) for _, item in entries[-count:]] if count > 0 else []

    # --- workers and locks ---
    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        with self._mutex:
            self._heartbeats[worker_id] = time.monotonic() + ttl_s

    async def live_workers(self) -> list[str]:
        now = time.monotonic()
        with self._mutex:
            for worker in [w for w, deadline in self._heartbeats.items() if deadline <= now]:
                del self._heartbeats[worker]
            return sorted(self._heartbeats)

    @asynccontextmanager
    async def lock(self, name: str, ttl_s: float, *, wait_s: float | None = None):
        with self._mutex:
            held = self._locks.setdefault(name, threading.Lock())
        deadline = None if wait_s is None else time.monotonic() + wait_s
        # Poll rather than asyncio.Lock: holders may run on other threads' event loops.
        while not held.acquire(blocking=False):
            if deadline is not None and time.monotonic() >= deadline:
                raise LockNotAcquired(f"lock {name!r} not acquired within {wait_s}s")
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            held.release()

    # --- lifecycle ---
    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        with self._mutex:
            subscribers = [s for run in self._subscribers.values() for s in run]
        for subscriber in subscribers:
            await subscriber.aclose()


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future) -> None:
    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    with suppress(RuntimeError):  # that loop is closed; nobody is waiting any more
        loop.call_soon_threadsafe(wake)


_CLOSED = object()


class _MemoryEvents:
    """One subscriber's queue of a run's events (bounded; drops the oldest when full)."""

    def __init__(self, bus: MemoryBus, run_id: str) -> None:
        self._bus = bus
        self._run_id = run_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Any] | None = None

    def _subscribe(self) -> None:
        if self._queue is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        with self._bus._mutex:
            self._bus._subscribers.setdefault(self._run_id, set()).add(self)

    def push(self, item: Any) -> None:
        """Called from any thread."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return

        def put() -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)

        with suppress(RuntimeError):
            loop.call_soon_threadsafe(put)

    async def __aenter__(self) -> _MemoryEvents:
        self._subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        self._subscribe()
        assert self._queue is not None
        item = await self._queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        with self._bus._mutex:
            self._bus._subscribers.get(self._run_id, set()).discard(self)
        self.push(_CLOSED)
