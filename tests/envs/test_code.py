"""The code environment: extraction, scoring in the real (bubblewrap) sandbox, feedback.

Every scoring test runs real programs in the bwrap backend; it skips where bubblewrap
cannot run (set OPSD_SANDBOX_REQUIRE=bwrap to make that a failure).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from envs.base import Environment, Task, Verdict
from envs.code import CodeConfig, CodeEnv, extract_code
from envs.code.env import MISSING_CODE, TRUNCATED
from envs.code.judge import FEEDBACK_CHARS
from envs.registry import make_env
from sandbox import Limits, SandboxSettings, make_sandbox, unavailable
from sandbox.process import ProcessSandbox

why = unavailable("bwrap")
if why and "bwrap" in os.environ.get("OPSD_SANDBOX_REQUIRE", ""):
    raise RuntimeError(f"bwrap required but unavailable: {why}")
needs_bwrap = pytest.mark.skipif(why is not None, reason=f"bwrap unavailable: {why}")

SUM_TASK = Task(
    id="sum",
    prompt="Read numbers, print their sum.",
    data={"tests": [{"stdin": f"{a} {b}\n", "stdout": f"{a + b}\n"} for a, b in
                    [(1, 2), (10, 20), (5, 5), (100, 200), (7, 8)]]},
)  # fmt: skip
SUM_OK = "```python\nprint(sum(map(int, input().split())))\n```"


def py(code: str) -> str:
    return f"Here it is:\n```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def shared_box():
    """One warm bwrap sandbox on one event loop for the module (closing one takes seconds)."""
    if why is not None:
        pytest.skip(f"bwrap unavailable: {why}")
    loop = asyncio.new_event_loop()
    box = make_sandbox("bwrap", workers=2)
    yield loop, box
    loop.run_until_complete(box.close())
    loop.close()


@pytest.fixture
def env_with(shared_box):
    """Environments with a given config that run their tests in the shared sandbox."""
    return lambda **config: CodeEnv(CodeConfig(**config), sandbox=shared_box[1])


@pytest.fixture
def score_all(shared_box):
    loop = shared_box[0]

    def go(env: CodeEnv, pairs: list[tuple[Task, str]]):
        async def all_of():
            return await asyncio.gather(*(env.score(t, r) for t, r in pairs))

        return loop.run_until_complete(all_of())

    return go


@pytest.fixture
def score(score_all):
    return lambda env, task, response: score_all(env, [(task, response)])[0]


def plain_env(**config) -> CodeEnv:
    return CodeEnv(CodeConfig(**config))


def test_code_env_is_registered_and_satisfies_the_protocol():
    env = make_env("code", {"eval_size": 8})
    assert isinstance(env, Environment)
    assert env.config.sandbox_backend is None  # the service's choice, else bwrap
    assert env.sandbox_settings.backend == "bwrap"


def test_extraction_takes_the_last_python_block():
    response = "```python\nprint(1)\n```\ntext\n```\nplain\n```\n```py\nprint(2)\n```\nbye"
    assert extract_code(response).code == "print(2)\n"
    assert extract_code("```\nprint(3)\n```").code == "print(3)\n"  # untagged as a fallback
    assert extract_code("<think>```python\nx\n```</think>no code").missing


def test_a_response_without_code_gets_format_error_feedback():
    s = asyncio.run(plain_env().score(SUM_TASK, "the answer is 3"))
    assert (s.reward, s.verdict, s.feedback) == (0.0, Verdict.format_error, MISSING_CODE)


def test_an_unclosed_fence_is_reported_as_a_truncated_answer():
    s = asyncio.run(plain_env().score(SUM_TASK, "```python\nfor i in range(10):\n    print("))
    assert s.verdict is Verdict.format_error
    assert s.feedback == TRUNCATED and "truncated" in s.feedback
    assert extract_code("```python\nx = 1").truncated


def test_code_that_does_not_parse_is_a_compile_error_with_its_line():
    s = asyncio.run(plain_env().score(SUM_TASK, py("x = 1\nprint(x +)")))
    assert s.verdict is Verdict.compile_error and s.reward == 0.0
    assert "SyntaxError" in s.feedback and "line 2" in s.feedback


@needs_bwrap
def test_a_correct_stdin_solution_scores_one_and_ok(env_with, score):
    s = score(env_with(), SUM_TASK, SUM_OK)
    assert (s.reward, s.verdict, s.feedback) == (1.0, Verdict.ok, None)
    assert s.details["passed"] == 5


@needs_bwrap
def test_a_partly_correct_solution_gets_the_fraction_and_the_two_shortest_failures(env_with, score):
    # wrong whenever the sum is at least 15: fails (10,20), (100,200), (7,8)
    code = "a, b = map(int, input().split())\nprint(a + b if a + b < 15 else a * b)"
    s = score(env_with(), SUM_TASK, py(code))
    assert s.reward == pytest.approx(2 / 5)
    assert s.verdict is Verdict.wrong_answer
    assert "2 of 5 tests passed" in s.feedback
    assert s.feedback.count("Input:") == 2 and s.feedback.count("Expected:") == 2
    assert "Input:\n7 8\nOutput:\n56\nExpected:\n15" in s.feedback
    assert "Input:\n10 20\nOutput:\n200\nExpected:\n30" in s.feedback
    assert "100 200" not in s.feedback  # the longest failing case is left out


@needs_bwrap
def test_all_or_nothing_gives_zero_unless_every_test_passes(env_with, score_all):
    code = "a, b = map(int, input().split())\nprint(a + b if a < 50 else 0)"
    partial, full = score_all(
        env_with(reward="all_or_nothing"), [(SUM_TASK, py(code)), (SUM_TASK, SUM_OK)]
    )
    assert (partial.reward, partial.verdict) == (0.0, Verdict.wrong_answer)
    assert partial.details["passed"] == 4
    assert (full.reward, full.verdict) == (1.0, Verdict.ok)


MEAN_TASK = Task(
    id="mean",
    prompt="Define mean(xs).",
    data={
        "entry_point": "mean",
        "tests": [
            {"call": [[1, 2]], "expected": 1.5},
            {"call": [[1, 1, 2]], "expected": 1.3333333},
            {"call": [[0.1, 0.2]], "expected": 0.15},
        ],
    },
)


@needs_bwrap
def test_a_function_call_solution_passes_within_the_float_tolerance(env_with, score_all, score):
    exact = "def mean(xs):\n    print('debug output is fine')\n    return sum(xs) / len(xs)"
    rounded = "def mean(xs):\n    return round(sum(xs) / len(xs), 2)"
    loose, tight = score_all(
        env_with(float_tolerance=1e-6), [(MEAN_TASK, py(exact)), (MEAN_TASK, py(rounded))]
    )
    assert (loose.reward, loose.verdict) == (1.0, Verdict.ok)
    assert tight.reward == pytest.approx(2 / 3) and tight.verdict is Verdict.wrong_answer
    assert "mean([1, 1, 2])" in tight.feedback and "1.33" in tight.feedback
    lenient = score(env_with(float_tolerance=0.01), MEAN_TASK, py(rounded))
    assert lenient.verdict is Verdict.ok


@needs_bwrap
def test_a_missing_entry_point_or_an_early_exit_fails_the_call_tests(env_with, score):
    s = score(env_with(), MEAN_TASK, py("def average(xs):\n    return 0"))
    assert s.verdict is Verdict.runtime_error
    assert "does not define a function 'mean'" in s.feedback
    early_exit = "import os\ndef mean(xs):\n    print(1.5)\n    os._exit(0)"
    s = score(env_with(), MEAN_TASK, py(early_exit))  # printing the answer is not returning it
    assert s.reward == 0.0 and "exited early" in s.feedback


@needs_bwrap
def test_runtime_error_feedback_has_a_short_traceback_and_the_input(env_with, score):
    code = "def helper(xs):\n    return xs[10]\n\ndef mean(xs):\n    return helper(xs)"
    s = score(env_with(), MEAN_TASK, py(code))
    assert s.verdict is Verdict.runtime_error and s.reward == 0.0
    assert "Traceback" in s.feedback and "IndexError: list index out of range" in s.feedback
    assert 'File "solution.py", line 2, in helper' in s.feedback
    assert "harness" not in s.feedback  # only the solution's frames are shown
    assert "Input:\nmean([1, 2])" in s.feedback
    stdin = score(env_with(), SUM_TASK, py("a, b = input().split()\nprint(int(a) // (int(b) - 2))"))
    assert "ZeroDivisionError" in stdin.feedback and "Input:\n1 2" in stdin.feedback


@needs_bwrap
def test_an_infinite_loop_gets_time_limit_feedback(env_with, score):
    s = score(
        env_with(wall_seconds=1, cpu_seconds=0.5),
        MEAN_TASK,
        py("def mean(xs):\n    while True:\n        pass"),
    )
    assert s.verdict is Verdict.time_limit and s.reward == 0.0
    assert s.feedback.startswith("Time limit exceeded") and "Input:\nmean(" in s.feedback


@needs_bwrap
def test_feedback_is_capped(env_with, score):
    long_task = Task(
        id="long",
        prompt="echo",
        data={"tests": [{"stdin": "x" * 5000 + "\n", "stdout": "y" * 5000 + "\n"}] * 2},
    )
    s = score(env_with(), long_task, py("print(input() * 3)"))
    assert s.verdict is Verdict.wrong_answer
    assert len(s.feedback) <= FEEDBACK_CHARS + 60
    assert "more characters" in s.feedback
    crash = score(env_with(), SUM_TASK, py("def f(n):\n    return f(n + 1)\nf(0)"))
    assert crash.verdict is Verdict.runtime_error and "RecursionError" in crash.feedback
    assert len(crash.feedback) < 1000  # the traceback's tail only


@needs_bwrap
def test_the_own_sandbox_starts_lazily_survives_event_loops_and_is_closed():
    env = plain_env(workers=1)
    assert env._box is None
    assert asyncio.run(env.score(SUM_TASK, SUM_OK)).verdict is Verdict.ok  # trainer style
    box = env._box
    assert asyncio.run(env.score(SUM_TASK, SUM_OK)).verdict is Verdict.ok  # a new loop
    assert env._box is box  # the same warm pool

    async def use_and_close():
        async with env:
            return await env.score(SUM_TASK, SUM_OK)

    assert asyncio.run(use_and_close()).verdict is Verdict.ok
    assert env._box is None and env._thread is None
    assert box._closed


def test_without_service_settings_the_own_sandbox_is_bwrap_with_the_configs_width_and_limits():
    env = plain_env(workers=3, wall_seconds=1.5, memory_mb=64)
    assert env.sandbox_settings == SandboxSettings(
        backend="bwrap", workers=3, limits=env.config.limits
    )


def test_the_service_sandbox_settings_choose_the_backend_and_the_config_keeps_width_and_limits():
    service = SandboxSettings(
        backend="docker", image="my-sandbox:1", workers=64, limits=Limits(wall_seconds=30)
    )
    env = make_env("code", {"workers": 2, "wall_seconds": 1.0}, sandbox=service)
    built = env.sandbox_settings
    assert (built.backend, built.image, built.workers) == ("docker", "my-sandbox:1", 2)
    assert built.limits == env.config.limits and built.limits.wall_seconds == 1.0


def test_with_service_settings_the_services_backend_is_used_whatever_the_config_names():
    service = SandboxSettings(backend="bwrap", ro_binds=["/opt/toolchain"])
    env = make_env("code", {"sandbox_backend": "process"}, sandbox=service)
    assert env.sandbox_settings.backend == "bwrap"
    assert env.sandbox_settings.ro_binds == ["/opt/toolchain"]  # the rest applies too


def test_without_service_settings_a_backend_named_in_the_config_is_used():
    assert plain_env(sandbox_backend="process").sandbox_settings.backend == "process"


def test_the_service_limits_cap_what_an_environment_config_asks_for():
    service = SandboxSettings(
        backend="process",
        workers=2,
        limits=Limits(wall_seconds=3, cpu_seconds=1, memory_bytes=128 << 20, processes=8),
    )
    env = make_env(
        "code",
        {"workers": 256, "wall_seconds": 600, "cpu_seconds": 0.5, "memory_mb": 65536},
        sandbox=service,
    )
    built = env.sandbox_settings
    assert built.workers == 2
    assert built.limits == Limits(
        wall_seconds=3, cpu_seconds=0.5, memory_bytes=128 << 20, processes=8
    )


def test_a_program_runs_under_the_service_limit_not_the_configs_higher_one():
    service = SandboxSettings(backend="process", workers=1, limits=Limits(wall_seconds=1))
    env = make_env("code", {"wall_seconds": 30, "cpu_seconds": 30}, sandbox=service)
    sleeper = Task(id="sleep", prompt="", data={"tests": [{"stdin": "", "stdout": "done\n"}]})
    try:
        s = asyncio.run(env.score(sleeper, py("import time\ntime.sleep(20)\nprint('done')")))
        assert s.verdict == Verdict.time_limit
        assert s.details["verdicts"] == ["time_limit"]
    finally:
        env.close()


def test_the_code_env_scores_in_the_backend_the_service_settings_name():
    env = make_env("code", {"workers": 1}, sandbox=SandboxSettings(backend="process"))
    try:
        s = asyncio.run(env.score(SUM_TASK, SUM_OK))
        assert (s.reward, s.verdict) == (1.0, Verdict.ok)
        assert isinstance(env._box, ProcessSandbox) and env._box.settings.workers == 1
    finally:
        env.close()
