"""Each bus test runs against MemoryBus and a real Redis, under its own random key prefix."""

import os
import uuid

import pytest
import redis.asyncio as redis

from service.bus import make_bus

REDIS_URL = os.environ.get("OPSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def delete_prefix(prefix: str) -> None:
    """Delete every key under `prefix:` (what a FLUSH does to this test's keys)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"opsd-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
async def bus(request, prefix):
    if request.param == "memory":
        bus = make_bus(None, prefix=prefix, feedback_maxlen=20)
        yield bus
        await bus.aclose()
        return
    bus = make_bus(REDIS_URL, prefix=prefix, feedback_maxlen=20)
    if not await bus.ping():
        await bus.aclose()
        pytest.fail(f"no Redis at {REDIS_URL}: the tests need a real one (set OPSD_TEST_REDIS_URL)")
    try:
        yield bus
    finally:
        await bus.aclose()
        await delete_prefix(prefix)
