"""The bus on Redis (distributed mode): streams, consumer groups, pub/sub, locks.

Keys (all under `prefix`):
    {prefix}:run:{run_id}:batches    stream; fields batch_id, payload; group(s) of workers
    {prefix}:run:{run_id}:feedback   stream, XADD MAXLEN ~ feedback_maxlen; field data (JSON)
    {prefix}:run:{run_id}:events     pub/sub channel; JSON messages
    {prefix}:worker:{worker_id}      heartbeat key with a TTL
    {prefix}:workers                 set of worker ids that ever beat (pruned on read)
    {prefix}:lock:{name}             redis-py Lock
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import redis.asyncio as redis
from redis.exceptions import LockError, ResponseError

from service.bus.base import Delivery, LockLost, LockNotAcquired, StreamLost

log = logging.getLogger(__name__)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_lost(error: ResponseError) -> bool:
    """NOGROUP: key or group missing; UNBLOCKED: the key was deleted under a blocked read."""
    text = str(error)
    return "NOGROUP" in text or "no longer exists" in text


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """XREADGROUP's RESP2 reply ([[stream, [(id, fields), ...]], ...]) as (id, fields) pairs."""
    return [entry for _stream, entries in reply or [] for entry in entries]


class RedisBus:
    def __init__(self, url: str, prefix: str = "opsd", feedback_maxlen: int = 1000) -> None:
        # socket_timeout: a safety net, longer than any blocking read we issue, so that a
        # connection left waiting for a reply that never comes fails instead of hanging.
        self._redis = redis.Redis.from_url(
            url, decode_responses=False, protocol=2, socket_timeout=60
        )
        self._prefix = prefix
        self._feedback_maxlen = feedback_maxlen

    def _run_key(self, run_id: str, what: str) -> str:
        return f"{self._prefix}:run:{run_id}:{what}"

    # --- batch stream ---
    async def publish_batch(self, run_id: str, batch_id: str, payload: bytes) -> str:
        key = self._run_key(run_id, "batches")
        return _str(await self._redis.xadd(key, {"batch_id": batch_id, "payload": payload}))

    async def ensure_group(self, run_id: str, group: str) -> bool:
        key = self._run_key(run_id, "batches")
        try:
            await self._redis.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" in str(e):
                return False
            raise
        return True

    async def _lost(self, run_id: str, group: str, error: ResponseError) -> StreamLost:
        created = await self.ensure_group(run_id, group)
        # The caller knows whether that matters (a finished run's stream is deleted on
        # purpose, under a worker's blocked read), so it logs, not the bus.
        log.debug(
            "run %s: consumer group %s was gone (%s); recreated=%s", run_id, group, error, created
        )
        return StreamLost(run_id, group)

    async def read_batches(
        self, run_id: str, group: str, consumer: str, count: int = 1, block_ms: int = 0
    ) -> list[Delivery]:
        key = self._run_key(run_id, "batches")
        try:
            reply = await self._redis.xreadgroup(
                group, consumer, {key: ">"}, count=count, block=block_ms if block_ms > 0 else None
            )
        except ResponseError as e:
            if _is_lost(e):
                raise await self._lost(run_id, group, e) from e
            raise
        return [
            Delivery(_str(message_id), _str(fields[b"batch_id"]), fields[b"payload"], 1)
            for message_id, fields in _entries(reply)
            if fields
        ]

    async def ack(self, run_id: str, group: str, message_id: str, *, delete: bool = True) -> bool:
        key = self._run_key(run_id, "batches")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(key, group, message_id)
            if delete:
                pipe.xdel(key, message_id)
            acked, *_ = await pipe.execute()
        return bool(acked)

    async def claim_stale(
        self, run_id: str, group: str, consumer: str, min_idle_ms: int, count: int = 1
    ) -> list[Delivery]:
        key = self._run_key(run_id, "batches")
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        try:
            while len(claimed) < count:
                cursor, entries, *_deleted = await self._redis.xautoclaim(
                    key, group, consumer, min_idle_ms, start_id=cursor, count=count - len(claimed)
                )
                claimed += [(message_id, fields) for message_id, fields in entries if fields]
                if _str(cursor) == "0-0":
                    break
        except ResponseError as e:
            if _is_lost(e):
                raise await self._lost(run_id, group, e) from e
            raise
        if not claimed:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for message_id, _ in claimed:
                pipe.xpending_range(key, group, message_id, message_id, 1, consumer)
            pending = await pipe.execute()
        return [
            Delivery(
                _str(message_id),
                _str(fields[b"batch_id"]),
                fields[b"payload"],
                info[0]["times_delivered"] if info else 1,
            )
            for (message_id, fields), info in zip(claimed, pending, strict=True)
        ]

    async def delete_run(self, run_id: str) -> None:
        await self._redis.delete(
            self._run_key(run_id, "batches"), self._run_key(run_id, "feedback")
        )

    # --- events and live feedback ---
    async def publish_event(self, run_id: str, event: dict[str, Any]) -> None:
        await self._redis.publish(self._run_key(run_id, "events"), json.dumps(event))

    def subscribe_events(self, run_id: str) -> _RedisEvents:
        return _RedisEvents(self._redis, self._run_key(run_id, "events"))

    async def publish_feedback(self, run_id: str, items: Sequence[dict[str, Any]]) -> list[str]:
        key = self._run_key(run_id, "feedback")
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.xadd(
                    key, {"data": json.dumps(item)}, maxlen=self._feedback_maxlen, approximate=True
                )
            return [_str(entry_id) for entry_id in await pipe.execute()]

    async def recent_feedback(self, run_id: str, count: int) -> list[dict[str, Any]]:
        entries = await self._redis.xrevrange(self._run_key(run_id, "feedback"), count=count)
        return [json.loads(fields[b"data"]) for _, fields in reversed(entries)]

    # --- workers and locks ---
    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self._prefix}:worker:{worker_id}", b"1", px=max(1, int(ttl_s * 1000)))
            pipe.sadd(f"{self._prefix}:workers", worker_id)
            await pipe.execute()

    async def live_workers(self) -> list[str]:
        index = f"{self._prefix}:workers"
        workers = sorted(_str(w) for w in await self._redis.smembers(index))
        if not workers:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.exists(f"{self._prefix}:worker:{worker}")
            alive = await pipe.execute()
        dead = [w for w, a in zip(workers, alive, strict=True) if not a]
        if dead:
            await self._redis.srem(index, *dead)
        return [w for w, a in zip(workers, alive, strict=True) if a]

    @asynccontextmanager
    async def lock(self, name: str, ttl_s: float, *, wait_s: float | None = None):
        held = self._redis.lock(
            f"{self._prefix}:lock:{name}", timeout=ttl_s, blocking_timeout=wait_s, sleep=0.02
        )
        if not await held.acquire():
            raise LockNotAcquired(f"lock {name!r} not acquired within {wait_s}s")
        renewing = asyncio.create_task(self._renew(held, name, ttl_s), name=f"renew {name}")
        try:
            yield
        except BaseException:
            # The body's own error (a cancellation, say) goes on; an expired lock must not
            # replace it (a swallowed CancelledError would leave a task that cannot stop).
            await _stop(renewing)
            with suppress(LockError):
                await held.release()
            raise
        await _stop(renewing)
        try:
            await held.release()
        except LockError as e:
            raise LockLost(f"lock {name!r} expired before release (ttl {ttl_s}s)") from e

    @staticmethod
    async def _renew(held, name: str, ttl_s: float) -> None:
        """Reset the lock's ttl every third of it while the body runs, so that it expires
        `ttl_s` after its holder stops renewing (dies), however long the body takes."""
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                await held.reacquire()
            except LockError:
                log.warning("lock %r was lost while held (expired or taken)", name)
                return

    # --- lifecycle ---
    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()


class _RedisEvents:
    """A pub/sub subscription to one run's events channel."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pubsub: Any = None

    async def _subscribe(self) -> None:
        if self._pubsub is not None:
            return
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._channel)
        # Wait for the server's confirmation: from here on no event is missed.
        while True:
            message = await self._pubsub.get_message(timeout=5.0)
            if message is not None and message["type"] == "subscribe":
                return

    async def __aenter__(self) -> _RedisEvents:
        await self._subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self._subscribe()
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is not None and message["type"] == "message":
                return json.loads(message["data"])

    async def aclose(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.unsubscribe()
            await pubsub.aclose()


async def _stop(task: asyncio.Task) -> None:
    """Cancel `task` and wait for it to end; a cancellation of the caller meanwhile still
    propagates (`asyncio.wait` does not raise the task's own CancelledError)."""
    task.cancel()
    await asyncio.wait({task})
