"""The `calculator` environment: big-number arithmetic with the calculator tool."""

from __future__ import annotations

import asyncio
import re

from envs.base import Verdict
from envs.registry import make_env
from envs.tools import format_call, observation
from envs.tools.calculator import CalculatorEnv


def test_problems_are_seeded_distinct_disjoint_and_exact():
    env = make_env("calculator", {"digits": 4, "problems": 100, "eval_size": 10})
    assert isinstance(env, CalculatorEnv) and env.multi_turn
    train, eval_ = env.dataset("train"), env.dataset("eval")
    assert len(train) == 90 and len(eval_) == 10
    assert not {t.id for t in train} & {t.id for t in eval_}
    again = make_env("calculator", {"digits": 4, "problems": 100, "eval_size": 10})
    assert again.dataset("eval") == eval_
    for t in [*train, *eval_]:
        a, b = re.fullmatch(r"(\d{4}) \* (\d{4})", t.id).groups()
        assert t.prompt == f"What is {t.id}?\n" and t.reference == str(int(a) * int(b))


def test_an_episode_with_the_calculator_is_right_and_a_guess_is_wrong_without_the_answer():
    env = make_env("calculator", {"operators": ["+", "-"], "problems": 50, "eval_size": 5})
    task = env.dataset("train")[0]
    call = format_call("calculator", {"expression": task.id})

    async def go(*turns):
        episode = env.start(task)
        seen = [await episode.step(turn) for turn in turns]
        return seen, await episode.finish()

    turns, right = asyncio.run(go(call, f"It is {task.reference}."))
    assert turns[0].observation == observation(task.reference)
    assert (right.reward, right.verdict, right.feedback) == (1.0, Verdict.ok, None)
    assert right.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}

    _, guess = asyncio.run(go("It is 7."))
    assert (guess.reward, guess.verdict, guess.feedback) == (
        0.0,
        Verdict.wrong_answer,
        "The answer 7 is wrong.",
    )
