"""Sandbox test fixtures: one event loop for the session, and one started sandbox
per backend that this machine can run.

A backend that cannot run here is skipped, unless it is named in
OPSD_SANDBOX_REQUIRE (comma-separated, as CI sets it): then the tests fail.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from sandbox import Limits, Sandbox, SandboxSettings, make_sandbox, unavailable

T = TypeVar("T")
BACKENDS = ("bwrap", "docker", "process")
REQUIRED = {name for name in os.environ.get("OPSD_SANDBOX_REQUIRE", "").split(",") if name}
MiB = 1 << 20
# Limits of the whole suite. Docker makes a container per (memory, processes, tmp):
# tests change only wall, CPU and output limits, so the warm containers serve them all.
LIMITS = Limits(
    wall_seconds=5,
    cpu_seconds=2,
    memory_bytes=128 * MiB,
    processes=16,
    output_bytes=64 * 1024,
    tmp_bytes=8 * MiB,
)
SECRET = "opsd-test-secret-7c2f9a"  # in the test process's environment and secret files


class Loop:
    """An event loop in a thread, so that session fixtures and tests share it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="session")
def aio() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def skip_unless_available(name: str) -> None:
    reason = unavailable(name, SandboxSettings(backend=name))
    if reason and name in REQUIRED:
        pytest.fail(f"{name} sandbox is required here (OPSD_SANDBOX_REQUIRE) but: {reason}")
    if reason:
        pytest.skip(f"{name} sandbox unavailable: {reason}")


@pytest.fixture(scope="session")
def limits() -> Limits:
    return LIMITS


@pytest.fixture(scope="session")
def secret_env() -> Iterator[str]:
    """A secret in the service's environment while every sandbox starts and runs."""
    os.environ["OPSD_TEST_SECRET"] = SECRET
    yield SECRET
    os.environ.pop("OPSD_TEST_SECRET", None)


@pytest.fixture(scope="session", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest, aio: Loop, secret_env: str) -> Iterator[Sandbox]:
    skip_unless_available(request.param)
    box = make_sandbox(request.param, workers=4, limits=LIMITS)
    aio.run(box.start())
    yield box
    aio.run(box.close())


@pytest.fixture(scope="session", params=BACKENDS)
def one_worker(request: pytest.FixtureRequest, aio: Loop, secret_env: str) -> Iterator[Sandbox]:
    """A sandbox of one warm worker, which runs every job one after another."""
    skip_unless_available(request.param)
    box = make_sandbox(request.param, workers=1, limits=LIMITS)
    yield box
    aio.run(box.close())
