"""The hot reads of the API and the pipeline use an index in the order they read, and the
SSE poll's state read needs no configuration.

The plans are SQLite's (`EXPLAIN QUERY PLAN` of the very statement the repository
sends): SQLite picks indexes by shape, not by table statistics, so an empty database
shows the plan a large one gets.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import event

from service.storage import NotFound, Repository, RunStatus
from service.storage.repository import encode_cursor


@pytest.fixture
def backend() -> str:
    return "sqlite"


def plan_of(repo: Repository, call: Callable[[], object]) -> str:
    """SQLite's plan of the last statement `call` sends."""
    engine = repo.sessions.kw["bind"]
    sent: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    statement, parameters = sent[-1]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return " | ".join(row[-1] for row in rows)


def test_a_page_of_trajectories_walks_the_run_s_id_index_without_sorting(repo):
    plan = plan_of(repo, lambda: repo.list_trajectories(1, limit=50, cursor=encode_cursor(7)))
    assert "ix_trajectories_run_id_id" in plan and "TEMP B-TREE" not in plan, plan


def test_runs_by_status_are_read_through_an_index(repo):
    plan = plan_of(repo, lambda: repo.list_runs(50, None, RunStatus.running))
    assert "ix_runs_status_id" in plan and "TEMP B-TREE" not in plan, plan
    plan = plan_of(repo, lambda: repo.runs_with_status(RunStatus.queued, RunStatus.running))
    assert "ix_runs_status_id" in plan, plan


def test_run_status_reads_the_state_alone(repo, env, run_config):
    run = repo.create_run(env.id, run_config)
    assert repo.run_status(run.id) == RunStatus.queued
    plan = plan_of(repo, lambda: repo.run_status(run.id))
    assert "INTEGER PRIMARY KEY" in plan, plan
    with pytest.raises(NotFound):
        repo.run_status(run.id + 1)
