"""Warm workers, host side: what every backend shares.

A backend starts workers (sandbox/warm.py behind a jail, in a container, or bare)
and talks to each over a pair of streams. `WarmSandbox` keeps `settings.workers`
of them, hands each run to an idle one, and replaces any that misbehaves. Before a
worker takes its next job, it must have said that it cleaned up after the last
one; one that cannot (or died meanwhile) is replaced first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sandbox import warm
from sandbox.base import (
    ExecutionRecord,
    Limits,
    Program,
    SandboxError,
    SandboxSettings,
    SandboxUnavailable,
    Verdict,
    classify,
)

logger = logging.getLogger(__name__)

WARM_SOURCE = Path(warm.__file__).read_text()
GRACE_SECONDS = 10.0  # beyond the wall limit, before the host gives up on a worker
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
}


def default_python(configured: str | None = None) -> str:
    """The interpreter for warm workers: the configured one, else the system's."""
    if configured:
        return configured
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(path, os.X_OK):
            return path
    return sys.executable


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class OomCounter(Protocol):
    def oom_kills(self) -> int: ...


class SandboxWorker:
    """One started warm worker of a sandbox backend (a Python process in a jail, a container
    or on the host, running sandbox/warm.py): its stdout as `reader`, stdin as `writer`, and `stop`;
    `memory`, where the host holds its jobs' memory cgroup, counts their OOM kills."""

    def __init__(
        self,
        reader: Reader,
        writer: asyncio.StreamWriter,
        stop: Callable[[], Awaitable[str | None]],
        limits: Limits | None = None,
        memory: OomCounter | None = None,
    ) -> None:
        self.reader, self.writer, self.stop = reader, writer, stop
        self.limits = limits  # what it was made for: a jail's /tmp, a container's cgroup
        self.memory = memory
        self.cleaning = False  # a job ended; its clean-up report is still to come

    async def _frame(self, limit: int) -> bytes:
        (n,) = warm.FRAME.unpack(await self.reader.readexactly(warm.FRAME.size))
        if n > limit:
            raise SandboxError(f"worker sent a frame of {n} bytes")
        return await self.reader.readexactly(n)

    async def hello(self) -> dict[str, Any]:
        hello = json.loads(await self._frame(4096))
        await self._frame(0)
        if not hello.get("ready"):
            raise SandboxError(f"unexpected greeting {hello!r}")
        return hello

    async def call(self, header: dict[str, Any], payload: bytes, limits: Limits):
        oom_before = self.memory.oom_kills() if self.memory else 0
        head = json.dumps(header).encode()
        self.writer.write(warm.FRAME.pack(len(head)) + head)
        self.writer.write(warm.FRAME.pack(len(payload)) + payload)
        await self.writer.drain()
        raw = json.loads(await self._frame(1 << 20))
        output = await self._frame(2 * limits.output_bytes)
        self.cleaning = True
        if self.memory and self.memory.oom_kills() > oom_before:
            raw["oom"] = True  # the kernel killed one of the job's processes
        return raw, output

    async def settle(self) -> None:
        """Wait for the report on the last job's clean-up; raise unless it is clean."""
        if not self.cleaning:
            return
        report = json.loads(await self._frame(1 << 16))
        await self._frame(0)
        if not report.get("clean"):
            raise SandboxError(f"worker could not clean up: {report.get('error')}")
        self.cleaning = False


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def encode(program: Program, limits: Limits) -> tuple[dict[str, Any], bytes]:
    """The request for sandbox/warm.py: a JSON header and the files + stdin bytes."""
    blobs = [_as_bytes(data) for data in program.files.values()]
    stdin = _as_bytes(program.stdin)
    header = {
        "argv": program.command,
        "env": program.env,
        "files": [[name, len(b)] for name, b in zip(program.files, blobs, strict=True)],
        "stdin": len(stdin),
        "limits": {
            "wall": limits.wall_seconds,
            "cpu": limits.cpu_seconds,
            "memory": limits.memory_bytes,
            "processes": limits.processes,
            "output": limits.output_bytes,
            "tmp": limits.tmp_bytes,
        },
    }
    return header, b"".join([*blobs, stdin])


class WarmSandbox:
    """A Sandbox over a pool of warm workers; backends implement `_spawn`."""

    name: ClassVar[str]
    unsafe: ClassVar[bool] = False

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._idle: asyncio.Queue[tuple[int, SandboxWorker | None]] = asyncio.Queue()
        for slot in range(settings.workers):
            self._idle.put_nowait((slot, None))
        self._closed = False

    @property
    def label(self) -> str:
        return f"{self.name} sandbox" + (" (UNSAFE: no isolation)" if self.unsafe else "")

    async def _spawn(self, slot: int, limits: Limits) -> SandboxWorker:
        raise NotImplementedError

    def _fits(self, worker: SandboxWorker, limits: Limits) -> bool:
        """Whether `worker` can run a job with these limits (else it is replaced)."""
        return True

    async def _start_worker(self, slot: int, limits: Limits) -> SandboxWorker:
        try:
            worker = await self._spawn(slot, limits)
        except (OSError, SandboxError) as e:
            raise SandboxUnavailable(f"{self.label}: cannot start a worker: {e}") from e
        try:
            hello = await asyncio.wait_for(worker.hello(), self.settings.start_timeout_seconds)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
            detail = await worker.stop() or e
            raise SandboxUnavailable(f"{self.label}: worker did not start: {detail}") from e
        logger.debug("%s: worker %d ready (%s)", self.label, slot, hello)
        return worker

    async def start(self) -> None:
        """Start every worker now rather than on first use."""
        slots = [self._idle.get_nowait() for _ in range(self._idle.qsize())]

        async def ready(slot: int, worker: SandboxWorker | None) -> tuple[int, SandboxWorker]:
            try:
                return slot, worker or await self._start_worker(slot, self.settings.limits)
            except BaseException:
                self._idle.put_nowait((slot, None))
                raise

        started = await asyncio.gather(*(ready(*s) for s in slots), return_exceptions=True)
        for item in started:
            if not isinstance(item, BaseException):
                self._idle.put_nowait(item)
        for item in started:
            if isinstance(item, BaseException):
                raise item

    async def run(self, program: Program, limits: Limits | None = None) -> ExecutionRecord:
        if self._closed:
            raise SandboxError(f"{self.label} is closed")
        limits = limits or self.settings.limits
        header, payload = encode(program, limits)
        slot, worker = await self._idle.get()
        try:
            if worker is not None and not await self._settled(slot, worker):
                worker = None
            if worker is not None and not self._fits(worker, limits):
                await worker.stop()
                worker = None
            if worker is None:
                worker = await self._start_worker(slot, limits)
            timeout = limits.wall_seconds + GRACE_SECONDS
            raw, output = await asyncio.wait_for(worker.call(header, payload, limits), timeout)
            return self._result(raw, output, limits)
        except SandboxUnavailable:
            raise
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            TypeError,
            SandboxError,
            TimeoutError,
        ) as e:
            logger.error("%s: worker %d failed, replacing it: %r", self.label, slot, e)
            if worker is not None:
                await worker.stop()
                worker = None
            return self._record(Verdict.sandbox_error, message=f"worker failed: {e!r}")
        except BaseException:
            if worker is not None:  # cancelled mid-run: the worker's state is unknown
                await asyncio.shield(worker.stop())
                worker = None
            raise
        finally:
            if self._closed and worker is not None:
                await worker.stop()
                worker = None
            self._idle.put_nowait((slot, worker))

    async def _settled(self, slot: int, worker: SandboxWorker) -> bool:
        """Whether `worker` cleaned up after its last job; else it is stopped."""
        try:
            await asyncio.wait_for(worker.settle(), self.settings.start_timeout_seconds)
            return True
        except (OSError, EOFError, ValueError, SandboxError, TimeoutError) as e:  # or it died
            logger.error("%s: worker %d is not clean, replacing it: %r", self.label, slot, e)
        await worker.stop()
        return False

    def _record(self, verdict: Verdict, **fields: Any) -> ExecutionRecord:
        return ExecutionRecord(verdict=verdict, backend=self.name, unsafe=self.unsafe, **fields)

    def _result(self, raw: dict[str, Any], output: bytes, limits: Limits) -> ExecutionRecord:
        stdout, stderr = output[: raw.get("stdout_len", 0)], output[raw.get("stdout_len", 0) :]
        stderr_text = stderr.decode(errors="replace")
        verdict, message = classify(raw, stderr_text, limits)
        if verdict == Verdict.sandbox_error:
            logger.error("%s: the job could not start: %s", self.label, message)
            return self._record(verdict, message=message)
        record = self._record(
            verdict,
            exit_code=raw["exit_code"],
            signal=raw["signal"],
            stdout=stdout.decode(errors="replace"),
            stderr=stderr_text,
            stdout_truncated=raw["stdout_total"] > len(stdout),
            stderr_truncated=raw["stderr_total"] > len(stderr),
            wall_seconds=raw["wall"],
            cpu_seconds=raw["cpu"],
            peak_memory_bytes=raw["peak_memory"],
            message=message,
        )
        logger.debug("%s: %s in %.3f s (%s)", self.label, verdict, record.wall_seconds, message)
        return record

    async def run_many(
        self, programs: Sequence[Program], limits: Limits | None = None
    ) -> list[ExecutionRecord]:
        """Run all programs, `settings.workers` at a time; records in input order."""
        return list(await asyncio.gather(*(self.run(p, limits) for p in programs)))

    async def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            _, worker = self._idle.get_nowait()
            if worker is not None:
                await worker.stop()

    async def __aenter__(self) -> WarmSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def descendants(root: int) -> list[int]:
    """Every process below `root`, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def spawn_process(
    argv: list[str], label: str, env: dict[str, str], limits: Limits | None = None, **popen: Any
) -> SandboxWorker:
    """A worker that is a local process (bwrap, or a bare interpreter)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
        limit=1 << 20,
        **popen,
    )
    errors: list[str] = []

    async def log_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            errors.append(text)
            del errors[:-20]
            logger.warning("%s: worker %d: %s", label, proc.pid, text)

    watcher = asyncio.create_task(log_stderr())

    async def stop() -> str:
        tree = [proc.pid, *descendants(proc.pid)]
        for pid in tree:  # the jail's processes, which left our process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await proc.wait()
        for _ in range(500):  # until the kernel has torn all of them down
            if not any(os.path.exists(f"/proc/{pid}") for pid in tree[1:]):
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher, 1)
        return "\n".join(errors)

    assert proc.stdin is not None and proc.stdout is not None
    return SandboxWorker(proc.stdout, proc.stdin, stop, limits)
