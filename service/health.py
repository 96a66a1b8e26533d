"""Liveness, readiness and metrics: what a load balancer, an orchestrator and Prometheus ask.

/healthz says the process answers. /readyz says it can do its job: the database
answers and is at the schema this code expects (Postgres is migrated by the `opsd db
upgrade` one-shot, not by the app), the bus answers, at least one trainer worker has a
live heartbeat, and the pipeline process (when the app runs one) drives runs.
"""

from __future__ import annotations

import logging
from typing import Literal

from alembic.migration import MigrationContext
from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.api.deps import Services, ServicesDep
from service.api.metrics import record_counts

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(
        description="database, bus, worker (and pipeline): `ok` or what is wrong",
        examples=[{"database": "ok", "bus": "ok", "worker": "ok"}],
    )


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health()


def check_database(services: Services) -> str:
    """`ok`, or why the database cannot serve (unreachable, not migrated to head)."""
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = MigrationContext.configure(conn).get_current_heads()
    except Exception as exc:
        log.warning("readiness: database check failed: %s", exc)
        return f"unreachable: {type(exc).__name__}"
    if services.schema_head is not None and current != (services.schema_head,):
        found = ", ".join(current) or "none"
        return f"schema at revision {found}, expected {services.schema_head}: run `opsd db upgrade`"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `checks` says why"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database, the bus and at least one trainer worker are."""
    checks = {"database": await to_thread.run_sync(check_database, services)}
    if services.pipeline is not None:
        checks["pipeline"] = services.pipeline.check()
    try:
        checks["bus"] = "ok" if await services.bus.ping() else "not answering"
        workers = await services.bus.live_workers()
        checks["worker"] = "ok" if workers else "no live worker heartbeat"
    except Exception as exc:
        log.warning("readiness: bus check failed: %s", exc)
        checks["bus"] = f"unreachable: {type(exc).__name__}"
        checks["worker"] = "unknown: the bus is unreachable"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text format: HTTP requests, runs by status, trajectories, steps, workers."""
    app_metrics = request.app.state.metrics
    counts = await to_thread.run_sync(record_counts, services.repo)
    app_metrics.record_state(counts, len(await services.bus.live_workers()))
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
