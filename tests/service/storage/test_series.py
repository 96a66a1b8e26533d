"""SeriesCache: a run's metric series read once, then only its new steps."""

from __future__ import annotations

import math

from service.runs.series import SeriesCache, steps_per_second, thin

from ..records import recorded_steps


class CountingRepository:
    """The repository, counting the step rows it hands out."""

    def __init__(self, repo) -> None:
        self.repo, self.rows = repo, 0

    def steps_after(self, run_id, after):
        rows = self.repo.steps_after(run_id, after)
        self.rows += len(rows)
        return rows

    def __getattr__(self, name):
        return getattr(self.repo, name)


def whole(repo, run_id, points):
    """The series as read from the record in one go."""
    series = repo.metrics_series(run_id)
    times = [(s.step, s.created_at) for s in recorded_steps(repo, run_id)]
    if rates := steps_per_second(times):
        series["steps_per_s"] = rates
    return {name: thin(values, points) for name, values in series.items()}


def record(repo, run_id, step, trajectory, **metrics):
    repo.record_step(run_id, step, f"b{step}", metrics, step, [trajectory(0, 0)])


def test_the_series_grow_by_the_new_steps_only_and_equal_a_whole_read(
    repo, env, run_config, trajectory
):
    run = repo.create_run(env.id, run_config)
    counting, cache = CountingRepository(repo), SeriesCache()
    assert cache.series(counting, run.id, 1000) == {}
    for step in range(1, 31):
        loss = math.nan if step == 7 else 1 / step  # non-finite: left out
        record(repo, run.id, step, trajectory, loss=loss, reward=step / 30)
        if step == 20:
            repo.add_evaluation(run.id, 20, 0.5)
        if step % 10 == 0:
            for points in (1000, 7):
                assert cache.series(counting, run.id, points) == whole(repo, run.id, points)
    assert counting.rows == 30  # each step read once
    assert len(cache.series(counting, run.id, 1000)["loss"]) == 29
    assert cache.series(counting, run.id, 1000)["eval_accuracy"] == [(20, 0.5)]


def test_runs_beyond_the_memory_bound_are_read_again_and_stay_right(
    repo, env, run_config, trajectory
):
    runs = [repo.create_run(env.id, run_config) for _ in range(2)]
    counting, cache = CountingRepository(repo), SeriesCache(max_points=40)
    for step in range(1, 9):  # 8 steps x (1 metric + 2): 24 points per run
        for run in runs:
            record(repo, run.id, step, trajectory, loss=step)
    for run in runs:
        assert cache.series(counting, run.id, 100) == whole(repo, run.id, 100)
    assert counting.rows == 16
    # both do not fit: the one read longest ago went, and is read whole again
    assert cache.series(counting, runs[1].id, 100) == whole(repo, runs[1].id, 100)
    assert counting.rows == 16
    assert cache.series(counting, runs[0].id, 100) == whole(repo, runs[0].id, 100)
    assert counting.rows == 24
