"""Apps under test, on both stacks, with nothing training (`background=False`).

- sqlite: a SQLite file (migrated by the app on start, as in embedded mode) and the
  in-process bus;
- postgres: a Postgres database migrated once per session and truncated before each
  test (the app does not migrate Postgres), and a real Redis under a random key prefix
  that is deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from service.app import create_app
from service.settings import Settings
from service.storage import Repository
from service.storage.migrate import upgrade
from service.storage.models import Base

from ..conftest import REDIS_URL


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """One migrated Postgres database for the session (migrating per test is slow)."""
    url = postgres.create()
    upgrade(url)
    return url


def truncate(url: str) -> None:
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=NullPool
    )
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path) -> Iterator[Settings]:
    """Settings of an app on the parametrized stack (fast polling for SSE tests)."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, poll_s=0.02, device="cpu")
        return
    url = request.getfixturevalue("postgres_url")
    truncate(url)
    prefix = request.getfixturevalue("redis_prefix")  # deleted after the test
    yield Settings(
        data_dir=tmp_path,
        database_url=url,
        redis_url=REDIS_URL,
        bus_prefix=prefix,
        poll_s=0.02,
        device="cpu",
    )


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, poll_s=0.02, device="cpu")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient of an app with `settings` (closed after the test);
    nothing trains unless `background=True`. Requests come from a loopback client to
    `localhost`, as a local caller's would (a server without a token serves no other)."""
    clients: list[TestClient] = []

    def make(settings: Settings, *, background: bool = False, **client_kwargs: Any) -> TestClient:
        client_kwargs.setdefault("base_url", "http://localhost")
        client_kwargs.setdefault("client", ("127.0.0.1", 50000))
        client = TestClient(create_app(settings, background=background), **client_kwargs)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(settings, make_client) -> TestClient:
    return make_client(settings)


@pytest.fixture
def repo(client) -> Repository:
    """The app's own repository, to put rows where the routes read them."""
    return client.app.state.services.repo


@pytest.fixture
def run_async(client) -> Callable:
    """Call an async function (a bus method) on the app's event loop."""
    return lambda fn, *args: client.portal.call(fn, *args)
