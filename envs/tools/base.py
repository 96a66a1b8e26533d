"""Multi-turn tool environments: the model calls tools until it answers.

An episode is one continuous response string (envs/README.md, "Tool environments"):

    <model turn><tool_call>{"name": ..., "arguments": {...}}</tool_call>
    <tool_response>result</tool_response>
    <model turn> ... final answer

A model turn ends at its first `</tool_call>`; the environment executes that one call
and appends `observation(result)` (environment tokens, masked out of the loss). A turn
without a call is the final answer, which the subclass judges (`judge`). The episode
also ends at `max_turns`, where a call in the last turn is not executed (no turn would
be left to read its result), or when the trainer runs out of token budget and calls
`finish` early; both leave no final answer. Errors are observations, never
exceptions: a malformed call, an unknown tool, invalid arguments or a tool raising
give `<tool_response>error: <message></tool_response>` and count in `tool_errors`.

A subclass sets `name` and `Config`, and writes `dataset`, `tools` and `judge`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from envs.base import EnvConfig, EnvironmentBase, Score, Split, Task, Verdict
from envs.tools.calls import (
    CLOSE,
    OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    CallError,
    ToolCall,
    cut_after_call,
    find_call,
    observation,
    one_line,
)
from envs.tools.tool import Tool, ToolError

FEEDBACK_ERRORS = 3  # tool errors quoted in an episode's feedback


class ToolEnvConfig(EnvConfig):
    """Options every tool environment has; subclasses add their own."""

    max_turns: int = Field(4, ge=1, le=64, description="model turns per episode")
    describe_tools: bool = Field(
        True, description="list the tools and the call format in the plain-text prompt"
    )
    max_observation_chars: int = Field(
        1000, ge=16, description="a tool's result is cut to this many characters"
    )


@dataclass(frozen=True)
class Turn:
    """The environment's answer to one model turn."""

    observation: str | None  # None: the episode is over (final answer given or budget hit)
    done: bool


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


class Episode:
    """One task played turn by turn: `step` each model turn, then `finish`."""

    def __init__(self, env: ToolEnvironment, task: Task) -> None:
        self.env, self.task = env, task
        self.turns = self.tool_calls = self.tool_errors = 0
        self.errors: list[str] = []  # the tool errors' messages, in order
        # one entry per model turn: the tool it called (None: no call, or a malformed one),
        # whether the call ran, and its error message
        self.turn_log: list[dict[str, Any]] = []
        self.answer: str | None = None  # the final answer, once given
        self.transcript = ""  # model turns and observations, as the model saw them
        self.done = False
        self._tools = {t.name: t for t in env.tools()}

    @property
    def metrics(self) -> dict[str, int]:
        return {"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors}

    async def step(self, turn_text: str) -> Turn:
        """Feed one model turn (cut after its call); the observation, or done."""
        if self.done:
            raise RuntimeError("step() after the episode ended")
        turn_text = cut_after_call(turn_text)
        self.turns += 1
        self.transcript += turn_text
        call = find_call(turn_text)
        if call is None:
            self.answer, self.done = turn_text, True
            self.turn_log.append({"tool": None, "ran": False, "error": None})
            return Turn(observation=None, done=True)
        tool = one_line(call.name, 60) if isinstance(call, ToolCall) else None
        entry: dict[str, Any] = {"tool": tool, "ran": False, "error": None}
        self.turn_log.append(entry)
        if self.turns >= self.env.config.max_turns:
            self.done = True
            return Turn(observation=None, done=True)
        self.tool_calls += 1
        errors_before = len(self.errors)
        result = await self._execute(call)
        entry["ran"] = True
        if len(self.errors) > errors_before:
            entry["error"] = self.errors[-1]
        text = observation(_clip(result, self.env.config.max_observation_chars))
        self.transcript += text
        return Turn(observation=text, done=False)

    async def _execute(self, call: ToolCall | CallError) -> str:
        if isinstance(call, CallError):
            return self._error(call.message)
        chosen = self._tools.get(call.name)
        if chosen is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return self._error(f"unknown tool {one_line(call.name, 60)!r} (tools: {known})")
        try:
            return await chosen(call.arguments)
        except ToolError as exc:
            return self._error(f"{chosen.name}: {exc}")
        except Exception as exc:  # the tool's bug or the model's input: either way, an observation
            return self._error(f"{chosen.name}: {type(exc).__name__}: {exc}")

    def _error(self, message: str) -> str:
        message = one_line(message)
        self.tool_errors += 1
        self.errors.append(message)
        return f"error: {message}"

    async def finish(self) -> Score:
        """The final judgement, with the tool errors in the feedback and the metrics in
        `details["metrics"]` (and each turn's call in `details["turn_log"]`). Without a final answer (turn or token budget spent): reward 0,
        `format_error`."""
        self.done = True
        if self.answer is None:
            verdict_score = Score(
                0.0,
                Verdict.format_error,
                f"No final answer: the episode ended after {self.turns} turns while calling "
                "tools. Answer without a tool call once you know the answer.",
            )
        else:
            verdict_score = await self.env.judge(self.task, self.answer)
        feedback = verdict_score.feedback
        if self.errors:
            shown = [e.rstrip(".") for e in dict.fromkeys(self.errors)][:FEEDBACK_ERRORS]
            tool_part = f"Tool errors: {'; '.join(shown)}."
            feedback = f"{feedback}\n{tool_part}" if feedback else tool_part
        details = {**verdict_score.details, "metrics": self.metrics, "turn_log": self.turn_log}
        return Score(verdict_score.reward, verdict_score.verdict, feedback, details)


class ToolEnvironment(EnvironmentBase):
    """Base class of multi-turn tool environments (also an `envs.base.Environment`)."""

    multi_turn: ClassVar[bool] = True
    name: ClassVar[str]
    Config: ClassVar[type[ToolEnvConfig]] = ToolEnvConfig

    def __init__(self, config: ToolEnvConfig | None = None) -> None:
        self.config = config or self.Config()

    def dataset(self, split: Split) -> Sequence[Task]:
        raise NotImplementedError

    def tools(self) -> list[Tool]:
        """The tools the model may call (the same list for every task)."""
        raise NotImplementedError

    async def judge(self, task: Task, answer: str) -> Score:
        """Judge the final answer (the last model turn, which has no tool call)."""
        raise NotImplementedError

    def prompt(self, task: Task) -> str:
        """The plain-text student prompt: the task, after the tools when `describe_tools`."""
        if not self.config.describe_tools:
            return task.prompt
        return f"{describe_tools(self.tools())}\n\n{task.prompt}"

    def chat_prompt(self, task: Task, tokenizer: Any) -> str:
        """The student prompt for a chat model: the task as a user message, with the tool
        schemas, through the tokenizer's chat template; `prompt(task)` when it has none."""
        if not getattr(tokenizer, "chat_template", None):
            return self.prompt(task)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt}],
            tools=[t.schema() for t in self.tools()],
            add_generation_prompt=True,
            tokenize=False,
        )

    def start(self, task: Task) -> Episode:
        return Episode(self, task)

    async def score(self, task: Task, response: str) -> Score:
        """Judge a whole transcript by replaying it: each model turn is stepped (its call
        executed again) and the observation recorded after it is skipped."""
        episode = self.start(task)
        rest = response
        while not episode.done:
            turn_text = cut_after_call(rest)
            rest = rest[len(turn_text) :]
            turn = await episode.step(turn_text)
            if turn.done:
                break
            rest = _skip_observation(rest, turn.observation or "")
            if not rest:  # the transcript stops after an observation: no final answer
                break
        return await episode.finish()


def _skip_observation(rest: str, expected: str) -> str:
    """The transcript after the observation that follows a call (as replayed, or as recorded)."""
    if rest.startswith(expected):
        return rest[len(expected) :]
    if rest.lstrip().startswith(RESPONSE_OPEN) and (end := rest.find(RESPONSE_CLOSE)) >= 0:
        rest = rest[end + len(RESPONSE_CLOSE) :]
        return rest.removeprefix("\n")
    return rest


def _signature(t: Tool) -> str:
    def kind(spec: dict[str, Any]) -> str:
        if "anyOf" in spec:
            return " | ".join(kind(s) for s in spec["anyOf"])
        if "enum" in spec:
            return " | ".join(json.dumps(v) for v in spec["enum"])
        return str(spec.get("type", "any"))

    params = []
    for pname, spec in t.parameters.get("properties", {}).items():
        text = f"{pname}: {kind(spec)}"
        if "default" in spec:
            text += f" = {json.dumps(spec['default'])}"
        params.append(text)
    return f"{t.name}({', '.join(params)})"


def describe_tools(tools: Sequence[Tool]) -> str:
    """The tools and the call format in plain text, for models without a chat template."""
    lines = [
        f'Tools: call one with {OPEN}{{"name": ..., "arguments": {{...}}}}{CLOSE} and read '
        f"its result in {RESPONSE_OPEN}...{RESPONSE_CLOSE}. Answer without a call when done."
    ]
    lines += [f"- {_signature(t)}: {t.description}" for t in tools]
    return "\n".join(lines)
