"""The episode machinery of ToolEnvironment, with a small environment made here, and the
prompts: plain text with the tools described, and a chat template rendering the schemas."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest

from envs.base import Score, Task, Verdict
from envs.tools import Episode, ToolEnvConfig, ToolEnvironment, format_call, observation, tool
from trainer.model import load_tokenizer

TASK = Task(id="t", prompt="Say the secret.\n", reference="42")


@tool
def echo(text: str, times: int = 1, style: Literal["plain", "loud"] = "plain") -> str:
    """Say the text back.

    Not part of the description.
    """
    said = " ".join([text] * times)
    return said.upper() if style == "loud" else said


@tool
async def boom() -> str:
    """Always crashes."""
    raise RuntimeError("kaboom\nwith a second line")


@tool
def big(n: int) -> str:
    """n characters."""
    return "x" * n


class SecretEnv(ToolEnvironment):
    name = "secret"

    def dataset(self, split):
        return [TASK]

    def tools(self):
        return [echo, boom, big]

    async def judge(self, task: Task, answer: str) -> Score:
        if answer.strip() == task.reference:
            return Score(1.0, Verdict.ok)
        return Score(0.0, Verdict.wrong_answer, "Wrong.")


def play(episode: Episode, *turns: str):
    async def go():
        seen = [await episode.step(turn) for turn in turns]
        return seen, await episode.finish()

    return asyncio.run(go())


def test_a_tool_that_raises_gives_a_one_line_error_observation():
    turns, score = play(SecretEnv().start(TASK), format_call("boom"), "42")
    assert turns[0].observation == observation(
        "error: boom: RuntimeError: kaboom with a second line"
    )
    assert (score.reward, score.verdict) == (1.0, Verdict.ok)
    assert score.feedback == "Tool errors: boom: RuntimeError: kaboom with a second line."
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 1}
    assert score.details["turn_log"] == [
        {"tool": "boom", "ran": True, "error": "boom: RuntimeError: kaboom with a second line"},
        {"tool": None, "ran": False, "error": None},
    ]


def test_only_the_first_call_of_a_turn_runs_and_text_after_it_is_dropped():
    episode = SecretEnv().start(TASK)
    both = format_call("echo", {"text": "a"}) + " then " + format_call("boom")
    turns, score = play(episode, both, "42")
    assert turns[0].observation == observation("a")
    assert episode.transcript == format_call("echo", {"text": "a"}) + observation("a") + "42"
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}


def test_a_long_tool_result_is_cut_to_max_observation_chars():
    env = SecretEnv(ToolEnvConfig(max_observation_chars=50))
    turns, _ = play(env.start(TASK), format_call("big", {"n": 500}), "42")
    assert turns[0].observation == observation("x" * 50 + "... (450 more characters)")


def test_an_episode_without_a_final_answer_is_a_format_error_with_the_errors():
    episode = SecretEnv().start(TASK)
    turns, score = play(episode, "<tool_call>{oops</tool_call>")
    assert not turns[0].done  # the trainer ran out of budget here and calls finish
    assert (score.reward, score.verdict) == (0.0, Verdict.format_error)
    assert score.feedback.startswith("No final answer")
    assert score.feedback.endswith("\nTool errors: malformed JSON in tool call: " + (
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)."
    ))  # fmt: skip
    assert score.details["metrics"] == {"turns": 1, "tool_calls": 1, "tool_errors": 1}


def test_stepping_a_finished_episode_is_a_programming_error():
    episode = SecretEnv().start(TASK)
    play(episode, "42")
    with pytest.raises(RuntimeError, match="after the episode ended"):
        asyncio.run(episode.step("more"))


def test_repeated_errors_are_listed_once_in_the_feedback():
    _, score = play(SecretEnv().start(TASK), format_call("nope"), format_call("nope"), "41")
    assert score.feedback == "Wrong.\nTool errors: unknown tool 'nope' (tools: big, boom, echo)."
    assert score.details["metrics"]["tool_errors"] == 2


def test_the_plain_prompt_describes_the_tools_and_the_call_format():
    text = SecretEnv().prompt(TASK)
    assert text.endswith("\n\nSay the secret.\n")
    assert '<tool_call>{"name": ..., "arguments": {...}}</tool_call>' in text
    assert (
        '- echo(text: string, times: integer = 1, style: "plain" | "loud" = "plain"): '
        "Say the text back." in text.splitlines()
    )
    assert "- boom(): Always crashes." in text.splitlines()
    assert SecretEnv(ToolEnvConfig(describe_tools=False)).prompt(TASK) == TASK.prompt


CHAT_TEMPLATE = (
    "{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    "{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_a_chat_prompt_renders_the_tool_schemas_through_the_chat_template():
    tokenizer = load_tokenizer("tiny")
    env = SecretEnv()
    assert env.chat_prompt(TASK, tokenizer) == env.prompt(TASK)  # no template: plain text
    tokenizer.chat_template = CHAT_TEMPLATE
    text = env.chat_prompt(TASK, tokenizer)
    tools_part, _, rest = text.partition("</tools>\n")
    rendered = [json.loads(line) for line in tools_part.removeprefix("<tools>").splitlines()]
    assert rendered == [t.schema() for t in env.tools()]
    assert rest == "<user>Say the secret.\n</user>\n<assistant>"
