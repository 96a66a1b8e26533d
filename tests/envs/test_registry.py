"""The environment registry: built-ins, configuration errors, and `opsd.envs` entry points.

The entry-point test builds a real package around the two example environments of
envs/README.md (the first ```python block, and the first after "A tool environment in
one short file", extracted verbatim so the docs stay correct) and installs it with
pip. It is installed with `--target` into a temporary directory put on sys.path rather
than into site-packages: discovery goes through the same `.dist-info/entry_points.txt`
that `importlib.metadata` reads for any installed package, while other processes
sharing this Python never see the test package.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import envs
from envs import registry
from envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from envs.base import EnvConfig, Environment, Verdict
from envs.code import CodeEnv
from envs.registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    InvalidEnvConfig,
    NotAnEnvironment,
    UnknownEnvironment,
    available,
    config_schema,
    env_class,
    make_env,
    takes_sandbox_settings,
)
from envs.tools import format_call, observation
from sandbox import SandboxSettings

README = Path(envs.__file__).parent / "README.md"


def readme_example(after: str = "") -> str:
    """The first ```python block of envs/README.md after the heading `after`."""
    text = README.read_text()
    start = text.index(f"## {after}\n") if after else 0
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match, f"envs/README.md has no ```python block after {after!r}"
    return match.group(1)


def test_builtin_arithmetic_is_available_and_builds_with_its_config():
    assert available()["arithmetic"] == BUILTIN["arithmetic"]
    assert env_class("arithmetic") is ArithmeticEnv
    env = make_env("arithmetic", {"low": 1, "high": 5, "eval_size": 3})
    assert isinstance(env, ArithmeticEnv)
    assert env.config == ArithmeticConfig(low=1, high=5, eval_size=3)
    assert len(env.dataset("eval")) == 3


def test_make_env_without_config_uses_the_defaults():
    assert make_env("arithmetic").config == ArithmeticConfig()


def test_make_env_accepts_a_config_instance():
    config = ArithmeticConfig(low=2, high=4, eval_size=1)
    assert make_env("arithmetic", config).config is config


def test_unknown_environment_raises_and_lists_the_known_names():
    with pytest.raises(UnknownEnvironment) as err:
        make_env("no-such-env")
    message = str(err.value)
    assert "no-such-env" in message
    for name in available():
        assert name in message


@pytest.mark.parametrize(
    "config", [{"nope": 1}, {"low": 9, "high": 1}, {"eval_size": "many"}, {"low": -5}]
)
def test_invalid_config_raises_invalid_env_config_naming_the_environment(config):
    with pytest.raises(InvalidEnvConfig, match="arithmetic"):
        make_env("arithmetic", config)


class CodeRunningProbe:
    """An environment that runs code: it takes the service's `sandbox_settings`."""

    name = "probe"
    Config = EnvConfig

    def __init__(self, config: EnvConfig, *, sandbox_settings: SandboxSettings | None = None):
        self.config, self.sandbox_settings = config, sandbox_settings


def test_make_env_hands_the_sandbox_settings_to_environments_that_take_them(monkeypatch):
    monkeypatch.setattr(registry, "env_class", lambda name: CodeRunningProbe)
    service = SandboxSettings(backend="process", workers=2)
    assert make_env("probe", sandbox=service).sandbox_settings is service
    assert make_env("probe").sandbox_settings is None  # plain library use: its own defaults
    assert takes_sandbox_settings(CodeEnv) and takes_sandbox_settings(CodeRunningProbe)


def test_an_environment_without_a_sandbox_is_built_as_before_when_settings_are_given():
    assert not takes_sandbox_settings(ArithmeticEnv)
    env = make_env("arithmetic", {"eval_size": 3}, sandbox=SandboxSettings(backend="process"))
    assert isinstance(env, ArithmeticEnv) and env.config == ArithmeticConfig(eval_size=3)
    assert env.dataset("eval") == make_env("arithmetic", {"eval_size": 3}).dataset("eval")


def test_config_schema_is_the_json_schema_of_the_config_model():
    schema = config_schema("arithmetic")
    assert schema == ArithmeticConfig.model_json_schema()
    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(ArithmeticConfig.model_fields)
    assert schema["properties"]["eval_size"]["minimum"] == 1
    assert schema["additionalProperties"] is False


def test_config_schema_of_an_unknown_environment_raises():
    with pytest.raises(UnknownEnvironment):
        config_schema("no-such-env")


TOOL_EXAMPLE = "A tool environment in one short file"
EXAMPLE_MODULES = ("opsd_echo_env", "opsd_weekday_env")


@pytest.fixture
def echo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README examples as one package declaring two `opsd.envs` entry points,
    pip-installed into tmp_path/site and put on sys.path; taken off sys.path and
    sys.modules afterwards."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "opsd_echo_env.py").write_text(readme_example())
    (pkg / "opsd_weekday_env.py").write_text(readme_example(TOOL_EXAMPLE))
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "opsd-echo-env"
            version = "0.0.1"

            [project.entry-points."{ENTRY_POINT_GROUP}"]
            echo = "opsd_echo_env:EchoEnv"
            weekday = "opsd_weekday_env:WeekdayEnv"

            [tool.setuptools]
            py-modules = ["opsd_echo_env", "opsd_weekday_env"]
            """
        )
    )
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--disable-pip-version-check", "--target", str(site), str(pkg)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not {"echo", "weekday"} & set(available())  # nothing is found before it is on the path
    monkeypatch.syspath_prepend(str(site))
    for module in EXAMPLE_MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    yield site
    for module in EXAMPLE_MODULES:
        sys.modules.pop(module, None)


def test_environment_from_an_installed_package_entry_point_is_found_and_built(echo_package):
    assert available()["echo"] == "opsd_echo_env:EchoEnv"
    env = make_env("echo", {"eval_size": 8})
    assert type(env).__module__ == "opsd_echo_env"
    assert str(echo_package) in sys.modules["opsd_echo_env"].__file__
    assert isinstance(env, Environment)
    assert set(config_schema("echo")["properties"]) == {"eval_size", "seed"}

    eval_tasks, train_tasks = env.dataset("eval"), env.dataset("train")
    assert len(eval_tasks) == 8
    assert not {t.id for t in eval_tasks} & {t.id for t in train_tasks}

    task = train_tasks[0]
    right = asyncio.run(env.score(task, f" {task.reference}\n"))
    wrong = asyncio.run(env.score(task, "zzz"))
    assert (right.reward, right.verdict, right.feedback) == (1.0, Verdict.ok, None)
    assert (wrong.reward, wrong.verdict) == (0.0, Verdict.wrong_answer)
    assert task.reference in wrong.feedback

    with pytest.raises(InvalidEnvConfig, match="echo"):
        make_env("echo", {"eval_size": 0})


def test_tool_environment_from_an_installed_package_plays_an_episode(echo_package):
    assert available()["weekday"] == "opsd_weekday_env:WeekdayEnv"
    env = make_env("weekday", {"eval_size": 8, "max_turns": 3})
    assert str(echo_package) in sys.modules["opsd_weekday_env"].__file__
    assert isinstance(env, Environment) and env.multi_turn
    assert {"eval_size", "seed", "max_turns", "describe_tools"} <= set(
        config_schema("weekday")["properties"]
    )
    eval_tasks, train_tasks = env.dataset("eval"), env.dataset("train")
    assert len(eval_tasks) == 8 and not {t.id for t in eval_tasks} & {t.id for t in train_tasks}
    [weekday] = env.tools()
    assert weekday.schema()["function"]["parameters"]["required"] == ["date"]

    task = train_tasks[0]
    call = format_call("weekday", {"date": task.id})
    right = f"{call}{observation(task.reference)}It was a {task.reference}."
    score = asyncio.run(env.score(task, right))
    assert (score.reward, score.verdict, score.feedback) == (1.0, Verdict.ok, None)
    assert score.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}

    bad_date = format_call("weekday", {"date": "1900-02-30"})
    wrong = asyncio.run(env.score(task, f"{bad_date}\nSunday Monday"))
    assert (wrong.reward, wrong.verdict) == (0.0, Verdict.wrong_answer)
    assert task.reference in wrong.feedback and "Tool errors: weekday: ValueError" in wrong.feedback
    assert wrong.details["metrics"] == {"turns": 2, "tool_calls": 1, "tool_errors": 1}


def test_environments_and_the_sandbox_share_one_verdict_type():
    from envs.base import Verdict as EnvVerdict
    from sandbox import Verdict as SandboxVerdict

    assert EnvVerdict is SandboxVerdict
    assert "format_error" in {v.value for v in EnvVerdict}


def test_a_class_lacking_part_of_the_environment_protocol_is_refused_with_what_it_lacks(
    tmp_path, monkeypatch
):
    (tmp_path / "opsd_bare_env.py").write_text(
        "class BareEnv:\n"
        "    name = 'bare'\n"
        "    Config = None\n"
        "    def dataset(self, split):\n"
        "        return []\n"
        "    async def score(self, task, response):\n"
        "        return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(BUILTIN, "bare", "opsd_bare_env:BareEnv")
    with pytest.raises(NotAnEnvironment, match="lacks multi_turn, close, aclose") as refused:
        make_env("bare")
    assert "envs.base.EnvironmentBase" in str(refused.value)
    assert isinstance(refused.value, UnknownEnvironment)  # a 404 / a clean CLI error
