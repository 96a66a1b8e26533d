"""The bus: batch streams, events, live feedback, heartbeats, locks (see base.py).

`make_bus` is the one place that chooses the implementation. The Batch <-> bytes codec
is `service.bus.codec` (imported on its own: it pulls in trainer, hence torch).
"""

from __future__ import annotations

from service.bus.base import (
    Bus,
    BusError,
    Delivery,
    EventStream,
    LockLost,
    LockNotAcquired,
    StreamLost,
)


def make_bus(redis_url: str | None, prefix: str = "opsd", feedback_maxlen: int = 1000) -> Bus:
    """RedisBus for a URL (distributed), MemoryBus for None (embedded, one process)."""
    if redis_url is None:
        from service.bus.memory_bus import MemoryBus

        return MemoryBus(prefix, feedback_maxlen)
    from service.bus.redis_bus import RedisBus

    return RedisBus(redis_url, prefix, feedback_maxlen)


__all__ = [
    "Bus",
    "BusError",
    "Delivery",
    "EventStream",
    "LockLost",
    "LockNotAcquired",
    "StreamLost",
    "make_bus",
]
