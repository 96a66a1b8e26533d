"""Live run events: how late an SSE follower sees an event, and what following costs the record.

Five runs, each followed by one SSE stream (`service.runs.events.follow_run`, the
generator behind /v1/runs/{id}/events, consumed in-process: the HTTP framing is the same
for both ways of following). A producer records and publishes events the way the service
does (`service.pipeline.runtime.emit`): `--events` per run, `--gap-ms` apart, runs interleaved.
Each stream follows its run in one of two ways:

- poll: read the record every `poll_s` (what SSE did before the bus announced events);
- bus: read the record when the bus announces a newer event of the run, and every
  FALLBACK_POLLS * `poll_s` besides.

Measured per way and bus (Redis, and the in-process bus of embedded mode), on Postgres:
the latency from just before `emit` to the follower receiving the event (median, p95,
max), and the database statements per second the five followers issue while their runs
are live and while they are idle (no events for `--idle-s`). The followers have an
engine of their own, so only their statements are counted.

    python benchmarks/live_events.py --events 40 --gap-ms 100 --idle-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from service.bus import Bus, make_bus
from service.pipeline.runtime import emit
from service.runs.events import follow_run
from service.settings import Settings
from service.storage import Repository, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from trainer.config import RunConfig

STREAMS = 5


class CountedRepository:
    """A repository on an engine of its own, counting the statements it sends."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.statements = 0
        event.listen(self.engine, "before_cursor_execute", self._count)
        self.repo = Repository(make_sessionmaker(self.engine))

    def _count(self, *args) -> None:
        self.statements += 1


async def measure(url: str, bus: Bus, use_bus: bool, gap_ms: float, args) -> dict[str, float]:
    writer_engine = make_engine(url)
    writer = Repository(make_sessionmaker(writer_engine))
    readers = CountedRepository(url)
    poll_s = Settings.model_fields["poll_s"].default
    env = writer.create_environment(f"arith-{uuid.uuid4().hex[:6]}", "arithmetic", {})
    runs = [writer.create_run(env.id, RunConfig()).id for _ in range(STREAMS)]
    sent: dict[tuple[int, int], float] = {}  # (run, step) -> when its emit began
    latencies: list[float] = []
    ended = 0

    async def follow(run_id: int) -> None:
        nonlocal ended
        async for message in follow_run(readers.repo, run_id, 0, poll_s, bus if use_bus else None):
            received = time.perf_counter()
            if message.event == "step":
                step = json.loads(message.data)["payload"]["step"]
                latencies.append(received - sent[run_id, step])
        ended += 1

    async def produce(kind: str, payload: dict, run_id: int) -> None:
        sent[run_id, payload.get("step", -1)] = time.perf_counter()
        await emit(writer, bus, run_id, kind, payload)

    followers = [asyncio.create_task(follow(run_id)) for run_id in runs]
    await asyncio.sleep(1.0)  # every follower has replayed the (empty) record

    began, counted = time.perf_counter(), readers.statements
    await asyncio.sleep(args.idle_s)
    idle_rate = (readers.statements - counted) / (time.perf_counter() - began)

    began, counted = time.perf_counter(), readers.statements
    for step in range(args.events):
        for run_id in runs:
            await produce("step", {"step": step}, run_id)
            await asyncio.sleep(gap_ms / 1000 / STREAMS)
    live_rate = (readers.statements - counted) / (time.perf_counter() - began)
    for run_id in runs:
        await produce("completed", {}, run_id)
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert ended == STREAMS and len(latencies) == STREAMS * args.events, len(latencies)
    readers.engine.dispose()
    writer_engine.dispose()
    latencies.sort()
    return {
        "median_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "live_qps": live_rate,
        "idle_qps": idle_rate,
    }


def postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"opsd_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


async def one(
    url: str, redis_url: str | None, use_bus: bool, gap_ms: float, args
) -> dict[str, float]:
    bus = make_bus(redis_url, f"opsd-bench-{uuid.uuid4().hex[:8]}")
    try:
        return await measure(url, bus, use_bus, gap_ms, args)
    finally:
        await bus.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40, help="events per run")
    parser.add_argument(
        "--gap-ms", type=float, nargs="+", default=[100.0, 1000.0], help="between a run's events"
    )
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "OPSD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("OPSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"{platform.machine()}, {os.cpu_count()} cpus, {STREAMS} streams x {args.events} "
        f"events, poll_s {Settings.model_fields['poll_s'].default}"
    )
    print(
        "| follow | bus | event every | median ms | p95 ms | max ms | queries/s live "
        "| queries/s idle |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for gap_ms in args.gap_ms:
        for use_bus in (False, True):
            for name, redis_url in (("redis", args.redis), ("in-process", None)):
                url, drop = postgres_database(args.postgres)
                try:
                    upgrade(url)
                    r = asyncio.run(one(url, redis_url, use_bus, gap_ms, args))
                finally:
                    drop()
                print(
                    f"| {'bus' if use_bus else 'poll'} | {name} | {gap_ms:g} ms | "
                    f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} | "
                    f"{r['live_qps']:.1f} | {r['idle_qps']:.1f} |"
                )


if __name__ == "__main__":
    main()
