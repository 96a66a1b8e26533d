"""The Environment interface (envs/README.md).

An environment is a dataset of tasks plus `score`, which judges one response and
says why: a reward, a verdict, and feedback text the teacher can read.
Multi-turn environments (envs/tools) set `multi_turn = True` and add `start(task)`, an
episode that answers each model turn (`step`) and judges the whole (`finish`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

Split = Literal["train", "eval"]


class Verdict(StrEnum):
    """What happened to a response; the sandbox reports the execution ones."""

    ok = "ok"
    wrong_answer = "wrong_answer"
    format_error = "format_error"
    runtime_error = "runtime_error"
    time_limit = "time_limit"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    compile_error = "compile_error"
    sandbox_error = "sandbox_error"


@dataclass(frozen=True)
class Task:
    """One problem. `reference` is privileged ground truth, never shown to the student."""

    id: str
    prompt: str
    reference: str | None = None
    demonstration: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """The environment's judgement of one response.

    `feedback` is text for the teacher context (docs/algorithm.md "Teacher context"), or None when
    there is nothing to say (a correct answer, usually).
    """

    reward: float
    verdict: Verdict
    feedback: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class EnvConfig(BaseModel):
    """Base class of an environment's configuration; subclasses add fields."""

    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class Environment(Protocol):
    """What the trainer and the orchestrator need from an environment.

    It is built as `cls(config)`. An environment that runs code also takes a keyword
    `sandbox_settings: SandboxSettings | None = None`: envs.registry.make_env passes the
    service's sandbox settings (OPSD_SANDBOX__*) through it, and None (plain library
    use) means the environment's own defaults.
    """

    name: ClassVar[str]
    Config: ClassVar[type[EnvConfig]]

    def dataset(self, split: Split) -> Sequence[Task]:
        """All tasks of a split; `eval` is held out from `train`."""
        ...

    async def score(self, task: Task, response: str) -> Score:
        """Judge one complete response to `task`."""
        ...
