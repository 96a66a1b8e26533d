"""Answers to run reads, kept until the run changes, and served before routing.

A dashboard asks for the same few pages of a run over and over (the run list, the run,
its metrics, its trajectories), and building an answer costs queries, validation and
the framework's own routing. `CachedReads` is a small ASGI layer in front of the routes
that answers these GETs from `ReadCache` while the record's version is unchanged: a
kept answer is sent as stored bytes, without a route, a thread or a query.

The version is that of the run (for the run list: of every run): `(newest run id,
newest event id)`. Everything a reader can see of a run changes together with an event
that follows it (`started`, `batch`, `step`, `eval`, `completed`, `failed`, `stopped`,
...), so an unchanged version means an unchanged answer, and finding it is one
index-only query (`Repository.read_version`).

`Versions` remembers a version it looked up for `Settings.read_freshness_s` (default
0.1 s), so a read may be up to that old; at most one lookup per run is in flight. What
this API process does itself shows at once: a request that changes something (POST,
PUT, PATCH, DELETE) forgets every remembered version, and an event this process sends
down an event stream forgets its run's, so a client that reacts to an event reads what
the event announced. A change made elsewhere (the worker, another replica) shows within
the freshness window. `read_freshness_s = 0` looks the version up on every read.

Some answers never change: a trajectory is written once, with its token scores, and a
run's trajectories are numbered in the order they are written, so a page of them that
has a next page is complete. Their routes mark them `Cache-Control: immutable`, and they
are kept whatever the version (`FINAL`).

An answer may also be as old as the event that follows a change: the moment between
writing the change and recording its event.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

READ_METHODS = frozenset({"GET", "HEAD"})
FINAL = "final"  # the version of an answer that never changes: it matches every version
# The kept reads and whose version decides them: group 1 is the run id (None: every run).
CACHED_PATHS = re.compile(
    r"/v1/runs(?:/([0-9]{1,10})(?:/metrics|/checkpoints|/trajectories(?:/[0-9]{1,19})?)?)?"
)


class ReadCache:
    """A bounded LRU of `key -> (version, answer)`; an answer is anything with a `body`
    (bytes), and one kept at version `FINAL` matches every version. At most
    `max_entries` answers of at most `max_body_bytes` each and `max_total_bytes` in all.
    Used from the event loop only. `max_entries=0` keeps nothing."""

    def __init__(
        self,
        max_entries: int = 512,
        max_body_bytes: int = 1 << 20,
        max_total_bytes: int = 64 << 20,
    ) -> None:
        self.max_entries, self.max_body_bytes = max_entries, max_body_bytes
        self.max_total_bytes = max_total_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, version: Hashable) -> Any | None:
        """The answer kept for `key` at `version`, or None."""
        entry = self._entries.get(key)
        if entry is not None and (entry[0] == version or entry[0] == FINAL):
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: Hashable, version: Hashable, answer: Any) -> None:
        """Keep `answer` for `key` at `version` when it is small enough."""
        if not self.max_entries or len(answer.body) > self.max_body_bytes:
            return
        if (old := self._entries.pop(key, None)) is not None:
            self._bytes -= len(old[1].body)
        self._entries[key] = (version, answer)
        self._bytes += len(answer.body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_total_bytes:
            self._bytes -= len(self._entries.popitem(last=False)[1][1].body)

    def __len__(self) -> int:
        return len(self._entries)


class Versions:
    """The record's version per run (None: of every run), each remembered for
    `freshness_s` seconds after its lookup. `lookup(run_id)` blocks (a query): it runs
    in a worker thread, one per run at a time, and what it returns is kept only when no
    `forget` came in the meantime."""

    def __init__(self, lookup: Callable[[int | None], tuple[int, int]], freshness_s: float) -> None:
        self.lookup, self.freshness_s = lookup, freshness_s
        self.max_runs = 4096  # versions remembered at most
        self.lookups = 0
        self._known: dict[int | None, tuple[float, tuple[int, int]]] = {}
        self._pending: dict[int | None, asyncio.Future] = {}
        self._generation = 0  # moves on with every forget

    async def get(self, run_id: int | None) -> tuple[int, int]:
        known = self._known.get(run_id)
        if known is not None and time.monotonic() - known[0] < self.freshness_s:
            return known[1]
        pending = self._pending.get(run_id)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(run_id))
            self._pending[run_id] = pending
            pending.add_done_callback(lambda done: self._done(run_id, done))
        return await asyncio.shield(pending)

    async def _look_up(self, run_id: int | None) -> tuple[int, int]:
        generation, began = self._generation, time.monotonic()
        self.lookups += 1
        version = await to_thread.run_sync(self.lookup, run_id)
        if generation == self._generation:
            if len(self._known) >= self.max_runs:  # ids a client made up, say
                self._known.clear()
            self._known[run_id] = (began, version)
        return version

    def _done(self, run_id: int | None, lookup: asyncio.Future) -> None:
        if self._pending.get(run_id) is lookup:
            del self._pending[run_id]

    def forget(self, run_id: int | None = None) -> None:
        """Look up again before the next read of `run_id` and of the run list (None:
        of every run)."""
        self._generation += 1
        self._pending.clear()  # a lookup begun before this may have missed the change
        if run_id is None:
            self._known.clear()
        else:
            self._known.pop(run_id, None)
            self._known.pop(None, None)

    def saw_event(self, run_id: int, event_id: int) -> None:
        """An event of `run_id` this process has read from the record: forget an older
        version of the run."""
        known = self._known.get(run_id)
        if known is not None and known[1][1] < event_id:
            self.forget(run_id)


@dataclass(frozen=True)
class Kept:
    """A route's whole answer, as sent."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: Any  # the matched route, for the request metrics

    @property
    def final(self) -> bool:
        """The route said this answer never changes (`Cache-Control: immutable`)."""
        return any(
            name == b"cache-control" and b"immutable" in value for name, value in self.headers
        )


class CachedReads:
    """ASGI middleware: answers a GET of a run read (`CACHED_PATHS`) from `ReadCache`
    while its version is unchanged (or for good, when the route marked it immutable);
    otherwise lets the route answer and keeps a 200. The key is the path and the query
    string as sent; concurrent misses of one key and version share one answer. Requests
    that may change something forget the remembered versions. The app's `Services`
    (service.api.deps) provide the cache and the versions."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._building: dict[tuple, asyncio.Future] = {}  # (key, version) -> Kept | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        if scope["method"] not in READ_METHODS:
            await self._answer_and_forget(scope, receive, send, services.versions)
            return
        match = CACHED_PATHS.fullmatch(scope["path"])
        if match is None or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        run_id = int(match[1]) if match[1] else None
        try:
            version = await services.versions.get(run_id)
        except Exception:  # noqa: BLE001 - the route answers (and reports) a broken record
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope["query_string"])
        kept = services.reads.get(key, version)
        if kept is None and (building := self._building.get((key, version))) is not None:
            kept = await asyncio.shield(building)  # None: it was not a 200
        if kept is None:
            await self._answer_and_keep(scope, receive, send, services.reads, key, version)
            return
        scope["route"] = kept.route
        await send({"type": "http.response.start", "status": 200, "headers": kept.headers})
        await send({"type": "http.response.body", "body": kept.body})

    async def _answer_and_forget(self, scope, receive, send, versions: Versions) -> None:
        """A request that may change something: what it changed is done once its answer
        starts, so the versions are forgotten then (and again at its end)."""

        async def forgetting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                versions.forget()
            await send(message)

        try:
            await self.app(scope, receive, forgetting_send)
        finally:
            versions.forget()

    async def _answer_and_keep(self, scope, receive, send, reads, key, version) -> None:
        building = asyncio.get_running_loop().create_future()
        self._building[key, version] = building
        start: Message | None = None
        chunks: list[bytes] = []

        async def keeping_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body" and start["status"] == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    kept = Kept(list(start["headers"]), b"".join(chunks), scope.get("route"))
                    reads.put(key, FINAL if kept.final else version, kept)
                    building.set_result(kept)
            await send(message)

        try:
            await self.app(scope, receive, keeping_send)
        finally:
            del self._building[key, version]
            if not building.done():
                building.set_result(None)
