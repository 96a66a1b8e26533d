"""Typed functions as tools: JSON schemas from signatures, validation, results as text."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from envs.tools.tool import InvalidArguments, Tool, ToolError, tool


def call(t: Tool, **arguments) -> str:
    return asyncio.run(t(arguments))


def search(
    query: Annotated[str, Field(description="words to look for")],
    limit: int = 3,
    threshold: float = 0.5,
    exact: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "thorough"] = "fast",
) -> dict:
    """Search the notes.

    A second paragraph that is not part of the description.
    """
    return {"query": query, "limit": limit, "threshold": threshold, "exact": exact,
            "tags": tags, "mode": mode}  # fmt: skip


def test_the_schema_comes_from_the_signature_and_the_docstring():
    schema = tool(search).schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "search"
    assert function["description"] == "Search the notes."
    parameters = function["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["query"]
    assert parameters["additionalProperties"] is False
    props = parameters["properties"]
    assert props["query"] == {"type": "string", "description": "words to look for"}
    assert props["limit"] == {"type": "integer", "default": 3}
    assert props["threshold"] == {"type": "number", "default": 0.5}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["tags"] == {
        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
        "default": None,
    }
    assert props["mode"] == {"type": "string", "enum": ["fast", "thorough"], "default": "fast"}


def test_a_parameter_named_title_or_json_keeps_its_name_and_schema():
    def note(title: str, json: int = 0, schema: str = "") -> str:
        """Write a note."""
        return f"{title}/{json}/{schema}"

    t = tool(note)
    assert set(t.parameters["properties"]) == {"title", "json", "schema"}
    assert t.parameters["properties"]["title"] == {"type": "string"}
    assert call(t, title="a", json=2, schema="s") == "a/2/s"


def test_name_and_description_can_be_given():
    t = tool(name="find", description="Find things.")(search)
    assert (t.name, t.description) == ("find", "Find things.")
    with pytest.raises(ValueError, match="must match"):
        tool(search, name="no spaces allowed")


def test_arguments_are_validated_and_defaults_filled():
    t = tool(search)
    got = call(t, query="kibo", limit="5", tags=["a"])  # lax mode: "5" is read as 5
    assert got == (
        '{"query": "kibo", "limit": 5, "threshold": 0.5, "exact": false, '
        '"tags": ["a"], "mode": "fast"}'
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "query: Field required"),
        ({"query": "x", "limit": "many"}, "limit: Input should be a valid integer"),
        ({"query": "x", "mode": "slow"}, "mode: Input should be 'fast' or 'thorough'"),
        ({"query": "x", "color": "red"}, "color: Extra inputs are not permitted"),
        ({"query": ["not", "a", "string"]}, "query: Input should be a valid string"),
    ],
)
def test_invalid_arguments_raise_invalid_arguments_naming_the_parameter(arguments, message):
    with pytest.raises(InvalidArguments, match=message):
        asyncio.run(tool(search)(arguments))


def test_an_async_function_is_awaited():
    @tool
    async def slow_add(a: int, b: int) -> int:
        """Add two integers, slowly."""
        await asyncio.sleep(0)
        return a + b

    assert slow_add.parameters["required"] == ["a", "b"]
    assert call(slow_add, a=2, b=3) == "5"


def test_results_that_are_not_text_are_json():
    class Point(BaseModel):
        x: int
        y: int

    @tool
    def where() -> Point:
        """Where we are."""
        return Point(x=1, y=2)

    @tool
    def nothing() -> None:
        """Nothing."""

    assert where.parameters["properties"] == {}
    assert call(where) == '{"x": 1, "y": 2}'
    assert call(nothing) == "null"


def test_a_tool_error_propagates_to_the_episode():
    @tool
    def fail(x: int) -> str:
        """Always fails."""
        raise ToolError(f"no luck with {x}")

    with pytest.raises(ToolError, match="no luck with 4"):
        call(fail, x=4)


def test_varargs_have_no_schema():
    def spread(*values: int) -> int:
        return sum(values)

    with pytest.raises(TypeError, match="args"):
        tool(spread)


def test_positional_only_parameters_are_passed_by_position():
    def power(base: int, /, exponent: int = 2) -> int:
        """base ** exponent."""
        return base**exponent

    assert call(tool(power), base=3) == "9"
