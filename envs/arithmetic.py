"""Two-number addition: the smallest environment with privileged feedback.

Prompts look like `12+34=`; the response is the number. A wrong answer's feedback
carries the correct answer, which the teacher may read (docs/algorithm.md "Teacher context").
The eval split is a fixed, disjoint sample of all pairs, so held-out accuracy
measures skill, not memory.

By default numbers are written least-significant digit first (`21+43=` asks for
12+34, answer `64`): the order in which a digit is a function of the digits already
written, which is how small transformers learn addition from few samples (Lee et
al., "Teaching Arithmetic to Small Transformers", 2023). `reversed_digits=False`
gives the usual notation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cached_property

from pydantic import Field, model_validator

from envs.base import EnvConfig, EnvironmentBase, Score, Split, Task, Verdict

_NUMBER = re.compile(r"-?\d+")
MAX_PROBLEMS = 500**2  # every pair is built in memory


class ArithmeticConfig(EnvConfig):
    low: int = Field(10, ge=0, le=10**9, description="smallest operand")
    high: int = Field(49, ge=0, le=10**9, description="largest operand")
    eval_size: int = Field(256, ge=1, le=100_000, description="problems held out for evaluation")
    split_seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seed of the train/eval split (not the run's seed)"
    )
    reversed_digits: bool = Field(True, description="write numbers least-significant digit first")

    @model_validator(mode="after")
    def _check(self) -> ArithmeticConfig:
        pairs = (self.high - self.low + 1) ** 2
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if pairs > MAX_PROBLEMS:
            raise ValueError(f"at most {MAX_PROBLEMS} problems: high - low must be below 500")
        if self.eval_size >= pairs:
            raise ValueError(f"eval_size must be below the {pairs} possible problems")
        return self


def write(n: int, reversed_digits: bool) -> str:
    return str(n)[::-1] if reversed_digits else str(n)


def make_task(a: int, b: int, reversed_digits: bool = True) -> Task:
    x, y, answer = (write(n, reversed_digits) for n in (a, b, a + b))
    return Task(id=f"{a}+{b}", prompt=f"{x}+{y}=", reference=answer, data={"a": a, "b": b})


def parse_answer(response: str) -> str | None:
    """The first number in the response, as written, or None."""
    match = _NUMBER.search(response)
    return match.group() if match else None


def feedback_for(response: str, task: Task) -> tuple[Verdict, str | None]:
    """Verdict and teacher-readable feedback for a response to an addition task."""
    got = parse_answer(response)
    if got is None:
        return Verdict.format_error, f"No number found. The answer is {task.reference}."
    if got == task.reference:
        return Verdict.ok, None
    return Verdict.wrong_answer, f"Incorrect. The answer is {task.reference}."


class ArithmeticEnv(EnvironmentBase):
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
        tasks = [make_task(a, b, c.reversed_digits) for a, b in pairs]
        return {"eval": tasks[: c.eval_size], "train": tasks[c.eval_size :]}

    def dataset(self, split: Split) -> Sequence[Task]:
        return self._splits[split]

    async def score(self, task: Task, response: str) -> Score:
        verdict, feedback = feedback_for(response, task)
        return Score(reward=float(verdict is Verdict.ok), verdict=verdict, feedback=feedback)
