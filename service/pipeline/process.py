"""The pipeline process: sampling (the orchestrator) and, in embedded mode, training (the
in-process trainer worker) in a child of the API process.

Both are CPU-bound Python. Inside the API process they hold the interpreter lock
against request handling: under read load the API answers slowly and training slows
down. So the API process only serves requests against the record, and its lifespan
starts one child with the same Settings and its own engine and bus (`multiprocessing`
spawn: torch and fork do not mix). In embedded mode the in-process bus lives in the
child, since the orchestrator and the worker both do.

Two one-way pipes join them:
- API -> pipeline: `wake` (a run was created, stopped, resumed or cancelled: look for
  work now, not at the next poll of the record) and `stop`. End of file means the API
  process died: the pipeline stops too, so a `kill -9` of the API leaves no orphan.
- pipeline -> API: `ready` once it drives runs, and in embedded mode what the API's own
  in-process bus must still see: worker heartbeats (/readyz, /metrics), events (which
  tell the SSE streams there to read the record) and the live feedback
  (/v1/runs/{id}/feedback).
A pipeline process that exits is logged and restarted with a backoff; /readyz is not
ready until it is back.

Training comes first: once the child runs, the API lowers its own CPU priority
(`Settings.api_scheduling`), so that readers hammering the API take the cores training
leaves idle, not training's. By default request handling moves to the kernel's idle
scheduling class: a core that runs only requests counts as free when a pipeline thread
wakes up, which then runs there at once, where a lower nice value alone still shares
that core with it for a while (distributed, training under read load kept 0.89 of its
speed in the idle class and 0.81 at nice 10: benchmarks/README.md). On Linux a thread's
scheduling class and nice value are inherited by the threads and processes it starts,
so the child is always started from a thread made before the API lowered its priority
(`_spawner`).

`Settings.pipeline_process = False` keeps everything in the API process (`start_pipeline`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, suppress
from importlib import import_module
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from service.bus import Bus, make_bus
from service.pipeline.runtime import cancel_and_wait
from service.settings import Settings
from service.storage import Repository, make_engine, make_sessionmaker

if TYPE_CHECKING:
    from service.pipeline.orchestrator import Orchestrator
    from service.pipeline.worker import TrainerWorker

log = logging.getLogger(__name__)

WAKE, STOP = b"w", b"s"
MIRRORED = ("heartbeat", "publish_event", "publish_feedback", "delete_run")  # bus calls
PRELOAD = "trainer.model"  # what the API process itself still needs of the trainer
STOP_TIMEOUT_S = 30.0  # a stopping pipeline first finishes the step or evaluation under way
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0  # waits before restarting an exited pipeline


async def start_pipeline(
    stack: AsyncExitStack, repo: Repository, bus: Bus, settings: Settings
) -> tuple[Orchestrator, TrainerWorker | None]:
    """Start the orchestrator and, when the settings say so, the trainer worker on this
    event loop; `stack` closes them."""
    from service.pipeline.orchestrator import Orchestrator
    from service.pipeline.worker import TrainerWorker

    worker = None
    if settings.trains_in_process:  # the consumer first, so no batch waits for it
        worker = TrainerWorker(repo, bus, settings)
        await worker.start()
        stack.push_async_callback(worker.aclose)
    orchestrator = Orchestrator(repo, bus, settings)
    await orchestrator.start()
    stack.push_async_callback(orchestrator.aclose)
    return orchestrator, worker


def lower_priority(settings: Settings) -> str:
    """Make the calling thread, and the threads it starts from now on, yield the CPU as
    `settings.api_scheduling` says; what it did, in words."""
    if settings.api_scheduling == "idle":
        if not hasattr(os, "SCHED_IDLE"):
            log.info("no idle scheduling class on this system; lowering the nice value")
        elif len(os.sched_getaffinity(0)) < 2:  # the pipeline takes the only core: it would starve
            log.info("one CPU: request handling lowers its nice value, not its class")
        else:
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
                return "idle scheduling class"
            except OSError as error:
                log.warning("no idle scheduling class here (%s); lowering the nice value", error)
    return f"nice {os.nice(settings.api_niceness)}"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


class PipelineProcess:
    """The API's handle on its pipeline process: starts it, restarts it when it exits,
    wakes it, stops it. `bus` is the API's own; in embedded mode the pipeline's
    heartbeats, events and feedback are replayed on it."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings, self.bus = settings, bus
        self.process: BaseProcess | None = None
        self.ready = False  # the current process drives runs
        self.exits = 0  # times it exited while it should have run
        self.last_exit: str | None = None
        self._writer: Connection | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False
        self._restart_at: float | None = None
        self._background: set[asyncio.Task] = set()
        # made now, at the caller's priority, which every pipeline process it starts gets
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="pipeline spawner")
        self._spawner.submit(int).result()

    async def __aenter__(self) -> PipelineProcess:
        self._supervisor = asyncio.create_task(self._supervise(), name="pipeline process")
        # Creating a run resolves its model name (trainer.model, hence torch): imported
        # now, in the background, not by the first create (seconds on a busy machine).
        self._background.add(asyncio.create_task(asyncio.to_thread(import_module, PRELOAD)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def wake(self) -> None:
        """Have the orchestrator look for work now."""
        self._send(WAKE)

    def check(self) -> str:
        """`ok` while the pipeline runs and drives runs; otherwise what it is doing."""
        alive = self.process is not None and self.process.is_alive()
        if alive and self.ready:
            return "ok"
        if self._restart_at is not None:
            wait_s = max(0.0, self._restart_at - time.monotonic())
            return f"the pipeline process {self.last_exit}; restarting in {wait_s:.0f}s"
        return "the pipeline process is starting"

    async def aclose(self) -> None:
        """Stop the pipeline (it finishes the step under way) and do not restart it."""
        self._stopping = True
        process = self.process
        if process is not None and process.is_alive():
            self._send(STOP)
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S + 5)
            if process.is_alive():
                log.warning("the pipeline process did not stop in time; killing it")
                process.kill()
                await asyncio.to_thread(process.join)
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor)
        for task in list(self._background):
            await cancel_and_wait(task)
        self._spawner.shutdown(wait=False)

    def _send(self, message: bytes) -> None:
        if self._writer is None:
            return
        with suppress(BlockingIOError):  # a pipe full of unread wakes: one more adds nothing
            try:
                self._writer.send_bytes(message)
            except OSError:  # the process is gone; the supervisor sees to it
                log.debug("pipeline process not reachable", exc_info=True)

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stopping:
            began = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            self.exits += 1
            self.last_exit = f"exited with {describe_exit(code)}"
            if time.monotonic() - began > MAX_BACKOFF_S:
                backoff = FIRST_BACKOFF_S
            level = logging.WARNING if code == 0 else logging.ERROR
            log.log(level, "the pipeline process %s; restarting in %.0fs", self.last_exit, backoff)
            self._restart_at = time.monotonic() + backoff
            await asyncio.sleep(backoff)
            self._restart_at = None
            backoff = min(2 * backoff, MAX_BACKOFF_S)

    async def _run_once(self) -> int | None:
        """Start one pipeline process and wait until it exits; its exit code."""
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        wake_reader, wake_writer = context.Pipe(duplex=False)
        report_reader, report_writer = context.Pipe(duplex=False)
        process = context.Process(
            target=child_main,
            args=(self.settings, wake_reader, report_writer, logging.getLogger().level),
            name="opsd-pipeline",
            daemon=True,
        )
        # Waited for right here, not awaited: a cancellation cannot lose a started process.
        self._spawner.submit(process.start).result()
        wake_reader.close()  # only the child holds these now: its death is our end of file,
        report_writer.close()  # ours is its end of file on the wake pipe
        os.set_blocking(wake_writer.fileno(), False)
        self.process, self._writer, self.ready = process, wake_writer, False
        log.info("pipeline process %d started", process.pid)
        ended = asyncio.Event()
        reader = threading.Thread(
            target=self._read_reports,
            args=(report_reader, process.sentinel, loop, ended),
            name="pipeline reports",
            daemon=True,
        )
        reader.start()
        try:
            await ended.wait()
            await asyncio.to_thread(process.join)
            return process.exitcode
        finally:
            self._writer, self.ready = None, False
            wake_writer.close()

    def _read_reports(
        self,
        reader: Connection,
        sentinel: int,
        loop: asyncio.AbstractEventLoop,
        ended: asyncio.Event,
    ) -> None:
        """The reporting pipe, read in a thread until the process exits."""
        try:
            while True:
                ready = wait([reader, sentinel])
                if reader not in ready and not reader.poll():
                    return  # exited, and everything it sent was read
                try:
                    message = reader.recv()
                except (EOFError, OSError):
                    return
                loop.call_soon_threadsafe(self._on_report, message)
        finally:
            reader.close()
            with suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(ended.set)

    def _on_report(self, message: tuple[Any, ...]) -> None:
        kind, *args = message
        if kind == "ready":
            self.ready = True
            log.info("pipeline process %s drives runs", self.pid)
            return
        if kind not in MIRRORED:
            log.warning("unknown report %r from the pipeline process", kind)
            return
        task = asyncio.ensure_future(getattr(self.bus, kind)(*args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# --- in the pipeline process ---


class Reporter:
    """Sends messages to the API process; a broken pipe (the API died) calls `on_broken`."""

    def __init__(self, connection: Connection, on_broken) -> None:
        self.connection, self.on_broken = connection, on_broken
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self.connection.send(message)
            except OSError:
                self.broken = True
                self.on_broken()


class MirroredBus:
    """The pipeline's in-process bus; heartbeats, events, feedback and run deletions are
    also sent to the API process, whose own in-process bus answers for them there."""

    def __init__(self, bus: Bus, reporter: Reporter) -> None:
        self._bus, self._reporter = bus, reporter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def _mirrored(self, name: str, *args: Any) -> Any:
        result = await getattr(self._bus, name)(*args)
        self._reporter.send((name, *args))
        return result

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        await self._mirrored("heartbeat", worker_id, ttl_s)

    async def publish_event(self, run_id: str, event: dict[str, Any]) -> None:
        await self._mirrored("publish_event", run_id, event)

    async def publish_feedback(self, run_id: str, items: list[dict[str, Any]]) -> list[str]:
        return await self._mirrored("publish_feedback", run_id, list(items))

    async def delete_run(self, run_id: str) -> None:
        await self._mirrored("delete_run", run_id)


def limit_torch_threads(threads: int) -> None:
    """Sampling and training use at most `threads` cores (torch's intra-op pool)."""
    import torch

    torch.set_num_threads(threads)
    log.info("torch uses %d CPU threads", threads)


def child_main(settings: Settings, wake: Connection, report: Connection, log_level: int) -> None:
    """The pipeline process's entry point."""
    logging.basicConfig(
        level=log_level,
        format="%(asctime)s %(levelname)s %(name)s [pipeline %(process)d]: %(message)s",
    )
    with suppress(KeyboardInterrupt):  # a Ctrl-C before the loop's own handler is set
        from service.cli.common import quiet_libraries

        quiet_libraries()
        limit_torch_threads(settings.torch_threads or max(1, (os.cpu_count() or 1) - 1))
        asyncio.run(_pipeline(settings, wake, report))


async def _pipeline(settings: Settings, wake: Connection, report: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    reporter = Reporter(report, on_broken=lambda: loop.call_soon_threadsafe(stop.set))
    bus = make_bus(settings.redis_url, settings.bus_prefix)
    if settings.redis_url is None:
        bus = MirroredBus(bus, reporter)
    engine = make_engine(settings.database_url)
    async with AsyncExitStack() as stack:
        stack.callback(engine.dispose)
        stack.push_async_callback(bus.aclose)
        repo = Repository(make_sessionmaker(engine))
        orchestrator, _ = await start_pipeline(stack, repo, bus, settings)
        threading.Thread(
            target=_listen, args=(wake, loop, orchestrator, stop), name="wakes", daemon=True
        ).start()
        reporter.send(("ready",))
        await stop.wait()
        log.info("pipeline process stopping")
        # Whatever hangs in the shutdown (a thread that never returns) does not keep an
        # orphan alive.
        deadline = threading.Timer(STOP_TIMEOUT_S, os._exit, (1,))
        deadline.daemon = True
        deadline.start()
    log.info("pipeline process stopped")


def _listen(
    wake: Connection, loop: asyncio.AbstractEventLoop, orchestrator, stop: asyncio.Event
) -> None:
    """Wakes from the API until `stop` or the API's end (end of file: it died)."""
    try:
        while wake.recv_bytes() != STOP:
            loop.call_soon_threadsafe(orchestrator.wake)
    except (EOFError, OSError):
        log.warning("the API process is gone; the pipeline stops")
    with suppress(RuntimeError):  # the loop already closed
        loop.call_soon_threadsafe(stop.set)
