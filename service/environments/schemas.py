"""Request and response bodies of /v1/environments."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MODEL_FIELD = Field(
    "tiny",
    min_length=1,
    max_length=256,
    description="`tiny` or `tiny-tools` (shipped with opsd), a model of the server's models "
    "directory, or a name its operator allows (OPSD_ALLOWED_MODELS, OPSD_HUB_MODELS)",
    examples=["tiny"],
)


class Environment(BaseModel):
    """An environment kind (registered=false, default config) or a registered instance."""

    name: str = Field(description="what runs refer to", examples=["arithmetic"])
    kind: str = Field(description="the environment implementation", examples=["arithmetic"])
    description: str = Field(description="first line of the implementation's docstring")
    config: dict[str, Any] = Field(description="the configuration ({} = every default)")
    config_schema: dict[str, Any] = Field(description="JSON schema of the kind's configuration")
    registered: bool = Field(description="a stored instance (true) or a bare kind (false)")
    created_at: datetime | None = Field(None, description="when it was registered")


class EnvironmentList(BaseModel):
    items: list[Environment]


class EnvironmentCreate(BaseModel):
    """Register a configured instance of an environment kind under a name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "arith-small", "kind": "arithmetic", "config": {"high": 29}}]
        },
    )

    name: str = Field(pattern=NAME_PATTERN, description="lower-case, digits, `_.-`; 1-64 chars")
    kind: str = Field(min_length=1, max_length=128, description="an available kind")
    config: dict[str, Any] = Field(default_factory=dict, description="the kind's configuration")


class TryRequest(BaseModel):
    """Sample a few responses with a policy and score them, without training."""

    model_config = ConfigDict(extra="forbid")

    model: str = MODEL_FIELD
    tasks: int = Field(2, ge=1, le=16, description="tasks, from the start of the split")
    samples_per_prompt: int = Field(2, ge=1, le=8, description="responses per task")
    max_new_tokens: int = Field(64, ge=1, le=512, description="tokens per response")
    split: Literal["train", "eval"] = "train"


class TryItem(BaseModel):
    """One sampled response and the environment's judgement of it."""

    model_config = ConfigDict(from_attributes=True)

    task_id: str
    prompt: str
    response: str
    reward: float
    verdict: str = Field(examples=["wrong_answer"])
    feedback: str | None = Field(description="what the teacher would read")


class TryResult(BaseModel):
    items: list[TryItem]


class ProbeRequest(BaseModel):
    """Measure the teacher-student gap on a few groups, before any training."""

    model_config = ConfigDict(extra="forbid")

    model: str = MODEL_FIELD
    groups: int = Field(4, ge=1, le=16, description="tasks sampled, one group each")
    samples_per_prompt: int = Field(8, ge=1, le=16, description="responses per task")
    max_new_tokens: int = Field(16, ge=1, le=512, description="tokens per response")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="which tasks and token draws")


class ProbeResult(BaseModel):
    """What the probe measured (docs/algorithm.md "Run health" defines each measure)."""

    model_config = ConfigDict(from_attributes=True)

    env: str = Field(description="the environment kind")
    model: str
    groups: int
    samples_per_prompt: int
    teacher_gap: float | None = Field(
        description="mean per-token KL(student || teacher) over the samples with a teacher "
        "signal, in nats; null when none has one"
    )
    teacher_signal_frac: float = Field(
        description="share of samples with a teacher signal (feedback or a successful sibling)"
    )
    reward_mean: float = Field(description="the base model's mean reward")
    ok_fraction: float
    entropy: float | None = Field(description="mean per-token entropy of the student, in nats")
    response_tokens_mean: float
    truncated_frac: float
