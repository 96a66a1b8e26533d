"""Read load against training: does a busy API slow training down, and does it answer fast?

Starts the service as a user does: `opsd serve` alone (embedded: SQLite and the
in-process bus), or `opsd serve` + `opsd worker` (distributed: a Postgres database and
a Redis key prefix of its own, dropped afterwards). Creates a run of the tiny model long
enough to outlast the measurement (and cancelled copies of it, so that the run list is
a list), then measures training steps/s in a quiet window (nobody reading) and, per
repeat:

1. a load window: `--readers` concurrent readers, each looping over the pages a user
   opens (the runs list, the run, its metrics, the next page of its trajectories, one
   trajectory; `--think-ms` between requests, 0 = back to back), plus `--streams` SSE
   event streams of the run; training steps/s meanwhile;
2. another quiet window.

A load window is compared with the mean of the quiet windows on either side of it: the
speed of a shared virtual machine drifts over minutes (consecutive quiet windows of one
run differ by up to 30% here), and a baseline taken on both sides cancels a steady drift.

Steps/s come from the record (the `steps` rows' timestamps), not from the API under
test. It reports the ratio of loaded to quiet steps/s, reader p50/p99 latency,
requests/s and errors (non-200 answers, transport errors, broken streams), the median
over the repeats, and how long the first run's creation took and how long the run then
waited for the pipeline to pick it up.

    python benchmarks/read_load.py --mode both --repeats 5
    python benchmarks/read_load.py --mode both --in-process      # the pipeline in the API process
    python benchmarks/read_load.py --mode both --source /tmp/main  # another checkout's server

Everything listens on loopback; every loop is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import redis
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from service.storage import make_engine
from service.storage.models import Run, RunStatus, Step

ADMIN_URL = os.environ.get(
    "OPSD_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/test"
)
REDIS_URL = os.environ.get("OPSD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent
RUN = {
    "environment": "arithmetic",
    "model": "tiny",
    "algorithm": "sdpo",
    "steps": 100_000,
    "config": {"eval": {"every": 100_000, "size": 16}},  # no evaluation after step 0
}


# --- the service under test ------------------------------------------------------------


def opsd(*args: str) -> list[str]:
    """The `opsd` command line, run by this interpreter from the current directory."""
    return [sys.executable, "-c", "from service.cli import app; app()", *args]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str
    database_url: str
    processes: list[subprocess.Popen] = field(default_factory=list)


@contextmanager
def service(mode: str, workdir: Path, source: Path, in_process: bool, worker_threads: int):
    """`opsd serve` (and `opsd worker`) started from `source`; stopped and cleaned after."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "OPSD_DATA_DIR": str(workdir / "data"),
        "OPSD_PORT": str(port),
        "OPSD_DEVICE": "cpu",
    }
    if in_process:
        env["OPSD_PIPELINE_PROCESS"] = "false"
    cleanups = []
    if mode == "distributed":
        name = f"opsd_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        cleanups.append(drop)
        prefix = f"opsd-bench-{uuid.uuid4().hex[:8]}"
        cleanups.append(lambda: delete_prefix(prefix))
        env["OPSD_DATABASE_URL"] = make_url(ADMIN_URL).set(database=name).render_as_string(False)
        env["OPSD_REDIS_URL"] = REDIS_URL
        env["OPSD_BUS_PREFIX"] = prefix
        subprocess.run(opsd("db", "upgrade"), env=env, cwd=source, check=True, timeout=120)
    database_url = env.get("OPSD_DATABASE_URL") or f"sqlite:///{workdir / 'data' / 'opsd.db'}"
    commands = [(opsd("serve", "--log-level", "warning"), env)]
    if mode == "distributed":
        worker_env = dict(env)
        if worker_threads:  # as the API's pipeline process has by default
            worker_env["OPSD_TORCH_THREADS"] = str(worker_threads)
        commands.append((opsd("worker"), worker_env))
    svc = Service(f"http://127.0.0.1:{port}", database_url)
    try:
        for i, (command, command_env) in enumerate(commands):
            log = open(workdir / f"process-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            svc.processes.append(
                subprocess.Popen(
                    command,
                    env=command_env,
                    cwd=source,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        wait_ready(svc)
        yield svc
    finally:
        for process in svc.processes:
            stop(process)
        for cleanup in cleanups:
            cleanup()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM its process group (the API's pipeline process included), then SIGKILL."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def wait_ready(svc: Service, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in svc.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[-1]} exited with {process.returncode}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{svc.url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f}s")


# --- the record: steps over time, not through the API under test --------------------------


class Record:
    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url, poolclass=NullPool)

    def step_times(self, run_id: int) -> list[datetime]:
        query = select(Step.created_at).where(Step.run_id == run_id)
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def status(self, run_id: int) -> str:
        with self.engine.connect() as conn:
            return conn.scalar(select(Run.status).where(Run.id == run_id))

    def add_cancelled_runs(self, like: int, count: int) -> None:
        """`count` cancelled copies of run `like`: rows of the runs list that no pipeline
        drives (written here, not through the API: nothing picks them up first)."""
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, like)
            session.add_all(
                Run(
                    environment_id=run.environment_id,
                    model=run.model,
                    status=RunStatus.cancelled,
                    config=run.config,
                )
                for _ in range(count)
            )

    def steps_per_s(self, run_id: int, began: datetime, ended: datetime) -> float:
        steps = sum(began <= t < ended for t in self.step_times(run_id))
        return steps / (ended - began).total_seconds()


def now() -> datetime:
    return datetime.now(UTC)


def start_run(svc: Service, record: Record) -> tuple[int, float, float]:
    """The measured run: its id, how long its creation took, and how long it then waited
    until it was `running` (the pipeline's wake-up)."""
    with httpx.Client(base_url=svc.url, timeout=60) as client:
        began = time.monotonic()
        run_id = client.post("/v1/runs", json=RUN).raise_for_status().json()["id"]
    created = time.monotonic()
    while record.status(run_id) != "running":
        if time.monotonic() > created + 60:
            raise RuntimeError("the run was not picked up within 60s")
        time.sleep(0.002)
    return run_id, created - began, time.monotonic() - created


def wait_steps(record: Record, run_id: int, steps: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(record.step_times(run_id)) < steps:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {steps} steps after {timeout_s:.0f}s")
        time.sleep(0.5)


# --- the load -------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)  # what went wrong -> how often
    events: int = 0

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        if error is not None:
            self.errors[f"{kind}: {error}"] += 1

    def all(self) -> list[float]:
        return sorted(s for values in self.latencies.values() for s in values)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def reader(session, run_id, trajectories, deadline, think_s, tally, rng) -> None:
    cursor, turn = None, rng.randrange(5)
    while time.monotonic() < deadline:
        kind = ("runs", "run", "metrics", "page", "trajectory")[turn % 5]
        turn += 1
        path, params = {
            "runs": ("/v1/runs", {"limit": 50}),
            "run": (f"/v1/runs/{run_id}", {}),
            "metrics": (f"/v1/runs/{run_id}/metrics", {}),
            "page": (f"/v1/runs/{run_id}/trajectories", {"limit": 50, "cursor": cursor}),
            "trajectory": (f"/v1/runs/{run_id}/trajectories/{rng.choice(trajectories)}", {}),
        }[kind]
        began = time.perf_counter()
        error = None
        try:
            params = {k: v for k, v in params.items() if v}
            async with session.get(path, params=params) as response:
                body = await response.read()
            if response.status != 200:
                error = f"HTTP {response.status}"
            if kind == "page":
                cursor = None if error else json.loads(body)["next_cursor"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        tally.add(kind, time.perf_counter() - began, error)
        if think_s:
            await asyncio.sleep(think_s)


async def sse(session, run_id, deadline, tally) -> None:
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            async with session.get(f"/v1/runs/{run_id}/events") as response:
                if response.status != 200:
                    tally.errors[f"events: HTTP {response.status}"] += 1
                    return
                async for line in response.content:
                    tally.events += line.startswith(b"id:")
        tally.errors["events: ended early"] += 1  # the run goes on: it should not end
    except TimeoutError:
        pass  # the window is over
    except aiohttp.ClientError as exc:
        tally.errors[f"events: {type(exc).__name__}"] += 1


async def load(svc: Service, run_id: int, args) -> tuple[Tally, float]:
    """The readers share one aiohttp session with a connection each (as browser tabs
    keep theirs). aiohttp, not httpx, because the load must not eat the machine it
    measures: against a trivial server httpx spends about 3 ms of CPU per request with
    50 concurrent readers, aiohttp about 0.14 ms."""
    connector = aiohttp.TCPConnector(limit=args.readers + args.streams + 4)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(svc.url, connector=connector, timeout=timeout) as session:
        path = f"/v1/runs/{run_id}/trajectories"
        async with session.get(path, params={"limit": 200}) as response:
            page = await response.json()
        trajectories = [item["id"] for item in page["items"]]
        tally, rng = Tally(), random.Random(0)
        began = time.monotonic()
        deadline = began + args.duration
        await asyncio.gather(
            *(
                reader(session, run_id, trajectories, deadline, args.think_ms / 1000, tally, rng)
                for _ in range(args.readers)
            ),
            *(sse(session, run_id, deadline, tally) for _ in range(args.streams)),
        )
        return tally, time.monotonic() - began


# --- one mode, several repeats ----------------------------------------------------------------


def readers(svc: Service, run_id: int, args) -> tuple[Tally, float]:
    """The load window; with `--readers-nice` or `--readers-idle`, in a process of that
    lower priority (as if the readers were on other machines, which is where a
    dashboard's are)."""
    if not args.readers_nice and not args.readers_idle:
        return asyncio.run(load(svc, run_id, args))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(niced_load, svc.url, run_id, args).result()


def niced_load(url: str, run_id: int, args) -> tuple[Tally, float]:
    if args.readers_idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(args.readers_nice)
    return asyncio.run(load(Service(url, ""), run_id, args))


def quiet_window(record: Record, run_id: int, seconds: float) -> float:
    """Training steps/s while nobody reads."""
    began = now()
    time.sleep(seconds)
    return record.steps_per_s(run_id, began, now())


def one_repeat(svc: Service, record: Record, run_id: int, quiet_before: float, args) -> dict:
    """A load window and the quiet window after it; the quiet baseline is the mean of the
    windows before and after."""
    began = now()
    tally, seconds = readers(svc, run_id, args)
    loaded = record.steps_per_s(run_id, began, now())
    quiet_after = quiet_window(record, run_id, args.quiet)
    quiet = (quiet_before + quiet_after) / 2
    latencies = tally.all()
    return {
        "quiet_steps_s": quiet,
        "quiet_before_after": [quiet_before, quiet_after],
        "load_steps_s": loaded,
        "ratio": loaded / quiet if quiet else float("nan"),
        "p50_ms": 1000 * quantile(latencies, 0.5),
        "p99_ms": 1000 * quantile(latencies, 0.99),
        "requests_s": len(latencies) / seconds,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "sse_events": tally.events,
        "p99_ms_by_kind": {
            kind: round(1000 * quantile(values, 0.99), 1)
            for kind, values in tally.latencies.items()
        },
    }


def measure(mode: str, args) -> dict:
    source = Path(args.source).resolve() if args.source else ROOT
    repeats = []
    with (
        tempfile.TemporaryDirectory(prefix="opsd-read-load-") as tmp,
        service(mode, Path(tmp), source, args.in_process, args.worker_threads) as svc,
    ):
        record = Record(svc.database_url)
        try:
            run_id, create_s, wake_s = start_run(svc, record)
            record.add_cancelled_runs(run_id, args.extra_runs)
            wait_steps(record, run_id, args.warmup_steps)
            quiet = quiet_window(record, run_id, args.quiet)
            for i in range(args.repeats):
                repeats.append(one_repeat(svc, record, run_id, quiet, args))
                quiet = repeats[-1]["quiet_before_after"][1]
                print(f"{mode} repeat {i + 1}: {json.dumps(repeats[-1])}", flush=True)
        finally:
            record.engine.dispose()
    summary = {
        key: statistics.median(r[key] for r in repeats)
        for key in ("quiet_steps_s", "load_steps_s", "ratio", "p50_ms", "p99_ms", "requests_s")
    }
    summary["errors"] = sum(r["errors"] for r in repeats)
    summary["create_ms"], summary["wake_ms"] = 1000 * create_s, 1000 * wake_s
    return summary


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load1, load5, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs ({cpu}), load average {load1:.1f} / {load5:.1f} (1 / 5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["embedded", "distributed", "both"], default="both")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds under load")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds of the quiet window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--think-ms", type=float, default=0.0, help="a reader's pause")
    parser.add_argument(
        "--readers-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="run the readers at this lower CPU priority (0: as training)",
    )
    parser.add_argument(
        "--readers-idle",
        action="store_true",
        help="run the readers in Linux's idle scheduling class (as if on another machine)",
    )
    parser.add_argument("--extra-runs", type=int, default=20, help="cancelled runs in the list")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument(
        "--in-process", action="store_true", help="OPSD_PIPELINE_PROCESS=false (as before)"
    )
    parser.add_argument("--source", help="run the service from this checkout instead")
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="OPSD_TORCH_THREADS of the distributed worker, which shares this machine with "
        "the API: all cores but one by default, as the API's pipeline process has; 0: "
        "torch's own default (all cores)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the service on the way out
    modes = ["embedded", "distributed"] if args.mode == "both" else [args.mode]
    print(f"machine before: {machine()}", flush=True)
    rows = [(mode, measure(mode, args)) for mode in modes]
    print(f"machine after: {machine()}", flush=True)
    print(
        "\n| mode | quiet steps/s | loaded steps/s | ratio | p50 ms | p99 ms | req/s | errors "
        "| create ms | pick-up ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, s in rows:
        print(
            f"| {mode} | {s['quiet_steps_s']:.2f} | {s['load_steps_s']:.2f} | {s['ratio']:.2f} "
            f"| {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['requests_s']:.0f} | {s['errors']} "
            f"| {s['create_ms']:.0f} | {s['wake_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
