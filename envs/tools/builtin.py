"""The built-in tools: `calculator`, `python` (in the sandbox) and `lookup` (over documents).

`calculator` is a module-level tool. `python` and `lookup` need something to work on
(a sandbox, a document collection), so they come from factories: `python_tool(run)`
and `lookup_tool(documents)`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from pydantic import Field

from envs.tools.tool import Tool, ToolError, tool
from sandbox import ExecutionRecord, Program

EXPRESSION_CHARS = 500
MAX_BITS = 4096  # the largest integer a calculation may produce (about 1,233 digits)
OUTPUT_CHARS = 600  # of stdout and of stderr in the python tool's result

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _power_too_large(base: int | float, exponent: int | float) -> bool:
    """Whether an integer power would exceed MAX_BITS (checked before computing it)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return False  # floats overflow to an error by themselves
    return (abs(base).bit_length() - 1) * exponent > MAX_BITS


def _evaluate(node: ast.AST) -> int | float:
    """An arithmetic expression tree's value: numbers, + - * / // % ** and parentheses only."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and _power_too_large(left, right):
            raise ToolError("result too large")
        value = _BINARY[type(node.op)](left, right)
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        if isinstance(value, int) and value.bit_length() > MAX_BITS:
            raise ToolError("result too large")
        return value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("^ is not a power here; write ** for powers")
    what = type(node).__name__
    raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed (not {what})")


@tool
def calculator(
    expression: Annotated[str, Field(description="e.g. (1234 * 5678) // 9 - 2 ** 10")],
) -> str:
    """Evaluate an arithmetic expression exactly: integers of any size, decimals,
    + - * / // % ** and parentheses."""
    if len(expression) > EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(f"cannot parse {expression.strip()!r}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression nested too deeply") from None
    return str(value)


ProgramRunner = Callable[[list[Program]], Awaitable[list[ExecutionRecord]]]


def _clip_output(text: str, keep_end: bool) -> str:
    if len(text) <= OUTPUT_CHARS:
        return text
    cut = f"... ({len(text) - OUTPUT_CHARS} more characters)"
    return cut + text[-OUTPUT_CHARS:] if keep_end else text[:OUTPUT_CHARS] + cut


def format_record(record: ExecutionRecord) -> str:
    """A sandbox run as the model reads it: verdict (and why), stdout, stderr, capped."""
    head = f"verdict: {record.verdict.value}"
    if record.verdict.value != "ok" and record.message:
        head += f" ({record.message})"
    parts = [head]
    if record.stdout:
        parts.append(f"stdout:\n{_clip_output(record.stdout.rstrip(), keep_end=False)}")
    if record.stderr:
        parts.append(f"stderr:\n{_clip_output(record.stderr.rstrip(), keep_end=True)}")
    return "\n".join(parts)


def python_tool(run: ProgramRunner) -> Tool:
    """The `python` tool: runs a program with `run` (a sandbox's, e.g.
    `CodeEnv.run_programs`, which honours the service's sandbox settings and the
    environment's limits) and returns its verdict, stdout and stderr."""

    async def python(
        code: Annotated[str, Field(description="a complete Python 3 program")],
    ) -> str:
        """Run a Python program in a sandbox (no network, no input) and return its
        verdict, stdout and stderr. Print what you want to see."""
        [record] = await run([Program(command=["python3", "main.py"], files={"main.py": code})])
        return format_record(record)

    return Tool(python)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def lookup_tool(documents: Mapping[str, str]) -> Tool:
    """The `lookup` tool over `documents` (key -> document text): the document whose key
    is the query (case and surrounding punctuation ignored), else the first key that is a
    word of the query, else "no document matches ...". Keys are lowercase words."""

    def lookup(
        query: Annotated[str, Field(description="the name to look up")],
    ) -> str:
        """Look up the document about a name."""
        key = " ".join(_words(query))
        if key in documents:
            return documents[key]
        for word in _words(query):
            if word in documents:
                return documents[word]
        return f"no document matches {query.strip()[:60]!r}"

    return Tool(lookup)
