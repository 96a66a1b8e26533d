"""Apps under test, on both stacks, with nothing training (`background=False`).

- sqlite: a SQLite file (migrated by the app on start, as in embedded mode) and the
  in-process bus;
- postgres: a Postgres database migrated once per session and truncated before each
  test (the app does not migrate Postgres), and a real Redis under a random key prefix
  that is deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from service.app import create_app
from service.settings import Settings
from service.storage import Repository
from service.storage.migrate import upgrade
from service.storage.models import Base

ADMIN_URL = os.environ.get(
    "OPSD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OPSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def admin_engine():
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def create_database() -> str:
    """A new, empty Postgres database; returns its URL."""
    name = f"opsd_test_{uuid.uuid4().hex[:12]}"
    with admin_engine().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    with admin_engine().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


def delete_prefix(prefix: str) -> None:
    """Delete every Redis key under `prefix:`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One migrated Postgres database for the session (migrating per test is slow)."""
    url = create_database()
    upgrade(url)
    yield url
    drop_database(url)


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
    prefix = f"opsd-test-{uuid.uuid4().hex[:12]}"
    yield Settings(
        data_dir=tmp_path,
        database_url=url,
        redis_url=REDIS_URL,
        bus_prefix=prefix,
        poll_s=0.02,
        device="cpu",
    )
    delete_prefix(prefix)


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, poll_s=0.02, device="cpu")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient of an app with `settings` (closed after the test);
    nothing trains unless `background=True`."""
    clients: list[TestClient] = []

    def make(settings: Settings, *, background: bool = False, **client_kwargs: Any) -> TestClient:
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
