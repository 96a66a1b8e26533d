"""Answers to run reads, kept until the run changes.

A dashboard asks for the same few pages of a run over and over (the run, its metrics,
the newest trajectories), and every answer costs several queries plus validating the
run's configuration. Each answer is kept with the version of the record it was built
from: the newest event id of the run (for the run list: of every run, with the newest
run id). Everything a reader can see of a run changes together with an event that
follows it (`started`, `batch`, `step`, `eval`, `completed`, `failed`, `stopped`, ...),
so an unchanged version means an unchanged answer, and finding the version is one
index-only query.

An answer may be at most as old as the event that follows a change: the moment
between writing the change and recording its event.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable


class ReadCache:
    """A bounded LRU of `key -> (version, body)`, safe across the threadpool's threads.
    `max_entries=0` keeps nothing (every read is built)."""

    def __init__(self, max_entries: int = 512, max_body_bytes: int = 1 << 20) -> None:
        self.max_entries, self.max_body_bytes = max_entries, max_body_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[Hashable, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: Hashable, build: Callable[[], bytes]) -> bytes:
        """The body kept for `key` at `version`, or `build()` (kept when small enough).
        Whatever `build` raises goes to the caller and nothing is kept."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
        body = build()
        if self.max_entries and len(body) <= self.max_body_bytes:
            with self._lock:
                self._entries[key] = (version, body)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return body

    def __len__(self) -> int:
        return len(self._entries)
