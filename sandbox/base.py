"""The Sandbox protocol: a program and its limits in, an execution record out.

docs/operating.md "Security": model-written code is hostile input. Every backend runs a
`Program` under `Limits` and returns an `ExecutionRecord` with a `Verdict`.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

MiB = 1 << 20


class Verdict(StrEnum):
    """What happened to a run, and how an environment judges a response (envs.base
    re-exports this type: one set of verdicts for both). The sandbox reports `ok`, the
    limits, `runtime_error` and `sandbox_error`; `wrong_answer`, `format_error` and
    `compile_error` are the environments' own."""

    ok = "ok"
    wrong_answer = "wrong_answer"
    format_error = "format_error"
    runtime_error = "runtime_error"
    time_limit = "time_limit"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    compile_error = "compile_error"
    sandbox_error = "sandbox_error"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program)."""


class SandboxUnavailable(SandboxError):
    """A backend cannot run on this machine (missing tool, engine or image)."""


class Limits(BaseModel):
    """What one run may use. Memory is per process (address space) and, where the
    backend can measure it, the total of the run's processes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(10.0, gt=0, le=3600)
    cpu_seconds: float = Field(5.0, gt=0, le=3600)
    memory_bytes: int = Field(512 * MiB, ge=32 * MiB)
    processes: int = Field(64, ge=1, le=4096)  # tasks: processes and threads
    output_bytes: int = Field(1 * MiB, ge=1)  # per stream (stdout, stderr)
    tmp_bytes: int = Field(64 * MiB, ge=MiB)  # quota of the private /tmp


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("NUL byte in a command or environment string")
    return value


class Program(BaseModel):
    """A program to run: source files written to the working directory (the
    private /tmp), a command, its stdin and extra environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1)
    files: dict[str, str | bytes] = Field(default_factory=dict)
    stdin: str | bytes = b""
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str]) -> list[str]:
        return [_no_nul(arg) for arg in command]

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
        for name in files:
            norm = posixpath.normpath(name)
            if norm != name or norm in (".", "..") or name.startswith(("/", "../")):
                raise ValueError(f"file name {name!r} must be a plain relative path")
        return files

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not key or "=" in key:
                raise ValueError(f"bad environment variable name {key!r}")
            _no_nul(key + value)
        return env


class ExecutionRecord(BaseModel):
    """The outcome of one run. Output is decoded as UTF-8 (invalid bytes replaced)."""

    verdict: Verdict
    exit_code: int | None = None
    signal: int | None = None  # the signal that ended the program
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    backend: str
    unsafe: bool = False  # true for the `process` backend: no isolation at all
    message: str | None = None  # which limit was hit, or why the sandbox failed


class SandboxSettings(BaseModel):
    """How to build a sandbox; `make_sandbox` (sandbox/factory.py) reads it. Embed it
    in the service's settings to configure it by environment variables."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["bwrap", "docker", "process"] = "bwrap"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    limits: Limits = Field(default_factory=Limits)  # used when a run names none
    python: str | None = None  # bwrap/process interpreter; None: /usr/bin/python3 or ours
    run_as_uid: int = 65534  # bwrap and docker run as this user when the service is root
    bwrap_path: str = "bwrap"
    ro_binds: list[str] = Field(default_factory=list)  # extra host paths a jail may read
    image: str = "opsd-sandbox:latest"  # docker: any image with python3 on PATH and /tmp
    image_python: str = "python3"  # docker: the interpreter inside the image
    docker_url: str | None = None  # None: DOCKER_HOST or the local socket
    docker_cpus: float = Field(1.0, gt=0)  # CPUs per container
    start_timeout_seconds: float = Field(60.0, gt=0)


@runtime_checkable
class Sandbox(Protocol):
    """Runs programs in isolation; `run_many` runs up to the configured width at once."""

    name: str

    async def run(self, program: Program, limits: Limits | None = None) -> ExecutionRecord: ...

    async def run_many(
        self, programs: Sequence[Program], limits: Limits | None = None
    ) -> list[ExecutionRecord]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


# how programs say they ran out of memory: Python's last traceback line, C, C++, Rust/Go
MEMORY_SIGNS = re.compile(
    r"^MemoryError\b|Cannot allocate memory|std::bad_alloc|out of memory", re.MULTILINE
)


def classify(raw: dict[str, Any], stderr: str, limits: Limits) -> tuple[Verdict, str | None]:
    """The verdict for a worker's raw result (see sandbox/warm.py) and why."""
    if raw.get("error"):
        return Verdict.sandbox_error, str(raw["error"])
    killed, sig, peak = raw["killed"], raw["signal"], raw["peak_memory"]
    if killed == "output":
        return Verdict.output_limit, f"output beyond {limits.output_bytes} bytes"
    if killed == "memory" or raw.get("oom"):
        return Verdict.memory_limit, f"memory beyond {limits.memory_bytes} bytes"
    if killed == "wall":
        return Verdict.time_limit, f"wall time beyond {limits.wall_seconds} s"
    if sig == signal.SIGXCPU or raw["cpu"] > limits.cpu_seconds:
        return Verdict.time_limit, f"CPU time beyond {limits.cpu_seconds} s"
    if raw["exit_code"] == 0:
        return Verdict.ok, None
    tail = stderr[-4000:]
    if MEMORY_SIGNS.search(tail) or (sig == signal.SIGKILL and peak >= 0.9 * limits.memory_bytes):
        return Verdict.memory_limit, f"memory beyond {limits.memory_bytes} bytes"
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        return Verdict.runtime_error, f"killed by {name}"
    return Verdict.runtime_error, f"exit code {raw['exit_code']}"
