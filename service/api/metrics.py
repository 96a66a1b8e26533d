"""Prometheus metrics: HTTP requests counted by route template, and the record's state.

Each app has its own `CollectorRegistry` (several apps in one process, as in tests,
must not share counters). Request metrics come from a plain ASGI middleware (it does
not buffer streaming responses); the gauges are computed when /metrics is scraped.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.storage import Repository, RunStatus
from service.storage import models as orm


class AppMetrics:
    """The metrics of one app, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "opsd_http_requests", "HTTP requests handled", labels, registry=self.registry
        )
        self.latency = Histogram(
            "opsd_http_request_duration_seconds",
            "time to the end of the response",
            labels,
            registry=self.registry,
        )
        self.runs = Gauge("opsd_runs", "runs by status", ("status",), registry=self.registry)
        self.trajectories = Gauge(
            "opsd_trajectories", "trajectories recorded", registry=self.registry
        )
        self.steps = Gauge("opsd_steps", "optimiser steps recorded", registry=self.registry)
        self.live_workers = Gauge(
            "opsd_live_workers", "workers with a live heartbeat", registry=self.registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def record_state(self, counts: dict[str, int], live_workers: int) -> None:
        """Set the gauges from `record_counts` and the bus's live workers."""
        for status in RunStatus:
            self.runs.labels(status.value).set(counts.get(status.value, 0))
        self.trajectories.set(counts["trajectories"])
        self.steps.set(counts["steps"])
        self.live_workers.set(live_workers)


def record_counts(repo: Repository) -> dict[str, int]:
    """Runs per status, and total trajectories and steps, in one session (blocking)."""
    with repo.sessions() as s:
        by_status = s.execute(select(orm.Run.status, func.count()).group_by(orm.Run.status))
        counts = {RunStatus(status).value: n for status, n in by_status}
        counts["trajectories"] = s.scalar(select(func.count(orm.Trajectory.id))) or 0
        counts["steps"] = s.scalar(select(func.count(orm.Step.id))) or 0
    return counts


class MetricsMiddleware:
    """Counts every HTTP request by method, route template (`/v1/runs/{run_id}`) and status.

    Paths that match no route are counted as `unmatched`, so scanners cannot blow up
    the label set. An exception escaping the app counts as a 500.
    """

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
