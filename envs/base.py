"""The Environment interface (envs/README.md).

An environment is a dataset of tasks plus `score`, which judges one response and
says why: a reward, a verdict (`Verdict`, the one set the sandbox also reports), and
feedback text the teacher can read. It says whether it plays multi-turn episodes
(`multi_turn`: envs/tools, which add `start(task)`, an episode that answers each model
turn and judges the whole) and releases what it holds with `close` / `aclose`.
`EnvironmentBase` gives the defaults: single-turn, nothing to release.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationInfo

from sandbox.base import SandboxSettings, Verdict

Split = Literal["train", "eval"]


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


class EnvDataError(ValueError):
    """An environment's data file cannot be used: missing, not a readable file, or not
    inside the directory the operator allows."""


@dataclass(frozen=True)
class Operator:
    """What the operator of a service allows the environments its clients configure: the
    sandbox that code runs in (a config may ask for less, never for more or for another
    backend) and the directory data files live in. It is the validation context of a
    config a client sent (`envs.registry.validate_config`); without it (the operator's
    own use) a config may ask for anything."""

    sandbox: SandboxSettings | None = None
    data_dir: Path | None = None


def operator_of(info: ValidationInfo) -> Operator | None:
    """The Operator a config is validated against, if any (in a validator)."""
    context = info.context or {}
    return context.get("operator") if isinstance(context, dict) else None


def data_file(data_dir: Path | None, name: Path | str, what: str = "data file") -> Path:
    """The data file a config names. With `data_dir` (a client named it), `name` is a path
    relative to `data_dir` that must stay inside it (no `..`, no symlink out of it);
    without, it is used as it is. EnvDataError unless it is a readable file. Messages
    show `name` only (as `what`), never where the directory is."""
    shown = f"{what} {str(name)!r}"
    if "\0" in str(name):
        raise EnvDataError(f"{what} names may not hold a NUL byte")
    if data_dir is None:
        path = Path(name).expanduser()
    else:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise EnvDataError(
                f"{shown} must be a path inside the server's environment data "
                "directory, relative to it (no leading / and no ..)"
            )
        root = data_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise EnvDataError(f"{shown} leaves the environment data directory")
    if not path.exists():
        raise EnvDataError(f"{shown} does not exist")
    if not path.is_file():
        raise EnvDataError(f"{shown} is not a file")
    if not os.access(path, os.R_OK):
        raise EnvDataError(f"{shown} cannot be read")
    return path


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
    multi_turn: ClassVar[bool]
    """True for environments that play tool episodes (envs.tools.base.ToolEnvironment)."""

    def dataset(self, split: Split) -> Sequence[Task]:
        """All tasks of a split; `eval` is held out from `train`."""
        ...

    async def score(self, task: Task, response: str) -> Score:
        """Judge one complete response to `task`."""
        ...

    def close(self) -> None:
        """Release what the environment holds (a sandbox's workers); blocking."""
        ...

    async def aclose(self) -> None:
        """`close` without blocking the caller's event loop."""
        ...


class EnvironmentBase:
    """The defaults of the `Environment` protocol for an environment class to inherit:
    single-turn, and nothing to release."""

    multi_turn: ClassVar[bool] = False

    def close(self) -> None:
        """Nothing to release."""

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


PROTOCOL_MEMBERS = ("name", "Config", "multi_turn", "dataset", "score", "close", "aclose")


def missing_members(cls: type) -> list[str]:
    """The members of the `Environment` protocol that `cls` lacks."""
    return [member for member in PROTOCOL_MEMBERS if not hasattr(cls, member)]
