"""Faults in the distributed deployment, with real processes: `opsd serve` (the API and
the orchestrator, not training: OPSD_EMBEDDED_WORKER=false), `opsd worker`s, a fresh
Postgres database and real Redis.

Each test breaks something in the middle of a run (a worker killed, Redis flushed, the
API process killed) and then requires the run to complete with every step trained
exactly once, as the record (Postgres) shows. The last test stages a crash window too
short to hit with a signal (between a worker's checkpoint and its record) in one process.

Redis: these tests use a logical database of their own (OPSD_TEST_FAULTS_REDIS_URL,
default: database 7 of the test Redis), so that "flush Redis" is a real FLUSHDB that
touches no other test's keys. Do not run two sessions of this file at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis
from redis.exceptions import ResponseError
from sqlalchemy import text

from service.bus import make_bus
from service.bus.codec import encode_batch
from service.client import Client
from service.pipeline.runtime import TRAINERS, batch_id_for
from service.pipeline.worker import TrainerWorker
from service.settings import Settings
from service.storage import Repository, RunStatus, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from trainer.loop import RunPolicy
from trainer.presets import preset
from trainer.worker import RunTrainer

from .conftest import REDIS_URL, delete_prefix
from .records import recorded_steps, set_status

STEPS, PROMPTS, SAMPLES, EVAL_EVERY = 12, 2, 4, 4
RUN_CONFIG = {
    "prompts_per_step": PROMPTS,
    "samples_per_prompt": SAMPLES,
    "eval": {"every": EVAL_EVERY, "size": 16},
}
MILESTONES = [0, 4, 8, 12]
START_S = 60.0  # a process imports torch and transformers first: seconds on a small machine
RUN_S = 90.0
DEFAULT_FAULTS_REDIS_URL = urlsplit(REDIS_URL)._replace(path="/7").geturl()
FAULTS_REDIS_URL = os.environ.get("OPSD_TEST_FAULTS_REDIS_URL") or DEFAULT_FAULTS_REDIS_URL
KEY_PREFIX = "opsd-faults-"
OPSD = [sys.executable, "-c", "from service.cli import app; app(prog_name='opsd')"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """One `opsd` process, its output in a log file; `ready()` says it can do its job."""

    name: str
    popen: subprocess.Popen
    log: Path
    ready: Callable[[], bool]
    killed: bool = False

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to it and every process it started (torch's launcher starts each in a
        session of its own): no shutdown code runs, as when a machine dies."""
        self.killed = True
        started = []
        with suppress(psutil.NoSuchProcess):
            started = psutil.Process(self.popen.pid).children(recursive=True)
        self.signal(signal.SIGKILL)
        for process in started:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        self.popen.wait(timeout=10)

    def signal(self, signum: signal.Signals) -> None:
        """SIGSTOP freezes it (a long GC pause, a swapped-out VM), SIGCONT thaws it."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)  # its own session: group id == pid


class Cluster:
    """The processes of one test, its database and its Redis keys; `close` kills them all."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"{KEY_PREFIX}{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OPSD_")}
        self.env = inherited | {
            "OPSD_DATABASE_URL": database_url,
            "OPSD_REDIS_URL": FAULTS_REDIS_URL,
            "OPSD_BUS_PREFIX": self.prefix,
            "OPSD_DATA_DIR": str(tmp_path / "data"),
            "OPSD_EMBEDDED_WORKER": "false",
            "OPSD_HOST": "127.0.0.1",
            "OPSD_PORT": str(self.port),
            "OPSD_DEVICE": "cpu",
            "OPSD_POLL_S": "0.05",
            "OPSD_CLAIM_IDLE_S": "2",
            "OPSD_HEARTBEAT_S": "0.5",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",  # the tiny model is fastest on one thread per process
        }
        self.engine = make_engine(database_url)
        self.repo = Repository(make_sessionmaker(self.engine))
        self.redis = redis.Redis.from_url(FAULTS_REDIS_URL)
        self.processes: list[Process] = []

    # -- processes -------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], ready: Callable[[], bool], **env: str) -> Process:
        """`env`: settings of this process only (OPSD_PORT of a second API replica)."""
        log = self.tmp_path / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                OPSD + args,
                env=self.env | env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = Process(name, popen, log, ready)
        self.processes.append(process)
        return process

    def spawn_api(self, port: int | None = None) -> Process:
        """An API replica on the cluster's port (its clients' address) or on `port`."""
        port = port or self.port

        def answers() -> bool:
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                return httpx.get(url, timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        return self.spawn("api", ["serve"], answers, OPSD_PORT=str(port))

    def spawn_worker(self, name: str, *flags: str) -> Process:
        def beats() -> bool:
            return bool(self.redis.exists(f"{self.prefix}:worker:{name}"))

        return self.spawn(name, ["worker", "--id", name, *flags], beats)

    def wait_ready(self) -> None:
        for process in self.processes:
            if not process.killed:
                self.wait_until(f"{process.name} ready", process.ready, START_S)

    def close(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.kill()
        self.redis.close()
        self.engine.dispose()

    # -- waiting and explaining --------------------------------------------------------

    def logs(self) -> str:
        parts = []
        for process in self.processes:
            code = process.popen.poll()
            state = "running" if code is None else f"exited {code}"
            parts.append(f"--- {process.log.name} ({state}) ---\n{process.tail()}")
        return "\n".join(parts)

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout: float) -> Any:
        """Poll `predicate` until it is truthy; fail with the processes' logs on a timeout
        or when a process we did not kill has died."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if not process.killed and process.popen.poll() is not None:
                    pytest.fail(f"{process.name} died waiting for {what}\n{self.logs()}")
            if value := predicate():
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(0.02)

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Failed assertions inside carry the processes' logs."""
        try:
            yield
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from error

    # -- the run -----------------------------------------------------------------------

    def client(self) -> Client:
        return Client(self.url, timeout=10.0)

    def create_run(self, **overrides: Any) -> int:
        with self.client() as api:
            run = api.create_run(
                "arithmetic",
                model="tiny",
                algorithm="sdpo",
                steps=STEPS,
                config=RUN_CONFIG | overrides,
            )
        return run["id"]

    def steps_done(self, run_id: int, *, before_the_end: bool = False) -> int:
        """Fails on a failed run, and `before_the_end` on a completed one (too late for a
        fault in the middle of the run)."""
        run = self.repo.get_run(run_id)
        if run.status == RunStatus.failed:
            pytest.fail(f"run {run_id} failed: {run.error}\n{self.logs()}")
        if before_the_end and run.status == RunStatus.completed:
            pytest.fail(f"run {run_id} completed before the fault\n{self.logs()}")
        return run.steps_done

    def wait_steps(self, run_id: int, at_least: int) -> None:
        """Wait, in the middle of the run, until `at_least` steps are recorded."""

        def reached() -> bool:
            return self.steps_done(run_id, before_the_end=True) >= at_least

        self.wait_until(f"{at_least} steps", reached, RUN_S)

    def wait_completed(self, run_id: int) -> None:
        def completed() -> bool:
            self.steps_done(run_id)  # fails fast on a failed run
            return self.repo.get_run(run_id).status == RunStatus.completed

        self.wait_until(f"run {run_id} completed", completed, RUN_S)

    def stream_key(self, run_id: int) -> str:
        return f"{self.prefix}:run:{run_id}:batches"

    def pending(self, run_id: int, consumer: str) -> list[str]:
        """Message ids delivered to `consumer` and not acknowledged yet."""
        try:
            entries = self.redis.xpending_range(
                self.stream_key(run_id), TRAINERS, "-", "+", 100, consumername=consumer
            )
        except ResponseError:  # no stream or group (yet)
            return []
        return [entry["message_id"].decode() for entry in entries]

    def undelivered(self, run_id: int) -> int:
        """Batches on the stream that no worker has read yet (acknowledged ones are deleted)."""
        key = self.stream_key(run_id)
        try:
            return self.redis.xlen(key) - self.redis.xpending(key, TRAINERS)["pending"]
        except ResponseError:
            return 0

    def sql(self, query: str, **params: Any) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]


@pytest.fixture
def cluster(tmp_path, postgres) -> Iterator[Cluster]:
    client = redis.Redis.from_url(FAULTS_REDIS_URL)
    try:
        foreign = [k for k in client.scan_iter(count=1000) if not k.startswith(KEY_PREFIX.encode())]
    finally:
        client.close()
    assert not foreign, (
        f"{FAULTS_REDIS_URL} holds keys of something else ({foreign[:3]}); these tests "
        "flush it: point OPSD_TEST_FAULTS_REDIS_URL at an unused Redis database"
    )
    url = postgres.create()
    upgrade(url)
    cluster = Cluster(tmp_path, url)
    try:
        yield cluster
    finally:
        print(cluster.logs())  # pytest shows it for a failed test
        prefix = cluster.prefix
        cluster.close()
        postgres.drop(url)
        delete_prefix(FAULTS_REDIS_URL, prefix)


def assert_trained_exactly_once(cluster: Cluster, run_id: int) -> None:
    """The record of a completed run: each step once, all its rollouts, scores and evals."""
    with cluster.explained():
        run = cluster.repo.get_run(run_id)
        assert run.status == RunStatus.completed, run.error
        assert (run.steps_done, run.policy_version) == (STEPS, STEPS)

        steps = cluster.sql(
            "SELECT step, batch_id FROM steps WHERE run_id = :r ORDER BY step, id", r=run_id
        )
        assert steps == [(s, batch_id_for(run_id, s)) for s in range(1, STEPS + 1)]
        batches = cluster.sql(
            "SELECT step, trained FROM batches WHERE run_id = :r ORDER BY step, id", r=run_id
        )
        assert batches == [(s, True) for s in range(1, STEPS + 1)]

        places = Counter(
            cluster.sql(
                "SELECT step, group_index, sample_index FROM trajectories WHERE run_id = :r",
                r=run_id,
            )
        )
        assert [place for place, n in places.items() if n > 1] == []
        assert set(places) == {
            (s, g, i) for s in range(1, STEPS + 1) for g in range(PROMPTS) for i in range(SAMPLES)
        }
        (scored,) = cluster.sql(
            "SELECT count(*) FROM trajectories t JOIN token_scores ts ON ts.trajectory_id = t.id"
            " WHERE t.run_id = :r AND jsonb_array_length(ts.log_ratios) > 0"
            " AND jsonb_array_length(ts.tokens) = jsonb_array_length(ts.log_ratios)",
            r=run_id,
        )
        assert scored == (STEPS * PROMPTS * SAMPLES,)

        assert [step for step, _ in cluster.repo.evaluations(run_id)] == MILESTONES
        assert [c.step for c in cluster.repo.list_checkpoints(run_id)] == MILESTONES[1:]
        kinds = Counter(e.kind for e in cluster.repo.events_after(run_id))
        assert (kinds["started"], kinds["completed"], kinds["failed"]) == (1, 1, 0)

        with cluster.client() as api:
            served = api.get_run(run_id)
        assert (served["status"], served["steps_done"]) == ("completed", STEPS)
        assert served["eval"]["base"] is not None and served["eval"]["latest_step"] == STEPS


def test_a_killed_worker_is_replaced_and_its_pending_batch_claimed_and_trained_once(cluster):
    cluster.spawn_api()
    first = cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_until(
        "w1 holding a batch after step 3",
        lambda: (
            cluster.steps_done(run_id, before_the_end=True) >= 3 and cluster.pending(run_id, "w1")
        ),
        RUN_S,
    )
    first.kill()  # mid-step: a batch delivered to it and not acknowledged
    assert cluster.steps_done(run_id) < STEPS

    cluster.spawn_worker("w2")  # claims w1's batch once it has been idle OPSD_CLAIM_IDLE_S
    cluster.wait_ready()
    cluster.wait_completed(run_id)

    assert_trained_exactly_once(cluster, run_id)  # w1's batch among them, once


def test_a_worker_in_two_processes_trains_and_a_one_process_worker_resumes_its_run(cluster):
    """`opsd worker --nproc-per-node 2`: its main process reads the bus and records, both
    train (the policy sharded, gloo on CPU). Killed mid-run, it is replaced by a worker of
    one process that resumes from its sharded checkpoints."""
    cluster.spawn_api()
    first = cluster.spawn_worker("w1", "--nproc-per-node", "2")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    first.kill()  # the launcher and both processes
    assert cluster.steps_done(run_id) < STEPS

    cluster.spawn_worker("w2")
    cluster.wait_ready()
    cluster.wait_completed(run_id)

    assert_trained_exactly_once(cluster, run_id)
    with cluster.explained():
        sizes = cluster.sql(
            "SELECT step, metrics->>'world_size' FROM steps WHERE run_id = :r ORDER BY step",
            r=run_id,
        )
        assert {size for step, size in sizes if step <= 3} == {"2"}, sizes
        assert sizes[-1] == (STEPS, "1")
        (completed,) = [e for e in cluster.repo.events_after(run_id) if e.kind == "completed"]
        assert completed.payload["world_size"] == 1


def test_a_worker_in_two_processes_stopped_with_sigterm_finishes_its_step_and_exits(cluster):
    """The launcher passes SIGTERM on; the main process finishes the step it is in, then
    tells the other to stop. The run goes on with the next worker."""
    cluster.spawn_api()
    first = cluster.spawn_worker("w1", "--nproc-per-node", "2")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    first.popen.send_signal(signal.SIGTERM)  # the launcher alone, as `docker stop` does
    assert first.popen.wait(timeout=60) == 0, first.tail()
    first.killed = True  # stopped on purpose
    assert "worker stopped" in first.tail(), first.tail()
    assert cluster.repo.get_run(run_id).status == RunStatus.running

    cluster.spawn_worker("w2")
    cluster.wait_ready()
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)


def test_batches_lost_with_a_flushed_redis_are_republished_from_the_record(cluster):
    cluster.spawn_api()
    worker = cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run(max_off_policy_steps=2)  # batches published ahead of training
    cluster.wait_steps(run_id, 3)
    worker.signal(signal.SIGSTOP)  # so that a published batch waits on the stream unread
    cluster.wait_until("a batch nobody has read", lambda: cluster.undelivered(run_id), RUN_S)
    cluster.redis.flushdb()  # Redis restarted without persistence: streams, groups, locks
    worker.signal(signal.SIGCONT)  # the worker, not the orchestrator, finds the stream gone
    assert cluster.steps_done(run_id) < STEPS

    cluster.wait_steps(run_id, 8)
    cluster.redis.flushdb()  # and once more with everything running
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)


def test_a_restarted_api_process_resumes_the_run_from_the_record(cluster):
    api = cluster.spawn_api()
    cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    api.kill()  # the orchestrator dies with it, mid-run
    # without an orchestrator the worker trains at most the batch already published
    assert cluster.steps_done(run_id) < STEPS - 1

    cluster.spawn_api()  # same port, database and Redis
    cluster.wait_ready()
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)


def test_two_api_replicas_drive_a_run_once_through_a_flushed_redis(cluster):
    cluster.spawn_api()
    cluster.spawn_api(port=free_port())  # a second replica: same database, Redis and data
    cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    cluster.redis.flushdb()  # whatever Redis held about who drives the run is gone
    cluster.wait_steps(run_id, 6)
    cluster.redis.flushdb()
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)
    with cluster.explained():  # each step sampled and published by one driver
        kinds = Counter(e.kind for e in cluster.repo.events_after(run_id))
        assert (kinds["batch"], kinds["eval"]) == (STEPS, len(MILESTONES))


def test_a_replica_frozen_past_its_lease_loses_the_run_and_writes_nothing_after(cluster):
    second = free_port()
    replicas = {cluster.port: cluster.spawn_api(), second: cluster.spawn_api(second)}
    cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)

    def holder() -> int:  # the port of the replica that holds the run's lease
        ((name,),) = cluster.sql("SELECT holder FROM run_leases WHERE run_id = :r", r=run_id)
        return int(name.rsplit(":", 1)[1])

    frozen = holder()
    replicas[frozen].signal(signal.SIGSTOP)  # a long pause, past OPSD_CLAIM_IDLE_S
    cluster.wait_until("the other replica holding the lease", lambda: holder() != frozen, RUN_S)
    cluster.wait_steps(run_id, cluster.steps_done(run_id) + 1)
    replicas[frozen].signal(signal.SIGCONT)  # it goes on from where it froze, if it may
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)
    with cluster.explained():
        kinds = Counter(e.kind for e in cluster.repo.events_after(run_id))
        assert (kinds["batch"], kinds["eval"]) == (STEPS, len(MILESTONES))


def test_a_restarted_api_replica_takes_back_its_runs_at_once(cluster):
    # A dead replica's runs wait this long for another replica: longer than the test.
    cluster.env["OPSD_CLAIM_IDLE_S"] = str(10 * RUN_S)
    api = cluster.spawn_api()
    cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    api.kill()
    assert cluster.steps_done(run_id) < STEPS - 1

    cluster.spawn_api()  # the same replica (host and port) comes back
    cluster.wait_ready()
    cluster.wait_completed(run_id)  # within RUN_S: it did not wait for its lease to expire
    assert_trained_exactly_once(cluster, run_id)


def test_two_competing_workers_train_every_step_exactly_once(cluster):
    cluster.spawn_api()
    cluster.spawn_worker("w1")
    cluster.spawn_worker("w2")
    cluster.wait_ready()
    # up to two batches in flight: one worker may hold a batch ahead of the other's
    run_id = cluster.create_run(max_off_policy_steps=2)
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)


def test_a_batch_recorded_but_not_published_when_the_api_died_is_published_on_restart(cluster):
    api = cluster.spawn_api()
    worker = cluster.spawn_worker("w1")
    cluster.wait_ready()
    run_id = cluster.create_run()
    cluster.wait_steps(run_id, 3)
    worker.kill()  # so that the next batch stays untrained
    cluster.wait_until(
        "the next batch in the record",
        lambda: cluster.repo.last_batch_step(run_id) > cluster.steps_done(run_id),
        RUN_S,
    )
    api.kill()
    # The API died between keeping the batch in the record and publishing it: the record
    # has it, the stream (whose group exists) never had it.
    key = cluster.stream_key(run_id)
    cluster.redis.xgroup_delconsumer(key, TRAINERS, "w1")
    cluster.redis.xtrim(key, maxlen=0, approximate=False)
    assert cluster.repo.untrained_batches(run_id)

    cluster.spawn_api()
    cluster.spawn_worker("w2")
    cluster.wait_ready()
    cluster.wait_completed(run_id)
    assert_trained_exactly_once(cluster, run_id)


def test_a_step_checkpointed_by_a_dead_worker_is_recorded_before_a_later_step_is_trained(
    tmp_path, postgres, redis_prefix
):
    """In one process (the crash window is too short to hit with a signal): a worker died
    after its checkpoint of step 1 and before recording it, holding batch 1; batch 2 was
    already published (max_off_policy_steps=1). A live worker reads batch 2 first. It must
    not train step 2 on top of the unrecorded step 1 (batch 1 would then come back out of
    order and fail the run): it waits for batch 1, records it from the checkpoint, then
    trains step 2."""
    url = postgres.create()
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=REDIS_URL,
        bus_prefix=redis_prefix,
        device="cpu",
        poll_s=0.05,
        claim_idle_s=1.0,
        heartbeat_s=0.5,
    )
    cfg = preset(
        "sdpo",
        {
            "steps": 2,
            "prompts_per_step": 2,
            "samples_per_prompt": 2,
            "eval": {"every": 2, "size": 16},
            "max_off_policy_steps": 1,
        },
    )
    engine = make_engine(url)
    repo = Repository(make_sessionmaker(engine))
    run_id = repo.create_run(repo.create_environment("arithmetic", "arithmetic", {}).id, cfg).id
    set_status(repo, run_id, RunStatus.running)
    with RunPolicy.open(cfg, "cpu", train=False) as session:  # the orchestrator's two batches
        tasks = list(session.env.dataset("train"))
        batches = []
        for step in (1, 2):
            batch, rollouts = session.rollout(tasks[2 * step - 2 : 2 * step], policy_version=0)
            batch.id = batch_id_for(run_id, step)
            rows = [
                {**r.__dict__, "group_index": i // 2, "sample_index": i % 2}
                for i, r in enumerate(rollouts)
            ]
            repo.add_batch(run_id, step, batch.id, 0, encode_batch(batch), rows, {})
            batches.append(batch)
    dead = RunTrainer(cfg, settings.run_dir(run_id), device="cpu")
    outcome = dead.train(batches[0], 1)  # ... and the worker dies before recording step 1
    state = settings.run_dir(run_id) / "step-000001" / "state.json"
    written = state.stat().st_mtime_ns

    async def scenario() -> None:
        bus, key = make_bus(REDIS_URL, redis_prefix), str(run_id)
        await bus.ensure_group(key, TRAINERS)
        await bus.publish_batch(key, batches[0].id, encode_batch(batches[0]))
        assert await bus.read_batches(key, TRAINERS, "dead", count=1)  # held by the dead one
        await bus.publish_batch(key, batches[1].id, encode_batch(batches[1]))
        worker = TrainerWorker(repo, bus, settings, worker_id="live")
        await worker.start()
        try:
            deadline = time.monotonic() + 30
            while (run := repo.get_run(run_id)).steps_done < 2 and run.status == RunStatus.running:
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.05)
        finally:
            await worker.aclose()
            await bus.aclose()

    try:
        asyncio.run(scenario())
        run = repo.get_run(run_id)
        assert (run.status, run.error, run.steps_done) == (RunStatus.running, None, 2)
        steps = recorded_steps(repo, run_id)
        assert [(s.step, s.batch_id) for s in steps] == [(1, batches[0].id), (2, batches[1].id)]
        assert steps[0].metrics["loss"] == pytest.approx(outcome.metrics["loss"])
        assert state.stat().st_mtime_ns == written  # step 1 was not trained again
        assert repo.untrained_batches(run_id) == []
    finally:
        engine.dispose()
