"""A real uvicorn server in a thread, on a loopback port the OS picked: `LiveServer` for
tests that drive the API over HTTP, `live_server` for a whole service (orchestrator and
trainer worker running) with a `Client` on the other end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from service.app import create_app
from service.client import Client
from service.settings import Settings


class LiveServer:
    """uvicorn serving `create_app(settings, background=...)` until the `with` ends."""

    def __init__(self, settings: Settings, *, background: bool = False) -> None:
        self.settings = settings
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, background=background)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="uvicorn", daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start within 60s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not shut down"


@contextmanager
def live_server(settings: Settings) -> Iterator[Client]:
    """A Client talking to a live, training server; the server stops (its lifespan
    closes) on exit."""
    with (
        LiveServer(settings, background=True) as server,
        Client(server.url, timeout=30.0) as client,
    ):
        yield client
