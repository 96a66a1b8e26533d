"""`code_tools`: write a program with tools at hand, judged by the code environment's tests.

The problems, the final judgement and its feedback are the code environment's
(envs/code): the final answer (the turn without a tool call) must hold the solution
in a ```python block, and the task's tests run in the sandbox. Before answering, the
model may try code with `python` (run in the same sandbox, under the same limits) and
compute with `calculator`. Reward and verdict are the code environment's; the feedback
adds the episode's tool errors. Close it like the code environment (`aclose`,
`async with`, `close`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from envs.base import Score, Split, Task
from envs.code import CodeConfig, CodeEnv
from envs.tools.base import ToolEnvConfig, ToolEnvironment
from envs.tools.builtin import calculator, python_tool
from envs.tools.tool import Tool
from sandbox import Sandbox, SandboxSettings


class CodeToolsConfig(CodeConfig, ToolEnvConfig):
    """The code environment's options (problems, sandbox, limits, reward) and the tool
    options (`max_turns`, `describe_tools`, `max_observation_chars`)."""


class CodeToolsEnv(ToolEnvironment):
    """Code problems with `python` and `calculator` tools; the tests judge the final answer."""

    name = "code_tools"
    Config = CodeToolsConfig
    config: CodeToolsConfig

    def __init__(
        self,
        config: CodeToolsConfig | None = None,
        sandbox: Sandbox | None = None,
        *,
        sandbox_settings: SandboxSettings | None = None,
        data_dir: Path | None = None,
    ) -> None:
        super().__init__(config)
        code_config = CodeConfig.model_validate(
            self.config.model_dump(include=set(CodeConfig.model_fields))
        )
        self.code = CodeEnv(
            code_config, sandbox, sandbox_settings=sandbox_settings, data_dir=data_dir
        )

    @property
    def sandbox_settings(self) -> SandboxSettings:
        """What the sandbox of the tests and of the `python` tool is built from."""
        return self.code.sandbox_settings

    def dataset(self, split: Split) -> Sequence[Task]:
        return self.code.dataset(split)

    @cached_property
    def _tools(self) -> list[Tool]:
        return [python_tool(self.code.run_programs), calculator]

    def tools(self) -> list[Tool]:
        return self._tools

    async def judge(self, task: Task, answer: str) -> Score:
        return await self.code.score(task, answer)

    def close(self) -> None:
        """Stop the sandbox's workers (when this environment started them); blocking."""
        self.code.close()

    async def aclose(self) -> None:
        await self.code.aclose()

    async def __aenter__(self) -> CodeToolsEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
