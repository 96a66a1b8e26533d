"""One storage suite, two backends: every test runs on a SQLite file and on real Postgres.

Postgres (tests/service/conftest.py): each migration test gets its own new database;
repository tests share one database migrated once per session, truncated before each test.
"""

import shutil
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.storage import Repository, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from service.storage.models import Base, Environment
from trainer.config import RunConfig


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, request) -> Iterator[str]:
    """The URL of an empty database (no tables) on the parametrized backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'opsd.db'}"
        return
    postgres = request.getfixturevalue("postgres")
    url = postgres.create()
    yield url
    postgres.drop(url)


@pytest.fixture(scope="session")
def migrated(tmp_path_factory, postgres) -> dict[str, str]:
    """Per backend, a database migrated once (migrating for each test is slow)."""
    urls = {
        "sqlite": f"sqlite:///{tmp_path_factory.mktemp('migrated') / 'opsd.db'}",
        "postgres": postgres.create(),
    }
    for url in urls.values():
        upgrade(url)
    return urls


@pytest.fixture
def repo(backend, migrated, tmp_path) -> Iterator[Repository]:
    """A repository on an empty migrated database: a copy of the SQLite file; on
    Postgres the session's database with every table truncated and ids restarted."""
    if backend == "sqlite":
        shutil.copy(make_url(migrated["sqlite"]).database, tmp_path / "opsd.db")
        engine = make_engine(f"sqlite:///{tmp_path / 'opsd.db'}")
    else:
        engine = make_engine(migrated["postgres"])
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield Repository(make_sessionmaker(engine))
    engine.dispose()


@pytest.fixture
def env(repo) -> Environment:
    return repo.create_environment("arith", "Arithmetic", {"digits": 2})


@pytest.fixture
def run_config() -> RunConfig:
    return RunConfig(model="tiny", steps=5, prompts_per_step=2, samples_per_prompt=2)


def trajectory(group: int, sample: int, verdict: str = "ok", **overrides) -> dict:
    """A trajectory as the worker passes it: Rollout fields plus its place in the step."""
    return {
        "group_index": group,
        "sample_index": sample,
        "task_id": f"task-{group}",
        "prompt": f"What is {group} + {sample}?",
        "response": str(group + sample),
        "reward": 1.0 if verdict == "ok" else 0.0,
        "verdict": verdict,
        "feedback": None if verdict == "ok" else "expected something else",
        "teacher_context": "A correct solution: ...",
        "truncated": False,
        **overrides,
    }


@pytest.fixture(name="trajectory")
def trajectory_factory():
    return trajectory
