"""The pipeline process: the default embedded app samples and trains in a child process,
which follows the API's run controls, dies with the API, and is restarted when it crashes.

Real processes throughout: a uvicorn server in a thread (or `opsd serve` in a
subprocess), the spawned pipeline process, the tiny model, SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.client import Client
from service.pipeline.process import lower_priority
from service.settings import Settings

SMALL = {"prompts_per_step": 2, "samples_per_prompt": 2, "eval": {"size": 4}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def until(condition: Callable[[], object], what: str, timeout_s: float = 120) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f}s: {what}"
        time.sleep(0.05)
    return value


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", device="cpu", poll_s=0.05, heartbeat_s=0.5)


@pytest.fixture
def server(settings) -> Iterator[tuple[Client, object]]:
    """The default embedded app (background on) served by uvicorn in a thread: a Client
    and the app's Services."""
    with serving(settings) as served:
        yield served


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[Client, object]]:
    app = create_app(settings, background=True)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), "the server starts")
    assert thread.is_alive(), "the server did not start"
    try:
        with Client(f"http://127.0.0.1:{server.config.port}", timeout=30.0) as client:
            yield client, app.state.services
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not shut down"


def ready(client: Client) -> dict:
    """/readyz's body, also when it is 503."""
    return httpx.get(f"{client.url}/readyz", timeout=10).json()


def start_run(client: Client, steps: int) -> int:
    return client.create_run("arithmetic", model="tiny", steps=steps, config=SMALL)["id"]


def steps_done(client: Client, run_id: int) -> int:
    return client.get_run(run_id)["steps_done"]


def test_the_embedded_app_runs_the_pipeline_in_a_child_that_follows_run_controls(server):
    client, services = server
    pipeline = services.pipeline
    assert services.orchestrator is None and services.worker is None
    assert pipeline is not None and pipeline.pid not in (None, os.getpid())
    assert pipeline.pid in children_of(os.getpid())
    until(lambda: ready(client)["status"] == "ready", "ready")
    assert ready(client)["checks"]["pipeline"] == "ok"
    # The trainer worker is the child's (its id names the child's pid); its heartbeat
    # reaches the API's own bus.
    workers = asyncio.run(services.bus.live_workers())  # (MemoryBus: thread-safe)
    assert len(workers) == 1 and f"-{pipeline.pid}-" in workers[0], workers

    # A run completes through HTTP.
    short = start_run(client, steps=2)
    kinds = [event.kind for event in client.events(short)]
    assert kinds[0] == "started" and kinds[-1] == "completed", kinds
    assert client.get_run(short)["steps_done"] == 2

    # Stop, resume and cancel reach the pipeline.
    run_id = start_run(client, steps=10_000)
    until(lambda: steps_done(client, run_id) >= 1, "the long run trains")
    client.stop_run(run_id)
    stopped_at = until(lambda: steps_of_a_quiet_run(client, run_id), "the stopped run rests")
    client.resume_run(run_id)
    until(lambda: steps_done(client, run_id) > stopped_at, "the resumed run trains again")
    client.cancel_run(run_id)
    until(lambda: steps_of_a_quiet_run(client, run_id), "the cancelled run rests")
    assert client.get_run(run_id)["status"] == "cancelled"


def steps_of_a_quiet_run(client: Client, run_id: int) -> int | None:
    """steps_done if no step was added over one second (the step under way at a stop
    may still be recorded), else None."""
    before = steps_done(client, run_id)
    time.sleep(1.0)
    after = steps_done(client, run_id)
    return after if after == before and after > 0 else None


def test_a_crashed_pipeline_process_is_reported_and_restarted(server, caplog):
    client, services = server
    pipeline = services.pipeline
    until(lambda: ready(client)["status"] == "ready", "ready")
    caplog.set_level(logging.WARNING, logger="service.pipeline.process")

    first = pipeline.pid
    os.kill(first, signal.SIGKILL)
    report = until(
        lambda: (r := ready(client))["status"] == "not_ready" and "SIGKILL" in str(r) and r,
        "readiness reports the crash",
    )
    assert "the pipeline process exited with signal SIGKILL" in report["checks"]["pipeline"]
    assert any("signal SIGKILL" in r.getMessage() for r in caplog.records)
    until(lambda: ready(client)["status"] == "ready", "the restarted pipeline is ready")
    second = pipeline.pid
    assert second != first and pipeline.exits == 1

    # SIGTERM: the pipeline stops cleanly (exit code 0); it is restarted too.
    os.kill(second, signal.SIGTERM)
    until(lambda: pipeline.exits == 2, "the SIGTERM exit is seen")
    assert pipeline.last_exit == "exited with code 0"
    until(lambda: ready(client)["status"] == "ready" and pipeline.pid != second, "restarted")
    assert [e.kind for e in client.events(start_run(client, steps=1))][-1] == "completed"


def test_the_api_yields_the_cpu_to_its_pipeline_process_also_after_a_restart(server):
    """Request handling runs in the idle scheduling class (OPSD_API_SCHEDULING=idle, the
    default); the pipeline's processes, restarted ones too, keep the class and priority
    the API started with."""
    client, services = server
    pipeline = services.pipeline
    started_with = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    api = next(t for t in threading.enumerate() if t.name == "uvicorn")  # made here
    assert os.sched_getscheduler(api.native_id) == os.SCHED_IDLE
    assert started_with[0] != os.SCHED_IDLE

    def scheduling(pid: int) -> tuple[int, int]:
        return os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)

    assert scheduling(pipeline.pid) == started_with
    first = pipeline.pid
    os.kill(first, signal.SIGKILL)
    until(lambda: pipeline.pid != first and ready(client)["status"] == "ready", "restarted")
    assert scheduling(pipeline.pid) == started_with


@pytest.mark.parametrize("niceness", [10, 19])
def test_with_nice_scheduling_the_api_runs_that_much_nicer_than_its_pipeline(settings, niceness):
    niced = settings.model_copy(update={"api_scheduling": "nice", "api_niceness": niceness})
    started_with = os.getpriority(os.PRIO_PROCESS, 0)
    with serving(niced) as (client, services):
        api = next(t for t in threading.enumerate() if t.name == "uvicorn")
        assert os.sched_getscheduler(api.native_id) == os.sched_getscheduler(0)
        assert os.getpriority(os.PRIO_PROCESS, api.native_id) == min(started_with + niceness, 19)
        assert os.getpriority(os.PRIO_PROCESS, services.pipeline.pid) == started_with
        until(lambda: ready(client)["status"] == "ready", "the pipeline is ready")


def on_a_new_thread(function: Callable[[], object]) -> object:
    """`function()` on a thread of its own (scheduling changes die with it)."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_thread_that_may_use_one_cpu_only_lowers_its_nice_value(settings):
    """The idle class on the only core the pipeline computes on would starve requests."""

    def one_cpu() -> tuple[str, int, int, int]:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        before = os.getpriority(os.PRIO_PROCESS, 0)
        yielded = lower_priority(settings)
        return yielded, os.sched_getscheduler(0), before, os.getpriority(os.PRIO_PROCESS, 0)

    def two_cpus() -> tuple[str, int]:
        return lower_priority(settings), os.sched_getscheduler(0)

    assert settings.api_scheduling == "idle"
    yielded, policy, before, after = on_a_new_thread(one_cpu)
    assert policy != os.SCHED_IDLE and yielded == f"nice {after}"
    assert after == min(before + settings.api_niceness, 19)
    assert on_a_new_thread(two_cpus) == ("idle scheduling class", os.SCHED_IDLE)


def test_killing_the_api_process_ends_its_pipeline_process(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "OPSD_DATA_DIR": str(tmp_path / "data"),
        "OPSD_PORT": str(port),
        "OPSD_DEVICE": "cpu",
    }
    command = [sys.executable, "-c", "from service.cli import app; app()", "serve"]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    children: list[int] = []
    try:

        def is_ready() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                got = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except httpx.HTTPError:
                return False
            return got.json().get("checks", {}).get("pipeline") == "ok"

        until(is_ready, "opsd serve is ready", timeout_s=180)
        children = children_of(serve.pid)
        assert children, "opsd serve has no child process"
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(timeout=30)
        until(lambda: all(is_gone(pid) for pid in children), "the pipeline process ends", 60)
    finally:
        for pid in [serve.pid, *children]:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
        serve.wait(timeout=30)
        log.close()
