"""The calculator and lookup tools (the python tool runs in the sandbox: test_code_tools.py)."""

from __future__ import annotations

import asyncio
import re

import pytest

from envs.tools.builtin import calculator, lookup_tool
from envs.tools.tool import InvalidArguments, ToolError


def calc(expression: str) -> str:
    return asyncio.run(calculator({"expression": expression}))


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("48213 * 90871", str(48213 * 90871)),
        (" (1 + 2) * -3 ", "-9"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 100", str(2**100)),
        ("2 ** -2", "0.25"),
        ("1.5e3 + 0.5", "1500.5"),
        ("-" * 499 + "1", "-1"),
        ("123456789123456789 * 987654321987654321", str(123456789123456789 * 987654321987654321)),
    ],
)
def test_calculator_computes_exact_arithmetic(expression, value):
    assert calc(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "not Call"),
        ("abs(-3)", "not Call"),
        ("x + 1", "not Name"),
        ("(1).real", "not Attribute"),
        ("[1, 2]", "not List"),
        ("'a' * 3", "not Constant"),
        ("True + 1", "not Constant"),
        ("1 if 1 else 2", "not IfExp"),
        ("lambda: 1", "not Lambda"),
        ("2 ^ 3", "write ** for powers"),
        ("1 < 2", "not Compare"),
        ("9 ** 9 ** 9", "result too large"),
        ("10 ** 100000", "result too large"),
        ("2 ** 4097", "result too large"),
        ("(2 ** 4000) * (2 ** 4000)", "result too large"),
        ("10.0 ** 400", "result too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1 +", "cannot parse"),
        ("import os", "cannot parse"),
        ("1" + " + 1" * 300, "longer than 500 characters"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        calc(expression)


def test_calculator_validates_its_argument():
    with pytest.raises(InvalidArguments, match="expression"):
        asyncio.run(calculator({"expr": "1 + 1"}))
    assert calculator.schema()["function"]["parameters"]["required"] == ["expression"]


def test_lookup_finds_a_document_by_name_or_by_a_word_of_the_query():
    lookup = lookup_tool({"kibo": "kibo: 4821", "zuma": "zuma: 1093"})

    def ask(query: str) -> str:
        return asyncio.run(lookup({"query": query}))

    assert ask("kibo") == "kibo: 4821"
    assert ask("  'Kibo'. ") == "kibo: 4821"
    assert ask("the code of zuma") == "zuma: 1093"
    assert ask("kib") == "no document matches 'kib'"
    assert lookup.schema()["function"]["name"] == "lookup"
