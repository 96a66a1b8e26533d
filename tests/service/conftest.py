"""Real Postgres and Redis for the service tests: a database and a key prefix per use.

`OPSD_TEST_POSTGRES_URL` is the admin URL new databases are created through (default:
the local `test` database); `OPSD_TEST_REDIS_URL` the Redis tests use. Both must be
running: a test that cannot reach them fails, it does not skip.
"""

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ADMIN_URL = os.environ.get(
    "OPSD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OPSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class PostgresDatabases:
    """Creates empty databases `opsd_test_<random>`; drops them on `drop` or at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self):
        return create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def create(self) -> str:
        name = f"opsd_test_{uuid.uuid4().hex[:12]}"
        with self._admin().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        self.created.append(url)
        return url

    def drop(self, url: str) -> None:
        with self._admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        if url in self.created:
            self.created.remove(url)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(ADMIN_URL)
    yield databases
    for url in list(databases.created):
        databases.drop(url)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix:` (what a FLUSH does to one test's keys)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the real Redis, deleted afterwards."""
    prefix = f"opsd-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(REDIS_URL, prefix)
