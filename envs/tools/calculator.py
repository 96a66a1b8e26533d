"""`calculator`: big-number arithmetic, where the `calculator` tool gets the exact answer.

"What is 48213 * 90871?" (operands of `digits` digits, `+`, `-` or `*`). Reward 1 when
the final answer's only number is the exact result (verdict ok), else 0 (wrong_answer,
"The answer ... is wrong."; like `lookup`, the feedback does not give the result away:
it is one tool call from the episode).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from envs.base import Score, Split, Task, Verdict
from envs.tools.base import ToolEnvConfig, ToolEnvironment
from envs.tools.builtin import calculator
from envs.tools.tool import Tool

_NUMBER = re.compile(r"-?\d+")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class CalculatorConfig(ToolEnvConfig):
    digits: int = Field(5, ge=2, le=30, description="digits of each operand")
    operators: list[Literal["+", "-", "*"]] = Field(["*"], min_length=1)
    problems: int = Field(2048, ge=2, le=100_000, description="distinct problems")
    eval_size: int = Field(64, ge=1, le=100_000, description="problems held out for evaluation")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the problems and the split")

    @model_validator(mode="after")
    def _check(self) -> CalculatorConfig:
        if self.eval_size >= self.problems:
            raise ValueError(f"eval_size must be below the {self.problems} problems")
        return self


class CalculatorEnv(ToolEnvironment):
    """Exact big-number arithmetic with a `calculator` tool; reward 1 for the exact result."""

    name = "calculator"
    Config = CalculatorConfig
    config: CalculatorConfig

    @cached_property
    def _splits(self) -> dict[Split, list[Task]]:
        c = self.config
        rng = random.Random(f"calculator/{c.seed}")
        low, high = 10 ** (c.digits - 1), 10**c.digits - 1
        tasks: dict[str, Task] = {}
        while len(tasks) < c.problems:
            a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice(c.operators)
            expression = f"{a} {op} {b}"
            answer = str(_APPLY[op](a, b))
            tasks.setdefault(
                expression,
                Task(id=expression, prompt=f"What is {expression}?\n", reference=answer),
            )
        ordered = list(tasks.values())  # already in a seeded random order
        return {"eval": ordered[: c.eval_size], "train": ordered[c.eval_size :]}

    def dataset(self, split: Split) -> Sequence[Task]:
        return self._splits[split]

    def tools(self) -> list[Tool]:
        return [calculator]

    async def judge(self, task: Task, answer: str) -> Score:
        numbers = _NUMBER.findall(answer)
        if numbers and set(numbers) == {task.reference}:
            return Score(1.0, Verdict.ok)
        said = " ".join(numbers[:3])
        feedback = f"The answer {said} is wrong." if numbers else "The answer has no number."
        return Score(0.0, Verdict.wrong_answer, feedback)
