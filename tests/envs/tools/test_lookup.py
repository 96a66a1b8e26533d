"""The `lookup` environment (the tiny model's tool task): data, and episodes played by hand."""

from __future__ import annotations

import asyncio
import re

import pytest

from envs.base import Environment, Verdict
from envs.registry import InvalidEnvConfig, make_env
from envs.tools.base import Episode, Turn
from envs.tools.calls import format_call, observation
from envs.tools.lookup import LookupConfig, LookupEnv, correct_episode


@pytest.fixture(scope="module")
def env() -> LookupEnv:
    return LookupEnv(LookupConfig(documents=200, eval_size=20))


@pytest.fixture
def task(env):
    return env.dataset("train")[0]


def play(episode: Episode, *turns: str):
    """Step the model turns by hand; the observations and the final score."""

    async def go():
        seen = [await episode.step(turn) for turn in turns]
        return seen, await episode.finish()

    return asyncio.run(go())


def lookup_call(query: str) -> str:
    return format_call("lookup", {"query": query})


def test_lookup_is_registered_and_a_multi_turn_environment():
    env = make_env("lookup", {"eval_size": 8})
    assert isinstance(env, LookupEnv) and isinstance(env, Environment) and env.multi_turn
    assert env.config.describe_tools is False and env.config.max_turns == 4
    with pytest.raises(InvalidEnvConfig, match="lookup"):
        make_env("lookup", {"documents": 10, "eval_size": 10})


def test_the_dataset_is_seeded_disjoint_and_asks_for_made_up_names(env):
    train, eval_ = env.dataset("train"), env.dataset("eval")
    assert len(eval_) == 20 and len(train) == 180
    assert not {t.id for t in train} & {t.id for t in eval_}
    again = LookupEnv(LookupConfig(documents=200, eval_size=20))
    assert again.dataset("eval") == eval_ and again.codes == env.codes
    assert LookupEnv(LookupConfig(documents=200, eval_size=20, seed=1)).codes != env.codes
    for t in [*train, *eval_]:
        name = t.data["name"]
        assert re.fullmatch(r"[a-z]{3,6}", name) and t.id == name
        assert re.fullmatch(r"\d{4}", t.reference) and env.codes[name] == t.reference
        assert t.prompt == f"What is the code of {name}?\n"
        assert t.reference not in t.prompt and t.demonstration is None


def test_the_plain_prompt_is_the_question_alone_unless_tools_are_described(env, task):
    assert env.prompt(task) == task.prompt
    described = LookupEnv(LookupConfig(documents=200, eval_size=20, describe_tools=True))
    text = described.prompt(task)
    assert text.endswith(task.prompt) and "lookup(query: string)" in text
    assert "<tool_call>" in text


def test_a_correct_episode_gets_reward_1_and_its_metrics(env, task):
    name, code = task.data["name"], task.reference
    turns, score = play(env.start(task), lookup_call(name), code)
    assert turns[0].observation == observation(f"{name}: {code}") and not turns[0].done
    assert turns[1].observation is None and turns[1].done
    assert (score.reward, score.verdict, score.feedback) == (1.0, Verdict.ok, None)
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    assert correct_episode(name, code) == lookup_call(name) + turns[0].observation + code


def test_answering_without_the_tool_is_a_wrong_answer_whose_feedback_hides_the_code(env, task):
    wrong = "1234" if task.reference != "1234" else "4321"
    _, score = play(env.start(task), f"The code is {wrong}.")
    assert (score.reward, score.verdict) == (0.0, Verdict.wrong_answer)
    assert score.feedback == f"The answer {wrong} is wrong."
    assert score.details["metrics"] == {"turns": 1, "tool_calls": 0, "tool_errors": 0}
    _, silent = play(env.start(task), "I do not know.")
    assert silent.feedback == "The answer has no code." and task.reference not in silent.feedback


def test_hedging_with_several_numbers_is_wrong(env, task):
    _, score = play(env.start(task), f"{task.reference} or 1111 or 2222")
    assert score.verdict is Verdict.wrong_answer and score.reward == 0.0


def test_a_malformed_call_is_an_error_observation_counted_and_fed_back(env, task):
    name, code = task.data["name"], task.reference
    broken = '<tool_call>{"name": "lookup", "arguments": {"query": kibo}}</tool_call>'
    turns, score = play(env.start(task), broken, lookup_call(name), code)
    first = turns[0].observation
    assert first.startswith("\n<tool_response>error: malformed JSON in tool call")
    assert first.endswith("</tool_response>\n") and first.count("\n") == 2
    assert (score.reward, score.verdict) == (1.0, Verdict.ok)
    assert score.details["metrics"] == {"turns": 3, "tool_calls": 2, "tool_errors": 1}
    assert score.feedback.startswith("Tool errors: malformed JSON in tool call")


def test_an_unknown_tool_and_bad_arguments_are_errors_in_the_feedback(env, task):
    wrong = "1234" if task.reference != "1234" else "4321"
    turns, score = play(
        env.start(task),
        format_call("serch", {"query": "x"}),
        format_call("lookup", {"name": "x"}),
        wrong,
    )
    assert turns[0].observation == observation("error: unknown tool 'serch' (tools: lookup)")
    assert turns[1].observation == observation(
        "error: lookup: invalid arguments: query: Field required; "
        "name: Extra inputs are not permitted"
    )
    assert score.details["metrics"] == {"turns": 3, "tool_calls": 2, "tool_errors": 2}
    assert score.feedback == (
        f"The answer {wrong} is wrong.\nTool errors: unknown tool 'serch' (tools: lookup); "
        "lookup: invalid arguments: query: Field required; name: Extra inputs are not permitted."
    )


def test_max_turns_ends_the_episode_without_executing_the_last_call(env, task):
    small = LookupEnv(LookupConfig(documents=200, eval_size=20, max_turns=2))
    call = lookup_call(task.data["name"])
    turns, score = play(small.start(task), call, call)
    assert not turns[0].done and turns[1] == Turn(observation=None, done=True)
    assert (score.reward, score.verdict) == (0.0, Verdict.format_error)
    assert "No final answer" in score.feedback
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}


def test_score_replays_a_whole_transcript_like_the_live_episode(env, task):
    name, code = task.data["name"], task.reference
    right = asyncio.run(env.score(task, correct_episode(name, code)))
    assert (right.reward, right.verdict) == (1.0, Verdict.ok)
    assert right.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    # a model that invents its own tool response: the real tool runs, the fake is skipped
    faked = lookup_call(name) + "\n<tool_response>nope: 0000</tool_response>\n" + code
    assert asyncio.run(env.score(task, faked)).reward == 1.0
    cut = asyncio.run(env.score(task, lookup_call(name) + observation(f"{name}: {code}")))
    assert cut.verdict is Verdict.format_error  # the budget ran out before an answer
