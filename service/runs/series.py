"""A run's metric series, read from the record once and then only its new steps.

`GET /v1/runs/{id}/metrics` answers every recorded step of every metric (thinned), so
building it from the record costs time in proportion to the run's length: about 50 ms
at 2,000 steps, for every new step of a run that a dashboard follows. Recorded steps
never change, and a run records them in step order (one trainer per run, holding its
lease), so `SeriesCache` keeps what it read per run and asks the record only for the
steps after the last one it has. Held-out evaluations are few and read whole each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from service.storage import Repository

STEPS_PER_S_WINDOW = 10  # steps the `steps_per_s` series averages over


@dataclass
class RunSeries:
    """What was read of one run: `(step, value)` per metric, and when each step was
    recorded, in step order."""

    values: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    times: list[tuple[int, datetime]] = field(default_factory=list)
    rates: list[tuple[int, float]] = field(default_factory=list)  # steps_per_s
    points: int = 0  # (step, value) pairs held, for the memory bound
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def last_step(self) -> int:
        return self.times[-1][0] if self.times else 0

    def extend(self, rows: list[tuple[int, dict[str, float | None], datetime]]) -> None:
        """Steps after `last_step`, in step order: `(step, metrics, recorded at)`."""
        for step, metrics, at in rows:
            for name, value in metrics.items():
                if value is not None:
                    self.values.setdefault(name, []).append((step, value))
                    self.points += 1
            self.times.append((step, at))
            self.rates.extend(steps_per_second(self.times, len(self.times) - 1))
            self.points += 2


def steps_per_second(times: list[tuple[int, datetime]], first: int = 1) -> list[tuple[int, float]]:
    """`(step, steps recorded per second over the STEPS_PER_S_WINDOW steps up to it)`
    for the steps of `times` from index `first` on (from the second step on)."""
    rates = []
    for i in range(max(first, 1), len(times)):
        start = max(0, i - STEPS_PER_S_WINDOW)
        seconds = (times[i][1] - times[start][1]).total_seconds()
        if seconds > 0:
            rates.append((times[i][0], (i - start) / seconds))
    return rates


def thin(series: list, points: int) -> list:
    """At most `points` items, evenly spaced, the first and the last always among them
    (a new list)."""
    if len(series) <= points:
        return list(series)
    last = len(series) - 1
    return [series[round(i * last / (points - 1))] for i in range(points)]


class SeriesCache:
    """`RunSeries` of the runs read most recently, at most `max_points` pairs in all
    (about 80 bytes each); a run longer than that is read whole every time. Safe across
    the threadpool's threads."""

    def __init__(self, max_points: int = 1_000_000) -> None:
        self.max_points = max_points
        self._runs: OrderedDict[int, RunSeries] = OrderedDict()
        self._lock = threading.Lock()

    def series(
        self, repo: Repository, run_id: int, points: int
    ) -> dict[str, list[tuple[int, float]]]:
        """`{metric: [(step, value), ...]}` of every recorded step, plus `steps_per_s`
        and `eval_accuracy` when there are any, each thinned to at most `points`."""
        with self._lock:
            run = self._runs.get(run_id) or RunSeries()
            self._runs[run_id] = run
            self._runs.move_to_end(run_id)
        with run.lock:
            run.extend(repo.steps_after(run_id, run.last_step))
            series = {name: thin(values, points) for name, values in run.values.items()}
            if run.rates:
                series["steps_per_s"] = thin(run.rates, points)
            held = run.points
        if evaluations := repo.evaluations(run_id):
            series["eval_accuracy"] = thin(evaluations, points)
        self._bound(run_id, held)
        return series

    def _bound(self, run_id: int, points: int) -> None:
        with self._lock:
            total = sum(run.points for run in self._runs.values())
            for other in list(self._runs):
                if total <= self.max_points:
                    break
                total -= self._runs.pop(other).points
            if points > self.max_points:
                self._runs.pop(run_id, None)
