"""ReadCache: an answer per key and version, least recently used first out."""

from __future__ import annotations

import pytest

from service.runs.cache import ReadCache


def test_an_answer_is_kept_for_its_version_only():
    cache, built = ReadCache(), []

    def build(body: bytes):
        return lambda: built.append(body) or body

    assert cache.get("run", (1, 5), build(b"a")) == b"a"
    assert cache.get("run", (1, 5), build(b"b")) == b"a"
    assert cache.get("run", (1, 6), build(b"c")) == b"c"
    assert built == [b"a", b"c"]
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_least_recently_read_answer_goes_first():
    cache = ReadCache(max_entries=2)
    cache.get("a", 1, lambda: b"a")
    cache.get("b", 1, lambda: b"b")
    cache.get("a", 1, lambda: b"not built")  # read: now the newest
    cache.get("c", 1, lambda: b"c")  # one too many: "b" goes
    assert cache.get("a", 1, lambda: b"rebuilt") == b"a"
    assert cache.get("b", 1, lambda: b"rebuilt") == b"rebuilt"
    assert len(cache) == 2


def test_large_answers_failures_and_a_cache_of_size_zero_keep_nothing():
    assert len(big := ReadCache(max_body_bytes=3)) == 0
    big.get("k", 1, lambda: b"four")
    assert len(big) == 0
    off = ReadCache(max_entries=0)
    off.get("k", 1, lambda: b"x")
    assert off.get("k", 1, lambda: b"y") == b"y"

    def failing() -> bytes:
        raise LookupError("no such run")

    cache = ReadCache()
    with pytest.raises(LookupError):
        cache.get("k", 1, failing)
    assert len(cache) == 0
