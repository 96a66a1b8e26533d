"""`lookup`: a task only a tool can answer, small enough for the tiny model.

"What is the code of kibo?" asks for the 4-digit code of a made-up name. The codes
are in a document collection the environment generates (seeded, deterministic) and
nowhere else, so the only way to the answer is the `lookup` tool:

    What is the code of kibo?
    <tool_call>{"name": "lookup", "arguments": {"query": "kibo"}}</tool_call>
    <tool_response>kibo: 4821</tool_response>
    4821

Reward 1 when the final answer's only number is the code (verdict ok), else 0
(wrong_answer). The feedback never holds the code ("The answer 1234 is wrong."): the
teacher learns it from a successful sibling or from the tool output in the episode.
The eval names are disjoint from the train names; the collection holds both. The
plain prompt does not list the tools by default (the tiny model reads 512 characters).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cached_property

from pydantic import Field, model_validator

from envs.base import Score, Split, Task, Verdict
from envs.tools.base import ToolEnvConfig, ToolEnvironment
from envs.tools.builtin import lookup_tool
from envs.tools.calls import format_call, observation
from envs.tools.tool import Tool

CONSONANTS, VOWELS = "bdfghjklmnprstvz", "aeiou"
_NUMBER = re.compile(r"\d+")


class LookupConfig(ToolEnvConfig):
    describe_tools: bool = Field(
        False, description="list the tools in the plain-text prompt (off: the tiny model's context)"
    )
    documents: int = Field(512, ge=2, le=20_000, description="names in the collection (tasks)")
    eval_size: int = Field(64, ge=1, le=100_000, description="names held out for evaluation")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seed of the names, the codes and the split"
    )

    @model_validator(mode="after")
    def _check(self) -> LookupConfig:
        if self.eval_size >= self.documents:
            raise ValueError(f"eval_size must be below the {self.documents} documents")
        return self


def make_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct made-up names of 3-6 lowercase letters (consonant, vowel, ...)."""
    names: dict[str, None] = {}
    while len(names) < count:
        length = rng.randint(3, 6)
        letters = [rng.choice(VOWELS if i % 2 else CONSONANTS) for i in range(length)]
        names.setdefault("".join(letters))
    return list(names)


def question(name: str) -> str:
    return f"What is the code of {name}?\n"


def correct_episode(name: str, code: str) -> str:
    """The transcript of a correct episode (a call, its observation, the answer)."""
    call = format_call("lookup", {"query": name})
    return call + observation(f"{name}: {code}") + code


class LookupEnv(ToolEnvironment):
    """Find a made-up name's code with the `lookup` tool; reward 1 for the exact code."""

    name = "lookup"
    Config = LookupConfig
    config: LookupConfig

    @cached_property
    def codes(self) -> dict[str, str]:
        """The collection: name -> 4-digit code."""
        rng = random.Random(f"lookup/{self.config.seed}")
        names = make_names(rng, self.config.documents)
        return {name: str(rng.randint(1000, 9999)) for name in names}

    @cached_property
    def _splits(self) -> dict[Split, list[Task]]:
        names = sorted(self.codes)
        random.Random(f"lookup-split/{self.config.seed}").shuffle(names)
        tasks = [
            Task(id=n, prompt=question(n), reference=self.codes[n], data={"name": n}) for n in names
        ]
        n_eval = self.config.eval_size
        return {"eval": tasks[:n_eval], "train": tasks[n_eval:]}

    def dataset(self, split: Split) -> Sequence[Task]:
        return self._splits[split]

    @cached_property
    def _tools(self) -> list[Tool]:
        return [lookup_tool({name: f"{name}: {code}" for name, code in self.codes.items()})]

    def tools(self) -> list[Tool]:
        return self._tools

    async def judge(self, task: Task, answer: str) -> Score:
        numbers = _NUMBER.findall(answer)
        if numbers and set(numbers) == {task.reference}:
            return Score(1.0, Verdict.ok)
        said = " ".join(numbers[:3])
        feedback = f"The answer {said} is wrong." if numbers else "The answer has no code."
        return Score(0.0, Verdict.wrong_answer, feedback)
