"""Round trips of every entity through the repository, on SQLite and Postgres."""

from datetime import UTC

import pytest

from service.storage import AlreadyExists, InvalidCursor, NotFound, RunStatus
from trainer.config import RunConfig

from ..records import set_status


def test_environment_round_trips_by_id_and_by_name(repo, env):
    assert env.id is not None
    by_name = repo.get_environment("arith")
    by_id = repo.get_environment(env.id)
    assert (by_name.id, by_name.kind, by_name.config) == (env.id, "Arithmetic", {"digits": 2})
    assert by_id.name == "arith"
    assert by_id.created_at.tzinfo is not None
    assert [e.name for e in repo.list_environments()] == ["arith"]


def test_environment_names_are_unique(repo, env):
    with pytest.raises(AlreadyExists):
        repo.create_environment("arith", "Other", {})


def test_missing_rows_raise_not_found(repo):
    with pytest.raises(NotFound):
        repo.get_environment("nope")
    with pytest.raises(NotFound):
        repo.get_run(12345)
    with pytest.raises(NotFound):
        repo.get_trajectory(12345)
    with pytest.raises(NotFound):
        repo.transition(12345, [RunStatus.queued], RunStatus.running)


def test_run_round_trips_its_full_run_config(repo, env, run_config):
    run = repo.create_run(env.id, run_config)
    got = repo.get_run(run.id)
    assert got.status is RunStatus.queued
    assert (got.model, got.steps_done, got.policy_version, got.error) == ("tiny", 0, 0, None)
    assert RunConfig.model_validate(got.config) == run_config
    assert got.created_at.tzinfo is not None and got.updated_at.tzinfo is not None


def test_run_on_a_missing_environment_is_refused(repo, run_config):
    with pytest.raises(NotFound):
        repo.create_run(999, run_config)


def test_transition_stores_status_and_error_and_touches_updated_at(repo, env, run_config):
    run = repo.create_run(env.id, run_config)
    repo.transition(run.id, [RunStatus.queued], RunStatus.running)
    failed = repo.transition(run.id, [RunStatus.running], RunStatus.failed, "CUDA out of memory")
    got = repo.get_run(run.id)
    assert (got.status, got.error) == (RunStatus.failed, "CUDA out of memory")
    assert failed.updated_at >= run.updated_at


def test_list_runs_filters_by_status(repo, env, run_config):
    a = repo.create_run(env.id, run_config)
    repo.create_run(env.id, run_config)
    set_status(repo, a.id, RunStatus.running)
    items, cursor = repo.list_runs(status=RunStatus.running)
    assert [r.id for r in items] == [a.id] and cursor is None


def test_list_runs_pages_return_every_run_exactly_once_newest_first(repo, env, run_config):
    ids = [repo.create_run(env.id, run_config).id for _ in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        items, cursor = repo.list_runs(limit=3, cursor=cursor)
        seen += [r.id for r in items]
        pages += 1
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    assert pages == 3


def test_a_full_last_page_has_no_next_cursor(repo, env, run_config):
    for _ in range(4):
        repo.create_run(env.id, run_config)
    first, cursor = repo.list_runs(limit=2)
    second, cursor = repo.list_runs(limit=2, cursor=cursor)
    assert len(first) == len(second) == 2 and cursor is None


def test_a_forged_cursor_is_rejected(repo):
    with pytest.raises(InvalidCursor):
        repo.list_runs(cursor="not-a-cursor")


def test_checkpoints_round_trip_in_step_order(repo, env, run_config):
    run = repo.create_run(env.id, run_config)
    repo.add_checkpoint(run.id, 20, "/ckpt/20")
    repo.add_checkpoint(run.id, 10, "/ckpt/10")
    got = repo.list_checkpoints(run.id)
    assert [(c.step, c.path) for c in got] == [(10, "/ckpt/10"), (20, "/ckpt/20")]
    assert got[0].created_at.tzinfo == UTC


def test_events_after_returns_only_newer_events_of_that_run_in_order(repo, env, run_config):
    run = repo.create_run(env.id, run_config)
    other = repo.create_run(env.id, run_config)
    first = repo.add_event(run.id, "status", {"status": "running"})
    repo.add_event(other.id, "status", {"status": "running"})
    second = repo.add_event(run.id, "step", {"step": 0, "loss": 1.5})
    third = repo.add_event(run.id, "step", {"step": 1, "loss": float("nan")})
    repo.add_event(None, "server", {"msg": "started"})

    newer = repo.events_after(run.id, first.id)
    assert [e.id for e in newer] == [second.id, third.id]
    assert [e.payload for e in newer] == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": None}]
    assert first.id < second.id < third.id
    assert repo.events_after(run.id, third.id) == []
    assert len(repo.events_after(None)) == 5


def test_evaluations_of_many_runs_come_back_per_run_in_step_order(repo, env, run_config):
    a, b, quiet = (repo.create_run(env.id, run_config).id for _ in range(3))
    for run_id, step, accuracy in [(b, 4, 0.5), (a, 2, 0.25), (b, 0, 0.125), (a, 0, 0.0)]:
        repo.add_evaluation(run_id, step, accuracy)
    assert repo.evaluations_of([a, b, quiet]) == {
        a: [(0, 0.0), (2, 0.25)],
        b: [(0, 0.125), (4, 0.5)],
    }
    assert repo.evaluations_of([]) == {}
