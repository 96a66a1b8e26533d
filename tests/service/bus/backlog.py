"""What a bus holds, seen from outside: for RedisBus plain Redis commands on its keys
(`XLEN`, `XPENDING`), for MemoryBus (which has no commands to send) its state."""

from __future__ import annotations

from service.bus.memory_bus import MemoryBus
from service.bus.redis_bus import RedisBus


def batches_key(bus: RedisBus, run_id: str) -> str:
    return f"{bus._prefix}:run:{run_id}:batches"


async def stream_length(bus: RedisBus | MemoryBus, run_id: str) -> int:
    """Entries in the run's batch stream (0 if there is none)."""
    if isinstance(bus, RedisBus):
        return int(await bus._redis.xlen(batches_key(bus, run_id)))
    with bus._mutex:
        stream = bus._streams.get(run_id)
        return len(stream.entries) if stream else 0


async def pending_count(bus: RedisBus | MemoryBus, run_id: str, group: str) -> int:
    """Batches delivered to `group` and not acknowledged yet (the group must exist)."""
    if isinstance(bus, RedisBus):
        return int((await bus._redis.xpending(batches_key(bus, run_id), group))["pending"])
    with bus._mutex:
        return len(bus._streams[run_id].groups[group].pending)
