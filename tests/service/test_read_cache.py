"""ReadCache (an answer per key and version, least recently used first out) and Versions
(the record's version per run, remembered for the freshness window)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from service.runs.cache import ReadCache, Versions


@dataclass
class Answer:
    body: bytes


def test_an_answer_is_kept_for_its_version_only():
    cache = ReadCache()
    assert cache.get("run", (1, 5)) is None
    cache.put("run", (1, 5), Answer(b"a"))
    assert cache.get("run", (1, 5)) == Answer(b"a")
    assert cache.get("run", (1, 6)) is None
    cache.put("run", (1, 6), Answer(b"c"))
    assert cache.get("run", (1, 6)) == Answer(b"c")
    assert cache.get("run", (1, 5)) is None  # one version per key: the newest put
    assert (cache.hits, cache.misses) == (2, 3)


def test_the_least_recently_read_answer_goes_first():
    cache = ReadCache(max_entries=2)
    cache.put("a", 1, Answer(b"a"))
    cache.put("b", 1, Answer(b"b"))
    cache.get("a", 1)  # read: now the newest
    cache.put("c", 1, Answer(b"c"))  # one too many: "b" goes
    assert cache.get("a", 1) == Answer(b"a")
    assert cache.get("b", 1) is None
    assert len(cache) == 2


def test_answers_are_kept_up_to_a_total_size():
    cache = ReadCache(max_total_bytes=10)
    for key in "abc":
        cache.put(key, 1, Answer(b"four"))
    assert cache.get("a", 1) is None  # 12 bytes: the oldest went
    assert cache.get("c", 1) == Answer(b"four")
    cache.put("c", 2, Answer(b"sixsix"))  # replaced, not added
    assert [cache.get(key, v) for key, v in (("b", 1), ("c", 2))] == [
        Answer(b"four"),
        Answer(b"sixsix"),
    ]


def test_large_answers_and_a_cache_of_size_zero_keep_nothing():
    big = ReadCache(max_body_bytes=3)
    big.put("k", 1, Answer(b"four"))
    assert len(big) == 0
    off = ReadCache(max_entries=0)
    off.put("k", 1, Answer(b"x"))
    assert off.get("k", 1) is None


class Record:
    """A stand-in for `Repository.read_version`: the version it returns is set by the
    test, and each lookup can be held until the test lets it go."""

    def __init__(self) -> None:
        self.version, self.calls = (1, 1), 0
        self.release = threading.Event()
        self.release.set()

    def read_version(self, run_id: int | None) -> tuple[int, int]:
        self.calls += 1
        version = self.version
        self.release.wait(5)
        return version


def test_a_version_is_remembered_for_the_freshness_window_then_looked_up_again():
    record = Record()
    versions = Versions(record.read_version, freshness_s=0.2)

    async def scenario() -> None:
        assert await versions.get(7) == (1, 1)
        record.version = (1, 2)
        assert await versions.get(7) == (1, 1)  # within the window: no lookup
        assert record.calls == 1
        await asyncio.sleep(0.25)
        assert await versions.get(7) == (1, 2)
        assert record.calls == 2

    asyncio.run(scenario())


def test_freshness_zero_looks_up_every_read_and_concurrent_reads_share_one_lookup():
    record = Record()
    versions = Versions(record.read_version, freshness_s=0)

    async def scenario() -> None:
        await versions.get(7)
        await versions.get(7)
        assert record.calls == 2
        record.release.clear()
        readers = [asyncio.ensure_future(versions.get(7)) for _ in range(10)]
        await asyncio.sleep(0.05)
        record.release.set()
        assert await asyncio.gather(*readers) == [(1, 1)] * 10
        assert record.calls == 3

    asyncio.run(scenario())


def test_forget_drops_the_run_and_the_run_list_and_a_lookup_that_began_before_it():
    record = Record()
    versions = Versions(record.read_version, freshness_s=60)

    async def scenario() -> None:
        for run in (None, 1, 2):
            await versions.get(run)
        versions.forget(1)
        record.version = (1, 2)
        assert await versions.get(2) == (1, 1)  # another run's: still remembered
        assert await versions.get(1) == (1, 2)
        assert await versions.get(None) == (1, 2)
        # a lookup that began before a change and a forget must not be remembered
        record.version = (1, 3)
        versions.forget()
        record.release.clear()
        early = asyncio.ensure_future(versions.get(2))
        await asyncio.sleep(0.05)
        record.version = (1, 4)
        versions.forget(2)
        record.release.set()
        assert await early == (1, 3)
        assert await versions.get(2) == (1, 4)

    asyncio.run(scenario())


def test_an_event_newer_than_the_remembered_version_forgets_it():
    record = Record()
    versions = Versions(record.read_version, freshness_s=60)

    async def scenario() -> None:
        record.version = (3, 10)
        await versions.get(3)
        versions.saw_event(3, 10)  # already in the remembered version
        record.version = (3, 11)
        assert await versions.get(3) == (3, 10)
        versions.saw_event(3, 11)
        assert await versions.get(3) == (3, 11)

    asyncio.run(scenario())


def test_versions_of_at_most_max_runs_are_remembered():
    record = Record()
    versions = Versions(record.read_version, freshness_s=60)
    versions.max_runs = 3

    async def scenario() -> None:
        for run in range(1, 11):
            await versions.get(run)
        assert len(versions._known) <= 3
        calls = record.calls
        await versions.get(10)  # the newest is still remembered
        assert record.calls == calls

    asyncio.run(scenario())
