"""Request and response bodies of /v1/runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.environments.schemas import MODEL_FIELD
from service.storage import RunStatus
from trainer.config import Steps

MAX_INT32 = 2**31 - 1  # runs.id, steps
MAX_INT64 = 2**63 - 1  # trajectories.id, events.id


class RunCreate(BaseModel):
    """Start a training run. `config` holds nested RunConfig overrides on top of the
    algorithm's preset; `environment`, `model` and `steps` given here win over it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "environment": "arithmetic",
                    "model": "tiny",
                    "algorithm": "sdpo",
                    "steps": 50,
                    "config": {"prompts_per_step": 8, "loss": {"distill": {"alpha": 0.5}}},
                }
            ]
        },
    )

    environment: str = Field(
        min_length=1, max_length=128, description="a registered instance or an environment kind"
    )
    model: str = MODEL_FIELD
    algorithm: Literal["sdpo", "grpo"] = Field("sdpo", description="the preset to start from")
    steps: Steps | None = Field(None, description="optimiser steps (default: the preset's)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="nested RunConfig overrides, e.g. {'optim': {'lr': 1e-4}}"
    )


class RunConfigSchema(BaseModel):
    """What `RunCreate.config` may hold."""

    json_schema: dict[str, Any] = Field(description="JSON schema of the full RunConfig")
    presets: dict[str, dict[str, Any]] = Field(
        description="the RunConfig each `algorithm` starts from, by name"
    )
    reserved: list[str] = Field(
        description="fields set from the request's own fields, never from `config`"
    )


class EvalSummary(BaseModel):
    base: float | None = Field(description="held-out accuracy of the base model (step 0)")
    latest: float | None = Field(description="the latest held-out accuracy")
    latest_step: int | None = Field(description="the step of `latest`")


class RunSummary(BaseModel):
    """A run as the run list shows it: everything but the full configuration."""

    id: int
    environment: str = Field(description="the environment's name")
    model: str
    algorithm: str = Field(description="sdpo, grpo or mixed", examples=["sdpo"])
    status: RunStatus
    steps: int = Field(description="optimiser steps the run is configured for")
    steps_done: int
    policy_version: int
    error: str | None = Field(description="why a failed run failed, or why a guard stopped it")
    created_at: datetime
    updated_at: datetime
    eval: EvalSummary
    samples_seen: int = Field(description="steps_done x prompts_per_step x samples_per_prompt")


class Run(RunSummary):
    """A run with its full configuration (`GET /v1/runs/{id}`)."""

    config: dict[str, Any] = Field(description="the full RunConfig")


class RunList(BaseModel):
    items: list[RunSummary] = Field(description="runs without their configuration")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")


StepValue = Annotated[list[int | float], Field(min_length=2, max_length=2)]


class MetricsSeries(BaseModel):
    series: dict[str, list[StepValue]] = Field(
        description="metric -> [[step, value], ...] in step order",
        examples=[{"reward_mean": [[1, 0.25], [2, 0.5]]}],
    )


class TrajectorySummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: int
    group_index: int = Field(description="which task of the step")
    sample_index: int = Field(description="which of the task's samples")
    task_id: str
    prompt: str
    response: str
    reward: float
    verdict: str
    feedback: str | None
    teacher_context: str | None
    truncated: bool
    policy_version: int
    metrics: dict[str, Any] | None


class TrajectoryList(BaseModel):
    items: list[TrajectorySummary]
    next_cursor: str | None


class TokenScore(BaseModel):
    token: str | None = Field(description="the decoded response token, when recorded")
    log_ratio: float | None = Field(description="teacher minus student log-prob of the token")


class Trajectory(TrajectorySummary):
    created_at: datetime
    token_scores: list[TokenScore] | None = Field(
        None, description="per-token teacher-student log-ratios, once the step is trained"
    )


class Checkpoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    path: str
    created_at: datetime
    eval_accuracy: float | None = Field(None, description="held-out accuracy at this step")
    best: bool = Field(
        False, description="the run's best checkpoint: the highest held-out accuracy so far"
    )


class CheckpointList(BaseModel):
    items: list[Checkpoint]


class FeedbackList(BaseModel):
    items: list[dict[str, Any]] = Field(description="the newest feedback items, oldest first")


class EventOut(BaseModel):
    """The `data` of one server-sent event."""

    id: int
    kind: str
    run_id: int | None
    payload: dict[str, Any]
    created_at: datetime
