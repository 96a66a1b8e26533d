"""record_step: one transaction per step, exactly once per batch id; reading steps back."""

import math

import pytest
from sqlalchemy.exc import IntegrityError

from service.storage import NotFound

from ..records import recorded_steps, trajectory_count


@pytest.fixture
def run(repo, env, run_config):
    return repo.create_run(env.id, run_config)


def group_of_four(trajectory) -> list[dict]:
    return [
        trajectory(0, 0, "ok"),
        trajectory(0, 1, "wrong_answer"),
        trajectory(1, 0, "runtime_error"),
        trajectory(1, 1, "ok"),
    ]


def test_record_step_writes_step_trajectories_and_token_scores(repo, run, trajectory):
    rows = group_of_four(trajectory)
    ratios = [[0.1, -0.2], [0.3], [], [0.5, 0.6, 0.7]]
    assert repo.record_step(run.id, 0, "batch-0", {"loss": 0.5}, 1, rows, ratios)

    assert repo.steps_done(run.id) == 1
    assert trajectory_count(repo, run.id) == 4
    got = repo.get_run(run.id)
    assert (got.steps_done, got.policy_version) == (1, 1)
    items, _ = repo.list_trajectories(run.id)
    assert [(t.group_index, t.sample_index, t.verdict) for t in items] == [
        (0, 0, "ok"),
        (0, 1, "wrong_answer"),
        (1, 0, "runtime_error"),
        (1, 1, "ok"),
    ]
    for item, row, ratio in zip(items, rows, ratios, strict=True):
        trajectory_row, log_ratios = repo.get_trajectory(item.id)
        assert log_ratios == ratio
        assert trajectory_row.prompt == row["prompt"] and trajectory_row.response == row["response"]
        assert (trajectory_row.step, trajectory_row.policy_version) == (0, 1)
        assert trajectory_row.feedback == row["feedback"]


def test_record_step_without_log_ratios_stores_no_token_scores(repo, run, trajectory):
    repo.record_step(run.id, 0, "b0", {"reward": 1.0}, 0, [trajectory(0, 0)])
    items, _ = repo.list_trajectories(run.id)
    assert repo.get_trajectory(items[0].id)[1] is None


def test_a_redelivered_batch_returns_false_and_writes_nothing(repo, run, trajectory):
    assert repo.record_step(run.id, 0, "batch-0", {"loss": 0.5}, 1, group_of_four(trajectory))
    assert repo.batch_recorded(run.id, "batch-0")
    again = repo.record_step(run.id, 1, "batch-0", {"loss": 0.4}, 2, group_of_four(trajectory))
    assert again is False
    assert repo.steps_done(run.id) == 1
    assert trajectory_count(repo, run.id) == 4
    assert repo.get_run(run.id).policy_version == 1


def test_the_same_batch_id_in_another_run_is_a_new_batch(repo, env, run, run_config, trajectory):
    other = repo.create_run(env.id, run_config)
    assert repo.record_step(run.id, 0, "batch-0", {}, 1, [trajectory(0, 0)])
    assert repo.record_step(other.id, 0, "batch-0", {}, 1, [trajectory(0, 0)])
    assert not repo.batch_recorded(run.id, "batch-1")


def test_a_failure_mid_step_writes_nothing_of_the_step(repo, run, trajectory):
    rows = group_of_four(trajectory)
    rows[2]["prompt"] = None  # violates NOT NULL after the step and two trajectories
    with pytest.raises(IntegrityError):
        repo.record_step(run.id, 0, "batch-0", {"loss": 0.5}, 1, rows, [[0.1]] * 4)

    assert repo.steps_done(run.id) == 0
    assert trajectory_count(repo, run.id) == 0
    assert not repo.batch_recorded(run.id, "batch-0")
    assert repo.get_run(run.id).steps_done == 0
    # The batch can be recorded once the cause is fixed.
    assert repo.record_step(run.id, 0, "batch-0", {}, 1, group_of_four(trajectory))


def test_recording_the_same_step_number_twice_with_another_batch_fails(repo, run, trajectory):
    repo.record_step(run.id, 0, "batch-0", {}, 1, [trajectory(0, 0)])
    with pytest.raises(IntegrityError):
        repo.record_step(run.id, 0, "batch-1", {}, 1, [trajectory(0, 0)])
    assert trajectory_count(repo, run.id) == 1


def test_record_step_checks_log_ratios_match_trajectories(repo, run, trajectory):
    with pytest.raises(ValueError):
        repo.record_step(run.id, 0, "b", {}, 1, [trajectory(0, 0)], [[0.1], [0.2]])
    with pytest.raises(NotFound):
        repo.record_step(999, 0, "b", {}, 1, [trajectory(0, 0)])


def test_non_finite_floats_are_stored_as_null(repo, run, trajectory):
    repo.record_step(run.id, 0, "b", {"loss": math.nan}, 1, [trajectory(0, 0)], [[math.inf, 0.5]])
    items, _ = repo.list_trajectories(run.id)
    assert repo.get_trajectory(items[0].id)[1] == [None, 0.5]
    assert recorded_steps(repo, run.id)[0].metrics == {"loss": None}


def test_metrics_series_lists_each_metric_in_step_order(repo, run, trajectory):
    for step in (0, 1, 2):
        metrics = {"loss": 1.0 / (step + 1), "reward": float(step)}
        if step == 1:
            metrics["loss"] = math.nan
        repo.record_step(run.id, step, f"b{step}", metrics, step + 1, [trajectory(0, 0)])
    assert repo.metrics_series(run.id) == {
        "loss": [(0, 1.0), (2, 1.0 / 3)],
        "reward": [(0, 0.0), (1, 1.0), (2, 2.0)],
    }


def test_trajectories_filter_by_step_and_by_verdict(repo, run, trajectory):
    for step in (0, 1):
        repo.record_step(run.id, step, f"b{step}", {}, step, group_of_four(trajectory))
    by_step, _ = repo.list_trajectories(run.id, step=1)
    assert len(by_step) == 4 and {t.step for t in by_step} == {1}
    ok, _ = repo.list_trajectories(run.id, verdict="ok")
    assert len(ok) == 4 and {t.verdict for t in ok} == {"ok"}
    both, _ = repo.list_trajectories(run.id, step=0, verdict="wrong_answer")
    assert [(t.step, t.group_index, t.sample_index) for t in both] == [(0, 0, 1)]


def test_trajectory_pages_return_every_trajectory_exactly_once(repo, run, trajectory):
    for step in range(3):
        repo.record_step(run.id, step, f"b{step}", {}, step, group_of_four(trajectory))
    seen, cursor = [], None
    while True:
        items, cursor = repo.list_trajectories(run.id, limit=5, cursor=cursor)
        seen += [(t.step, t.group_index, t.sample_index) for t in items]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 12
    assert seen == sorted(seen)

    ok_pages, cursor = [], None
    while True:
        items, cursor = repo.list_trajectories(run.id, verdict="ok", limit=2, cursor=cursor)
        ok_pages.append(len(items))
        if cursor is None:
            break
    assert ok_pages == [2, 2, 2]
