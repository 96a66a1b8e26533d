"""Two-number addition: the smallest environment with privileged feedback.

Prompts look like `12+34=`; the response is the number. A wrong answer's feedback
carries the correct answer, which the teacher may read (ALGORITHM.md section 3).
The eval split is a fixed, disjoint sample of all pairs, so held-out accuracy
measures skill, not memory.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cached_property

from pydantic import Field, model_validator

from envs.base import EnvConfig, Score, Split, Task, Verdict

_NUMBER = re.compile(r"-?\d+")


class ArithmeticConfig(EnvConfig):
    low: int = Field(10, ge=0, description="smallest operand")
    high: int = Field(49, ge=0, description="largest operand")
    eval_size: int = Field(256, ge=1, description="problems held out for evaluation")
    split_seed: int = Field(0, description="seed of the train/eval split (not the run's seed)")

    @model_validator(mode="after")
    def _check(self) -> ArithmeticConfig:
        pairs = (self.high - self.low + 1) ** 2
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if self.eval_size >= pairs:
            raise ValueError(f"eval_size must be below the {pairs} possible problems")
        return self


def make_task(a: int, b: int) -> Task:
    answer = str(a + b)
    return Task(id=f"{a}+{b}", prompt=f"{a}+{b}=", reference=answer, data={"a": a, "b": b})


def parse_answer(response: str) -> int | None:
    """The first integer in the response, or None."""
    match = _NUMBER.search(response)
    return int(match.group()) if match else None


def feedback_for(response: str, task: Task) -> tuple[Verdict, str | None]:
    """Verdict and teacher-readable feedback for a response to an addition task."""
    got = parse_answer(response)
    if got is None:
        return Verdict.format_error, f"No number found. The answer is {task.reference}."
    if str(got) == task.reference:
        return Verdict.ok, None
    return Verdict.wrong_answer, f"Incorrect. The answer is {task.reference}."


class ArithmeticEnv:
    """`a+b=` with a, b in [low, high]; reward 1 for the exact sum, else 0."""

    name = "arithmetic"
    Config = ArithmeticConfig

    def __init__(self, config: ArithmeticConfig | None = None) -> None:
        self.config = config or ArithmeticConfig()

    @cached_property
    def _splits(self) -> dict[Split, list[Task]]:
        c = self.config
        pairs = [(a, b) for a in range(c.low, c.high + 1) for b in range(c.low, c.high + 1)]
        random.Random(c.split_seed).shuffle(pairs)
        tasks = [make_task(a, b) for a, b in pairs]
        return {"eval": tasks[: c.eval_size], "train": tasks[c.eval_size :]}

    def dataset(self, split: Split) -> Sequence[Task]:
        return self._splits[split]

    async def score(self, task: Task, response: str) -> Score:
        verdict, feedback = feedback_for(response, task)
        return Score(reward=float(verdict is Verdict.ok), verdict=verdict, feedback=feedback)
