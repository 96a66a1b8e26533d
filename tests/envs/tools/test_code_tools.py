"""The `python` tool and the `code_tools` environment, in the real (bubblewrap) sandbox.

One environment, owning one warm bwrap sandbox, serves the module; it skips where
bubblewrap cannot run (set OPSD_SANDBOX_REQUIRE=bwrap to make that a failure).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from envs.base import Environment, Task, Verdict
from envs.registry import make_env
from envs.tools import format_call, observation
from envs.tools.builtin import OUTPUT_CHARS, python_tool
from envs.tools.code_tools import CodeToolsConfig, CodeToolsEnv
from sandbox import SandboxSettings, unavailable

why = unavailable("bwrap")
if why and "bwrap" in os.environ.get("OPSD_SANDBOX_REQUIRE", ""):
    raise RuntimeError(f"bwrap required but unavailable: {why}")

DOUBLE = Task(
    id="double",
    prompt="Write f(x) that doubles x. Answer in a ```python block.",
    data={"entry_point": "f", "tests": [{"call": [n], "expected": 2 * n} for n in (0, 2, 5)]},
)
GOOD = "def f(x):\n    return 2 * x\n"
BAD = "def f(x):\n    return x + 2\n"


def answer(code: str) -> str:
    return f"Here it is:\n```python\n{code}```"


@pytest.fixture(scope="module")
def env():
    if why is not None:
        pytest.skip(f"bwrap unavailable: {why}")
    config = CodeToolsConfig(workers=2, wall_seconds=2, cpu_seconds=1, eval_size=4)
    built = CodeToolsEnv(config)
    yield built
    built.close()


def run_python(env: CodeToolsEnv, code: str) -> str:
    return asyncio.run(python_tool(env.code.run_programs)({"code": code}))


def play(env: CodeToolsEnv, *turns: str):
    async def go():
        episode = env.start(DOUBLE)
        seen = [await episode.step(turn) for turn in turns]
        return seen, await episode.finish()

    return asyncio.run(go())


def test_code_tools_is_registered_and_takes_the_service_sandbox_settings():
    env = make_env("code_tools", {"max_turns": 3}, sandbox=SandboxSettings(backend="process"))
    assert isinstance(env, CodeToolsEnv) and isinstance(env, Environment) and env.multi_turn
    assert env.sandbox_settings.backend == "process" and env.config.max_turns == 3
    assert env.code.dataset("eval") == env.dataset("eval")  # the code environment's problems
    assert [t.name for t in env.tools()] == ["python", "calculator"]


def test_the_python_tool_returns_verdict_stdout_and_stderr(env):
    code = "import sys\nprint(sum(range(10)))\nprint('careful', file=sys.stderr)"
    assert run_python(env, code) == "verdict: ok\nstdout:\n45\nstderr:\ncareful"
    crashed = run_python(env, "print('before')\n1 / 0")
    assert crashed.startswith("verdict: runtime_error (exit code 1)\nstdout:\nbefore\nstderr:\n")
    assert crashed.endswith("ZeroDivisionError: division by zero")


def test_the_python_tool_reports_an_infinite_loop_as_a_time_limit(env):
    result = run_python(env, "while True:\n    pass")
    assert result.startswith("verdict: time_limit (")


def test_the_python_tool_caps_its_output_and_has_no_network(env):
    flood = run_python(env, "print('y' * 100_000)")
    assert len(flood) < 2 * OUTPUT_CHARS and "more characters)" in flood
    net = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)"
    assert run_python(env, net).startswith("verdict: runtime_error")


def test_an_episode_that_tries_code_then_answers_is_judged_by_the_tests(env):
    trial = format_call("python", {"code": GOOD + "print(f(21))"})
    turns, score = play(env, trial, answer(GOOD))
    assert turns[0].observation == observation("verdict: ok\nstdout:\n42")
    assert (score.reward, score.verdict, score.feedback) == (1.0, Verdict.ok, None)
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    assert score.details["passed"] == 3


def test_a_wrong_answer_gets_the_code_feedback_and_the_tool_errors(env):
    calc = format_call("calculator", {"expression": "2 ** 99999"})
    turns, score = play(env, calc, format_call("python", {"source": "x"}), answer(BAD))
    assert turns[0].observation == observation("error: calculator: result too large")
    assert "invalid arguments: code: Field required" in turns[1].observation
    assert (score.reward, score.verdict) == (pytest.approx(1 / 3), Verdict.wrong_answer)
    feedback, tool_errors = score.feedback.rsplit("\n", 1)
    assert feedback.startswith("Wrong answer: 1 of 3 tests passed.")
    assert tool_errors.startswith("Tool errors: calculator: result too large; python: invalid")
    assert score.details["metrics"] == {"turns": 3, "tool_calls": 2, "tool_errors": 2}


def test_an_answer_without_code_is_a_format_error_and_a_transcript_replays(env):
    _, score = play(env, "I think it doubles.")
    assert score.verdict is Verdict.format_error and "```python" in score.feedback
    transcript = (
        format_call("python", {"code": "print(1)"})
        + observation("verdict: ok\nstdout:\n1")
        + answer(GOOD)
    )
    replayed = asyncio.run(env.score(DOUBLE, transcript))
    assert (replayed.reward, replayed.verdict) == (1.0, Verdict.ok)
    assert replayed.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    assert json.loads(json.dumps(replayed.details))  # details stay JSON for the record
