"""The text format of tool calls and tool responses, and the parser of model turns.

A model calls a tool by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(the format of Hermes and Qwen chat templates); the environment answers with
`<tool_response>...</tool_response>`. Parsing never raises: a turn has a call, a
`CallError` saying what is wrong with the call it tried, or no call at all (the final
answer).

What the parser forgives, because models write it and the intent is plain:
whitespace and newlines around and inside the JSON, a ```json fence around it, text
before the call, a missing `arguments` (no arguments), `parameters` in place of
`arguments`, `arguments` given as a JSON string holding an object (the OpenAI wire
format), and a Python dict literal (single quotes, True/None) where JSON fails to
parse; that goes through `ast.literal_eval`, which evaluates no code. Text after the
first `</tool_call>` is not part of the turn (`cut_after_call`), so a second call in
one turn is never executed.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
MESSAGE_CHARS = 200  # an error message is one line of at most this many characters

_FENCE = re.compile(r"^```[\w-]*\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call: a tool name and its (not yet validated) arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class CallError:
    """A call the model tried to make that cannot be executed, and why (one line)."""

    message: str


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` on one line (whitespace runs collapsed), cut to about `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def cut_after_call(turn_text: str) -> str:
    """The turn up to and including its first `</tool_call>` (all of it when there is none)."""
    end = turn_text.find(CLOSE)
    return turn_text if end < 0 else turn_text[: end + len(CLOSE)]


def observation(text: str) -> str:
    """What the environment appends after a model turn that called a tool."""
    return f"\n{RESPONSE_OPEN}{text}{RESPONSE_CLOSE}\n"


def format_call(name: str, arguments: dict[str, Any] | None = None) -> str:
    """A call as a model should write it (demonstrations, tests, corpora)."""
    return OPEN + json.dumps({"name": name, "arguments": arguments or {}}) + CLOSE


def _decode(body: str) -> Any:
    """The JSON value of a call's body; a Python literal when JSON fails. Raises ValueError."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as json_error:
        try:
            return ast.literal_eval(body)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"malformed JSON in tool call: {json_error}") from None


def find_call(turn_text: str) -> ToolCall | CallError | None:
    """The first `<tool_call>...</tool_call>` of a model turn (None: no call = final answer)."""
    turn = cut_after_call(turn_text)
    start, end = turn.find(OPEN), turn.find(CLOSE)
    if start < 0:
        return None if end < 0 else CallError(f"{CLOSE} without {OPEN}")
    if end < 0:
        return CallError(f"unclosed tool call: {OPEN} without {CLOSE}")
    body = turn[start + len(OPEN) : end].strip()
    if fenced := _FENCE.match(body):
        body = fenced.group(1)
    if not body:
        return CallError("empty tool call")
    try:
        value = _decode(body)
    except ValueError as exc:
        return CallError(one_line(str(exc)))
    if not isinstance(value, dict):
        return CallError(f"a tool call must be a JSON object, got {_kind(value)}")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return CallError('tool call without a "name"')
    arguments = value.get("arguments", value.get("parameters"))
    if isinstance(arguments, str):  # the OpenAI wire format: a JSON string holding an object
        try:
            arguments = json.loads(arguments) if arguments.strip() else None
        except (ValueError, RecursionError):
            return CallError(f"arguments of {one_line(name, 60)!r} are not a JSON object")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return CallError(f"arguments must be a JSON object, got {_kind(arguments)}")
    return ToolCall(name=name.strip(), arguments=arguments)


def _kind(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        type(None): "null",
    }
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)
