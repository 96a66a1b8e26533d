"""Parsing model turns into tool calls: what is a call, what is an error, what is an answer."""

from __future__ import annotations

import pytest

from envs.tools.calls import (
    CallError,
    ToolCall,
    cut_after_call,
    find_call,
    format_call,
    observation,
)


def test_a_well_formed_call_is_parsed():
    turn = 'Let me look.<tool_call>{"name": "lookup", "arguments": {"query": "kibo"}}</tool_call>'
    assert find_call(turn) == ToolCall("lookup", {"query": "kibo"})


def test_whitespace_and_newlines_around_and_inside_the_json_are_tolerated():
    turn = '<tool_call>\n  {\n "name" :  " lookup ",\n "arguments":{"query":"kibo"}}\n</tool_call>'
    assert find_call(turn) == ToolCall("lookup", {"query": "kibo"})


def test_a_json_fence_inside_the_tags_is_tolerated():
    turn = '<tool_call>\n```json\n{"name": "f", "arguments": {"x": 1}}\n```\n</tool_call>'
    assert find_call(turn) == ToolCall("f", {"x": 1})


def test_a_turn_without_a_call_is_the_final_answer():
    assert find_call("The code is 4821.") is None
    assert find_call("") is None


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ('<tool_call>{"name": "f", "arguments": {"x": }}</tool_call>', "malformed JSON"),
        ("<tool_call>lookup kibo</tool_call>", "malformed JSON"),
        ('<tool_call>{"arguments": {"x": 1}}</tool_call>', 'without a "name"'),
        ('<tool_call>{"name": "", "arguments": {}}</tool_call>', 'without a "name"'),
        ('<tool_call>{"name": 3}</tool_call>', 'without a "name"'),
        ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', "got an array"),
        ('<tool_call>{"name": "f", "arguments": "kibo"}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "f", "arguments": 7}</tool_call>', "got a number"),
        ('<tool_call>["f", {"x": 1}]</tool_call>', "must be a JSON object, got an array"),
        ("<tool_call>  </tool_call>", "empty tool call"),
        ('<tool_call>{"name": "lookup", "arguments": {"query": "ki', "unclosed tool call"),
        ('{"name": "lookup"}</tool_call>', "</tool_call> without <tool_call>"),
    ],
)
def test_a_broken_call_is_a_call_error_with_a_one_line_message(turn, message):
    found = find_call(turn)
    assert isinstance(found, CallError)
    assert message in found.message
    assert "\n" not in found.message and len(found.message) <= 200


def test_missing_arguments_mean_no_arguments():
    assert find_call('<tool_call>{"name": "now"}</tool_call>') == ToolCall("now", {})
    assert find_call('<tool_call>{"name": "now", "arguments": null}</tool_call>') == ToolCall(
        "now", {}
    )


def test_parameters_and_a_json_string_of_arguments_are_read_as_arguments():
    llama_style = '<tool_call>{"name": "f", "parameters": {"x": 1}}</tool_call>'
    openai_style = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    assert find_call(llama_style) == find_call(openai_style) == ToolCall("f", {"x": 1})


def test_single_quotes_are_read_as_a_python_literal_without_running_code():
    assert find_call("<tool_call>{'name': 'f', 'arguments': {'x': True}}</tool_call>") == (
        ToolCall("f", {"x": True})
    )
    code = "<tool_call>{'name': __import__('os').getcwd()}</tool_call>"
    assert isinstance(find_call(code), CallError)


def test_text_after_the_call_is_cut_off_and_only_the_first_of_two_calls_counts():
    first = '<tool_call>{"name": "a"}</tool_call>'
    turn = f'I will call.{first} and then <tool_call>{{"name": "b"}}</tool_call> more'
    assert cut_after_call(turn) == f"I will call.{first}"
    assert find_call(turn) == ToolCall("a", {})
    assert cut_after_call("no call here") == "no call here"


def test_a_huge_or_deeply_nested_body_is_an_error_not_a_crash():
    deep = "<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>"
    assert isinstance(find_call(deep), CallError)
    digits = '<tool_call>{"name": "f", "arguments": {"x": ' + "9" * 10_000 + "}}</tool_call>"
    assert isinstance(find_call(digits), CallError)  # longer than Python reads an int


def test_format_call_and_observation_are_the_documented_text():
    call = format_call("lookup", {"query": "kibo"})
    assert call == '<tool_call>{"name": "lookup", "arguments": {"query": "kibo"}}</tool_call>'
    assert find_call(call) == ToolCall("lookup", {"query": "kibo"})
    assert observation("kibo: 4821") == "\n<tool_response>kibo: 4821</tool_response>\n"
