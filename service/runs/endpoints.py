"""/v1/runs: start runs, read what they produced, stop/resume/cancel them, follow their events.

Repository calls block (SQLAlchemy sessions), so plain `def` routes run in the
threadpool; routes that also touch the bus or the orchestrator are `async` and move
the repository call off the event loop themselves. Reads of a run that has not changed
are answered before they reach a route (service.runs.cache.CachedReads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from anyio import to_thread
from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from service.api.deps import BusDep, RepoDep, Services, ServicesDep
from service.api.errors import error_responses
from service.pipeline.runtime import emit
from service.runs import archive, service
from service.runs.events import follow_run
from service.runs.schemas import (
    MAX_INT32,
    MAX_INT64,
    CheckpointList,
    EventOut,
    FeedbackList,
    MetricsSeries,
    Run,
    RunConfigSchema,
    RunCreate,
    RunList,
    Trajectory,
    TrajectoryList,
)
from service.storage import RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=MAX_INT32, description="the run's id")]
Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]
READ_ERRORS = error_responses(404, 422)
# OpenAPI 3.1: the `schema` of an event stream describes one event.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "the event id (send it back as Last-Event-ID)"},
        "event": {"type": "string", "description": "the event kind", "examples": ["step"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": EventOut.model_json_schema(),
        },
    },
}
CONTROL_ERRORS = error_responses(401, 404, 409, 422)


# Trajectories are written once, with their token scores, and never changed; a run's are
# numbered in the order they are written (one writer per run, holding the run's row).
IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable"}


def answer(build: Callable, final: Callable[[Any], bool] = lambda built: False) -> Response:
    """`build()` (a model, or plain data: orjson writes it) as JSON, marked immutable when
    `final(built)`. Kept answers are served in front of the routes
    (service.runs.cache.CachedReads); a route builds afresh."""
    built = build()
    headers = IMMUTABLE if final(built) else None
    body = built.model_dump_json() if isinstance(built, BaseModel) else orjson.dumps(built)
    return Response(body, media_type="application/json", headers=headers)


@router.post("", status_code=201, response_model=Run, responses=error_responses(400, 401, 422))
async def create_run(body: RunCreate, services: ServicesDep) -> Run:
    """Queue a training run on an environment (a kind is registered on first use).

    422 with pydantic's errors in `details` when the configuration does not validate.
    """
    run = await to_thread.run_sync(service.create_run, services.repo, body, services.settings)
    services.wake_orchestrator()
    return run


@router.get("", response_model=RunList, responses=error_responses(400, 422))
def list_runs(
    repo: RepoDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[RunStatus | None, Query(description="only runs in this state")] = None,
) -> Response:
    """Runs, newest first, a page at a time; each without its configuration (see
    `GET /v1/runs/{run_id}`)."""
    return answer(lambda: service.list_runs(repo, limit, cursor, status))


@router.get("/config-schema", response_model=RunConfigSchema)
def run_config_schema() -> RunConfigSchema:
    """The JSON schema of a run's configuration and the preset of each algorithm: what
    `config` of `POST /v1/runs` may override (the dashboard builds its form from it)."""
    return service.config_schema()


@router.get("/{run_id}", response_model=Run, responses=READ_ERRORS)
def get_run(run_id: RunId, repo: RepoDep) -> Response:
    return answer(lambda: service.get_run(repo, run_id))


EVENT_OF = {"stop": "stopped", "resume": "resumed", "cancel": "cancelled"}


async def control(services: Services, run_id: int, action: str) -> Run:
    run = await to_thread.run_sync(service.transition, services.repo, run_id, action)
    await emit(services.repo, services.bus, run_id, EVENT_OF[action], {"status": run.status})
    services.wake_orchestrator()
    return run


@router.post("/{run_id}/stop", response_model=Run, responses=CONTROL_ERRORS)
async def stop_run(run_id: RunId, services: ServicesDep) -> Run:
    """Stop a queued or running run (it can be resumed)."""
    return await control(services, run_id, "stop")


@router.post("/{run_id}/resume", response_model=Run, responses=CONTROL_ERRORS)
async def resume_run(run_id: RunId, services: ServicesDep) -> Run:
    """Queue a stopped or failed run again; it continues from its last checkpoint."""
    return await control(services, run_id, "resume")


@router.post("/{run_id}/cancel", response_model=Run, responses=CONTROL_ERRORS)
async def cancel_run(run_id: RunId, services: ServicesDep) -> Run:
    """End a run for good (it cannot be resumed)."""
    return await control(services, run_id, "cancel")


@router.get("/{run_id}/metrics", response_model=MetricsSeries, responses=READ_ERRORS)
def run_metrics(
    run_id: RunId,
    services: ServicesDep,
    points: Annotated[
        int,
        Query(
            ge=2,
            le=100_000,
            description="at most this many points per metric: a longer series is thinned "
            "evenly, keeping its first and last step",
        ),
    ] = 1000,
) -> Response:
    """Per-step training metrics and held-out accuracy (`eval_accuracy`)."""
    # Serialised directly: the series are plain numbers the repository already checked,
    # and validating every point again costs more than the query (a dashboard polls this).
    repo, series = services.repo, services.series
    return answer(lambda: {"series": service.metrics(repo, run_id, points, series)})


@router.get(
    "/{run_id}/trajectories",
    response_model=TrajectoryList,
    responses=error_responses(400, 404, 422),
)
def list_trajectories(
    run_id: RunId,
    repo: RepoDep,
    step: Annotated[int | None, Query(ge=0, le=MAX_INT32)] = None,
    verdict: Annotated[str | None, Query(max_length=32, examples=["wrong_answer"])] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    min_reward: Annotated[
        float | None, Query(ge=-1e9, le=1e9, description="only rewards at least this")
    ] = None,
    max_reward: Annotated[
        float | None, Query(ge=-1e9, le=1e9, description="only rewards at most this")
    ] = None,
) -> Response:
    """Scored responses in the order they were written (step, task, sample)."""
    # A page with a next page never changes: later trajectories come after that one.
    return answer(
        lambda: service.list_trajectories(
            repo, run_id, step, verdict, limit, cursor, min_reward, max_reward
        ),
        final=lambda page: page.next_cursor is not None,
    )


@router.get(
    "/{run_id}/trajectories/{trajectory_id}", response_model=Trajectory, responses=READ_ERRORS
)
def get_trajectory(
    run_id: RunId,
    trajectory_id: Annotated[int, Path(ge=1, le=MAX_INT64)],
    repo: RepoDep,
) -> Response:
    """One trajectory with its per-token teacher-student log-ratios (null until trained)."""
    return answer(lambda: service.get_trajectory(repo, run_id, trajectory_id), final=lambda _: True)


@router.get("/{run_id}/checkpoints", response_model=CheckpointList, responses=READ_ERRORS)
def list_checkpoints(run_id: RunId, repo: RepoDep) -> Response:
    return answer(lambda: service.checkpoints(repo, run_id))


@router.get(
    "/{run_id}/checkpoints/{step}/archive",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "the checkpoint as a tar"},
        **READ_ERRORS,
    },
)
def download_checkpoint(
    run_id: RunId,
    step: Annotated[int, Path(ge=0, le=MAX_INT32, description="a checkpoint's step")],
    repo: RepoDep,
) -> StreamingResponse:
    """Download a checkpoint: a tar of its model directory (config, weights, tokenizer and,
    for LoRA, the adapter; `AutoModelForCausalLM.from_pretrained` loads it), without the
    optimiser state. `GET /v1/runs/{run_id}/checkpoints` names the steps and marks the best."""
    directory = service.checkpoint_directory(repo, run_id, step)
    files = archive.archived_files(directory)
    name = f"run-{run_id}-{directory.name}.tar"
    return StreamingResponse(
        archive.tar_stream(directory, files),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/{run_id}/feedback", response_model=FeedbackList, responses=READ_ERRORS)
async def recent_feedback(
    run_id: RunId,
    repo: RepoDep,
    bus: BusDep,
    count: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FeedbackList:
    """The newest environment feedback of the run, live from the bus (oldest first)."""
    await to_thread.run_sync(repo.get_run, run_id)
    return FeedbackList(items=await bus.recent_feedback(str(run_id), count))


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events, one per recorded event of the run",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **READ_ERRORS,
    },
)
async def run_events(
    run_id: RunId,
    services: ServicesDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="replay events after this id")] = 0,
    last_event_id: Annotated[
        int | None,
        Header(ge=0, le=MAX_INT64, description="set by EventSource on reconnect; wins over after"),
    ] = None,
    tail: Annotated[
        bool,
        Query(
            description="only events recorded from now on (a client that has just read the "
            "run's state); Last-Event-ID and after win over it"
        ),
    ] = False,
) -> EventSourceResponse:
    """The run's events: those recorded so far, then new ones until the run ends."""
    repo, bus, settings = services.repo, services.bus, services.settings
    await to_thread.run_sync(repo.get_run, run_id)  # 404 before the stream starts
    start = last_event_id if last_event_id is not None else after
    if tail and last_event_id is None and after == 0:
        start = (await to_thread.run_sync(repo.read_version, run_id))[1]
    events = follow_run(repo, run_id, start, settings.poll_s, bus, services.versions.saw_event)
    return EventSourceResponse(events)
