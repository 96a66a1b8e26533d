"""Judging a program against a task's tests, and the feedback the teacher reads.

A task's tests (`task.data["tests"]`) are JSON objects of three kinds:

- stdin/stdout: `{"stdin": "1 2\\n", "stdout": "3\\n"}`, compared line by line with
  surrounding whitespace ignored and numbers within the float tolerance;
- function call: `{"call": [arg, ...], "expected": value}`, calling
  `task.data["entry_point"]`; a harness in the sandbox prints the JSON result after a
  marker and the comparison (with tolerance) happens here, in the trusted process;
- script: `{"script": "assert f(1) == 2"}`, appended to the solution; passes when the
  program exits cleanly, a failed assertion is a wrong answer (MBPP asserts that are
  not plain calls, HumanEval `check`).

Feedback follows the published method: the first runtime error with a short traceback
and its input; else the time limit; else up to two of the shortest failing cases with
input, output and expected output. Fields and the whole text are capped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from envs.base import Verdict
from sandbox import ExecutionRecord, Program

SOLUTION = "solution.py"
HARNESS = "harness.py"
CASE = "case.json"
MARKER = "\x1eOPSD-RESULT\x1e"
FIELD_CHARS = 250
TRACEBACK_CHARS = 600
FEEDBACK_CHARS = 2000

# Runs in the sandbox: exec the solution, call the entry point, print the JSON result.
HARNESS_SOURCE = f"""\
import json, sys, traceback
with open({CASE!r}) as f:
    case = json.load(f)
namespace = {{"__name__": "solution"}}
try:
    with open({SOLUTION!r}) as f:
        exec(compile(f.read(), {SOLUTION!r}, "exec"), namespace)
    fn = namespace.get(case["entry_point"])
    if not callable(fn):
        raise NameError("the solution does not define a function " + repr(case["entry_point"]))
    result = fn(*case["args"])
except BaseException as exc:
    frames = [fr for fr in traceback.extract_tb(exc.__traceback__) if fr.filename == {SOLUTION!r}]
    lines = ["Traceback (most recent call last):\\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    sys.stderr.write("".join(lines))
    sys.exit(1)

def plain(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)

sys.stdout.write("\\n" + {MARKER!r} + json.dumps(result, default=plain) + "\\n")
"""


def to_json(value: Any) -> Any:
    """A value as the harness would report it (tuples -> lists, sets -> sorted lists)."""

    def plain(v: Any) -> Any:
        return sorted(v, key=repr) if isinstance(v, set | frozenset) else repr(v)

    return json.loads(json.dumps(value, default=plain))


def program_for(case: dict[str, Any], code: str, entry_point: str | None) -> Program:
    """The sandbox program that runs `code` on one test case."""
    if "stdin" in case:
        return Program(command=["python3", SOLUTION], files={SOLUTION: code}, stdin=case["stdin"])
    if "call" in case:
        spec = json.dumps({"entry_point": entry_point, "args": case["call"]})
        files = {SOLUTION: code, HARNESS: HARNESS_SOURCE, CASE: spec}
        return Program(command=["python3", HARNESS], files=files)
    if "script" in case:
        return Program(
            command=["python3", SOLUTION], files={SOLUTION: f"{code}\n\n{case['script']}\n"}
        )
    raise ValueError(f"unknown test case kind: {sorted(case)}")


def close(got: Any, expected: Any, tol: float) -> bool:
    """Equality of JSON values, numbers within `tol` (relative or absolute)."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return got is expected
    if isinstance(got, int | float) and isinstance(expected, int | float):
        return math.isclose(got, expected, rel_tol=tol, abs_tol=tol)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(
            close(g, e, tol) for g, e in zip(got, expected, strict=True)
        )
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], expected[k], tol) for k in got)
    return got == expected


def _token_equal(got: str, expected: str, tol: float) -> bool:
    if got == expected:
        return True
    try:
        return math.isclose(float(got), float(expected), rel_tol=tol, abs_tol=tol)
    except ValueError:
        return False


def same_output(got: str, expected: str, tol: float) -> bool:
    """stdout comparison: lines and tokens, trailing blank lines ignored, numbers within `tol`."""
    got_lines = [line.split() for line in got.rstrip().splitlines()]
    expected_lines = [line.split() for line in expected.rstrip().splitlines()]
    if len(got_lines) != len(expected_lines):
        return False
    return all(
        len(g) == len(e) and all(_token_equal(a, b, tol) for a, b in zip(g, e, strict=True))
        for g, e in zip(got_lines, expected_lines, strict=True)
    )


@dataclass
class Outcome:
    """One test case's result, with what the feedback shows of it."""

    verdict: Verdict
    input: str
    output: str = ""
    expected: str = ""
    error: str = ""  # traceback or the limit that was hit


def render_input(case: dict[str, Any], entry_point: str | None) -> str:
    if "stdin" in case:
        return case["stdin"]
    if "call" in case:
        return f"{entry_point}({', '.join(repr(a) for a in case['call'])})"
    return case["script"]


def judge(
    case: dict[str, Any], record: ExecutionRecord, entry_point: str | None, tol: float
) -> Outcome:
    """Compare one execution with its test case."""
    shown = render_input(case, entry_point)
    verdict = Verdict(record.verdict.value)
    failed_assert = record.stderr.rstrip().rpartition("\n")[2].startswith("AssertionError")
    if "script" in case and verdict is Verdict.runtime_error and failed_assert:
        return Outcome(Verdict.wrong_answer, shown, "the assertion failed", "the assertion holds")
    if verdict is not Verdict.ok:
        error = record.stderr.strip() if verdict is Verdict.runtime_error else ""
        return Outcome(verdict, shown, record.stdout, error=error or (record.message or ""))
    if "stdin" in case:
        passed = same_output(record.stdout, case["stdout"], tol)
        return Outcome(
            Verdict.ok if passed else Verdict.wrong_answer, shown, record.stdout, case["stdout"]
        )
    if "call" in case:
        printed, marker, result = record.stdout.rpartition(MARKER)
        try:
            got = json.loads(result) if marker else None
        except ValueError:
            marker = ""
        if not marker:  # exited before the harness printed the result
            said = f"{record.stdout}\n(no value was returned: the program exited early)"
            return Outcome(
                Verdict.wrong_answer, shown, said.lstrip(), json.dumps(to_json(case["expected"]))
            )
        expected = to_json(case["expected"])
        passed = close(got, expected, tol)
        return Outcome(
            Verdict.ok if passed else Verdict.wrong_answer,
            shown,
            json.dumps(got),
            json.dumps(expected),
        )
    return Outcome(Verdict.ok, shown, record.stdout)


def clip(text: str, limit: int = FIELD_CHARS, keep_end: bool = False) -> str:
    """At most about `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    cut = f"... ({len(text) - limit} more characters)"
    return cut + text[-limit:] if keep_end else text[:limit] + cut


def _block(label: str, text: str) -> str:
    return f"{label}:\n{clip(text.rstrip())}"


def feedback_for(outcomes: list[Outcome]) -> str | None:
    """Teacher-readable feedback for a response's test outcomes; None when all pass."""
    failed = [o for o in outcomes if o.verdict is not Verdict.ok]
    if not failed:
        return None
    n = len(outcomes)
    passed = n - len(failed)
    crashes = [o for o in outcomes if o.verdict in (Verdict.runtime_error, Verdict.memory_limit)]
    crashes += [o for o in outcomes if o.verdict is Verdict.output_limit]
    if crashes:
        o = crashes[0]
        title = {
            Verdict.runtime_error: "Runtime error",
            Verdict.memory_limit: "Memory limit exceeded",
            Verdict.output_limit: "Output limit exceeded",
        }[o.verdict]
        parts = [f"{title} ({passed} of {n} tests passed)."]
        if o.error:
            parts.append(clip(o.error, TRACEBACK_CHARS, keep_end=True))
        parts.append(_block("Input", o.input))
    elif timeouts := [o for o in outcomes if o.verdict is Verdict.time_limit]:
        o = timeouts[0]
        parts = [f"Time limit exceeded ({passed} of {n} tests passed): {o.error}."]
        parts.append(_block("Input", o.input))
    else:
        parts = [f"Wrong answer: {passed} of {n} tests passed."]
        shortest = sorted(failed, key=lambda o: len(o.input) + len(o.expected))[:2]
        for o in shortest:
            parts += [_block("Input", o.input), _block("Output", o.output or "(nothing)")]
            parts.append(_block("Expected", o.expected))
    return clip("\n".join(parts), FEEDBACK_CHARS)
