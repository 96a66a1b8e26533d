"""The Bus contract, run against both implementations (see conftest.py)."""

import asyncio

import pytest

from service.bus import LockNotAcquired, StreamLost
from service.bus.codec import decode_batch, encode_batch
from trainer.batch import Batch, Sample

from .backlog import pending_count, stream_length
from .conftest import delete_prefix

pytestmark = pytest.mark.anyio

RUN, GROUP = "run-1", "trainer"


async def publish(bus, n: int, run: str = RUN) -> list[str]:
    return [await bus.publish_batch(run, f"batch-{i}", f"payload-{i}".encode()) for i in range(n)]


async def test_published_batch_goes_to_one_consumer_and_not_again_after_ack(bus):
    assert await bus.ensure_group(RUN, GROUP) is True
    assert await bus.ensure_group(RUN, GROUP) is False  # BUSYGROUP is not an error
    batch = Batch([Sample([1], [2], [-0.5], 1.0)], group_size=1, policy_version=3)
    message_id = await bus.publish_batch(RUN, batch.id, encode_batch(batch))

    [delivery] = await bus.read_batches(RUN, GROUP, "worker-a", count=10)
    assert (delivery.message_id, delivery.batch_id, delivery.delivery_count) == (
        message_id,
        batch.id,
        1,
    )
    assert decode_batch(delivery.payload) == batch
    assert await bus.read_batches(RUN, GROUP, "worker-b", count=10) == []

    assert await bus.ack(RUN, GROUP, delivery.message_id) is True
    assert await bus.ack(RUN, GROUP, delivery.message_id) is False
    assert await pending_count(bus, RUN, GROUP) == 0
    assert await stream_length(bus, RUN) == 0  # ack deletes by default
    assert await bus.read_batches(RUN, GROUP, "worker-a", count=10) == []
    assert await bus.claim_stale(RUN, GROUP, "worker-b", min_idle_ms=0, count=10) == []


async def test_group_created_after_publishing_still_gets_earlier_batches(bus):
    await publish(bus, 2)
    await bus.ensure_group(RUN, GROUP)
    deliveries = await bus.read_batches(RUN, GROUP, "worker-a", count=10)
    assert [d.batch_id for d in deliveries] == ["batch-0", "batch-1"]


async def test_unacked_batch_stays_pending_and_is_claimed_after_min_idle(bus):
    await bus.ensure_group(RUN, GROUP)
    [message_id] = await publish(bus, 1)
    [first] = await bus.read_batches(RUN, GROUP, "dead-worker")

    assert await pending_count(bus, RUN, GROUP) == 1
    assert await bus.read_batches(RUN, GROUP, "new-worker") == []
    assert await bus.claim_stale(RUN, GROUP, "new-worker", min_idle_ms=150) == []

    await asyncio.sleep(0.2)
    [claimed] = await bus.claim_stale(RUN, GROUP, "new-worker", min_idle_ms=150)
    assert (claimed.message_id, claimed.batch_id, claimed.payload) == (
        message_id,
        first.batch_id,
        first.payload,
    )
    assert claimed.delivery_count == 2
    assert await bus.claim_stale(RUN, GROUP, "other", min_idle_ms=150) == []  # idle reset

    await asyncio.sleep(0.2)
    [again] = await bus.claim_stale(RUN, GROUP, "third-worker", min_idle_ms=150)
    assert again.delivery_count == 3
    assert await pending_count(bus, RUN, GROUP) == 1
    assert await bus.ack(RUN, GROUP, message_id) is True
    assert await pending_count(bus, RUN, GROUP) == 0


async def test_two_consumers_in_a_group_split_the_work_without_duplicates(bus):
    await bus.ensure_group(RUN, GROUP)
    ids = await publish(bus, 20)
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(name: str) -> None:
        while deliveries := await bus.read_batches(RUN, GROUP, name, count=3, block_ms=50):
            for delivery in deliveries:
                seen[name].append(delivery.message_id)
                await bus.ack(RUN, GROUP, delivery.message_id)
            await asyncio.sleep(0)

    await asyncio.gather(consume("a"), consume("b"))
    assert sorted(seen["a"] + seen["b"]) == sorted(ids)
    assert not set(seen["a"]) & set(seen["b"])
    assert seen["a"] and seen["b"]
    assert await pending_count(bus, RUN, GROUP) == 0


async def test_blocked_read_wakes_when_a_batch_is_published(bus):
    await bus.ensure_group(RUN, GROUP)
    reader = asyncio.create_task(bus.read_batches(RUN, GROUP, "worker", block_ms=5000))
    await asyncio.sleep(0.1)
    assert not reader.done()
    await publish(bus, 1)
    [delivery] = await asyncio.wait_for(reader, 2)
    assert delivery.batch_id == "batch-0"


async def test_read_without_block_returns_at_once_when_empty(bus):
    await bus.ensure_group(RUN, GROUP)
    assert await asyncio.wait_for(bus.read_batches(RUN, GROUP, "worker"), 0.5) == []


async def test_deleted_run_raises_stream_lost_once_and_recovers(bus):
    await bus.ensure_group(RUN, GROUP)
    await publish(bus, 2)
    await bus.read_batches(RUN, GROUP, "worker", count=1)
    await bus.delete_run(RUN)
    assert await stream_length(bus, RUN) == 0

    with pytest.raises(StreamLost) as lost:
        await bus.read_batches(RUN, GROUP, "worker")
    assert (lost.value.run_id, lost.value.group) == (RUN, GROUP)
    assert await bus.read_batches(RUN, GROUP, "worker") == []  # group is back, empty
    await publish(bus, 1)
    [delivery] = await bus.read_batches(RUN, GROUP, "worker")
    assert delivery.batch_id == "batch-0"


async def test_redis_flush_raises_stream_lost_recreates_group_and_republished_work_flows(
    bus, prefix
):
    if type(bus).__name__ != "RedisBus":
        pytest.skip("a FLUSH only happens to Redis")
    await bus.ensure_group(RUN, GROUP)
    await publish(bus, 3)
    [held] = await bus.read_batches(RUN, GROUP, "worker", count=1)

    await delete_prefix(prefix)  # Redis flushed / restarted without persistence

    with pytest.raises(StreamLost):
        await bus.read_batches(RUN, GROUP, "worker")
    assert await bus.ensure_group(RUN, GROUP) is False  # recreated by read_batches
    assert await bus.ack(RUN, GROUP, held.message_id) is False  # the held batch was lost
    # The orchestrator re-publishes the unacknowledged batches from Postgres.
    await publish(bus, 3)
    deliveries = await bus.read_batches(RUN, GROUP, "worker", count=10)
    assert [d.batch_id for d in deliveries] == ["batch-0", "batch-1", "batch-2"]


async def test_redis_flush_under_a_blocked_read_raises_stream_lost(bus, prefix):
    if type(bus).__name__ != "RedisBus":
        pytest.skip("a FLUSH only happens to Redis")
    await bus.ensure_group(RUN, GROUP)
    reader = asyncio.create_task(bus.read_batches(RUN, GROUP, "worker", block_ms=5000))
    await asyncio.sleep(0.1)
    await delete_prefix(prefix)
    with pytest.raises(StreamLost):
        await asyncio.wait_for(reader, 2)
    assert await pending_count(bus, RUN, GROUP) == 0


async def test_claim_on_a_lost_group_raises_stream_lost(bus):
    with pytest.raises(StreamLost):
        await bus.claim_stale(RUN, GROUP, "worker", min_idle_ms=0)
    await bus.delete_run(RUN)
    with pytest.raises(StreamLost):
        await bus.claim_stale(RUN, GROUP, "worker", min_idle_ms=0)


async def test_published_events_reach_a_subscriber_in_order(bus):
    async with bus.subscribe_events(RUN) as events:
        await bus.publish_event("other-run", {"kind": "noise"})
        for step in range(3):
            await bus.publish_event(RUN, {"kind": "step", "step": step})
        received = [await asyncio.wait_for(anext(events), 2) for _ in range(3)]
    assert received == [{"kind": "step", "step": s} for s in range(3)]


async def test_two_subscribers_each_get_every_event(bus):
    async with bus.subscribe_events(RUN) as first, bus.subscribe_events(RUN) as second:
        await bus.publish_event(RUN, {"n": 1})
        assert await asyncio.wait_for(anext(first), 2) == {"n": 1}
        assert await asyncio.wait_for(anext(second), 2) == {"n": 1}


async def test_recent_feedback_is_capped_and_returns_the_newest_oldest_first(bus):
    # feedback_maxlen=20 (conftest); Redis trims approximately (MAXLEN ~), whole nodes.
    for first in range(0, 400, 8):  # eight per call, in order
        ids = await bus.publish_feedback(RUN, [{"i": i} for i in range(first, first + 8)])
        assert len(set(ids)) == 8

    assert await bus.recent_feedback(RUN, 3) == [{"i": 397}, {"i": 398}, {"i": 399}]
    kept = await bus.recent_feedback(RUN, 10_000)
    assert 20 <= len(kept) <= 20 + 100  # 100 = Redis's default stream-node-max-entries
    assert kept == [{"i": i} for i in range(400 - len(kept), 400)]
    assert await bus.recent_feedback("other-run", 5) == []


async def test_heartbeats_expire_after_ttl(bus):
    await bus.heartbeat("short", ttl_s=0.2)
    await bus.heartbeat("long", ttl_s=30)
    assert await bus.live_workers() == ["long", "short"]
    await asyncio.sleep(0.3)
    assert await bus.live_workers() == ["long"]
    await bus.heartbeat("short", ttl_s=30)  # a worker that beats again is back
    assert await bus.live_workers() == ["long", "short"]


async def test_lock_excludes_concurrent_holders(bus):
    holders, most = 0, 0

    async def critical() -> None:
        nonlocal holders, most
        async with bus.lock("checkpoint", ttl_s=10):
            holders += 1
            most = max(most, holders)
            await asyncio.sleep(0.02)
            holders -= 1

    await asyncio.gather(*(critical() for _ in range(5)))
    assert most == 1

    async with bus.lock("checkpoint", ttl_s=10):
        with pytest.raises(LockNotAcquired):
            async with bus.lock("checkpoint", ttl_s=10, wait_s=0.1):
                pass
        async with bus.lock("another-name", ttl_s=10, wait_s=0.1):
            pass
    async with bus.lock("checkpoint", ttl_s=10, wait_s=0.1):
        pass


async def test_ping_answers(bus):
    assert await bus.ping() is True


async def test_memory_bus_wakes_a_reader_on_another_threads_event_loop(bus):
    if type(bus).__name__ != "MemoryBus":
        pytest.skip("thread sharing is the in-process bus's concern")
    await bus.ensure_group(RUN, GROUP)
    reader = asyncio.create_task(
        asyncio.to_thread(
            asyncio.run, bus.read_batches(RUN, GROUP, "trainer-thread", block_ms=5000)
        )
    )
    await asyncio.sleep(0.1)
    await publish(bus, 1)
    [delivery] = await asyncio.wait_for(reader, 2)
    assert delivery.batch_id == "batch-0"


async def test_a_task_cancelled_while_its_lock_expired_ends_cancelled(bus, prefix):
    """An expired lock must not turn a cancellation into LockLost: a caller that handles
    LockLost would swallow the cancellation and its task would never stop."""
    entered = asyncio.Event()

    async def hold() -> None:
        async with bus.lock("short", ttl_s=0.3):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await entered.wait()
    await delete_prefix(prefix)  # the lock expires under its holder (Redis; in-process: no-op)
    await asyncio.sleep(0.2)  # its renewal finds it gone
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with bus.lock("short", ttl_s=1, wait_s=1):  # and it is free again
        pass


async def test_a_lock_held_past_its_ttl_is_renewed_and_still_excludes(bus):
    """The ttl bounds how long a dead holder blocks others, not how long a body may run."""
    entered = asyncio.Event()

    async def long_step() -> None:
        async with bus.lock("train", ttl_s=0.3):
            entered.set()
            await asyncio.sleep(1.2)  # four ttls

    task = asyncio.create_task(long_step())
    await entered.wait()
    with pytest.raises(LockNotAcquired):
        async with bus.lock("train", ttl_s=0.3, wait_s=0.9):
            pass
    await task  # released without LockLost
    async with bus.lock("train", ttl_s=0.3, wait_s=0.1):
        pass
