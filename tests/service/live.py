"""A real uvicorn server (in a thread) serving `create_app(settings, background=True)`, so
the orchestrator and the trainer worker run inside it, with a `Client` on the other end."""

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(settings: Settings) -> Iterator[Client]:
    """A Client talking to a live server; the server stops (its lifespan closes) on exit."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, background=True), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start within 60s"
        time.sleep(0.02)
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=30.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not shut down"
