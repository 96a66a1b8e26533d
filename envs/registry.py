"""Find environments by name: the built-ins under envs/ and the `opsd.envs` entry points."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from envs.base import EnvConfig, Environment, Operator, missing_members
from sandbox.base import SandboxSettings

ENTRY_POINT_GROUP = "opsd.envs"

BUILTIN: dict[str, str] = {
    "arithmetic": "envs.arithmetic:ArithmeticEnv",
    "code": "envs.code:CodeEnv",
    "lookup": "envs.tools.lookup:LookupEnv",
    "code_tools": "envs.tools.code_tools:CodeToolsEnv",
    "calculator": "envs.tools.calculator:CalculatorEnv",
}


class UnknownEnvironment(LookupError):
    """No built-in or installed environment has this name."""


class NotAnEnvironment(UnknownEnvironment):
    """What a name points to does not implement the `Environment` protocol."""


class InvalidEnvConfig(ValueError):
    """The configuration does not fit the environment's Config model."""


def _load(target: str) -> type[Environment]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available() -> dict[str, str]:
    """Name -> import target of every environment, built-in first, then installed ones."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def env_class(name: str) -> type[Environment]:
    targets = available()
    if name not in targets:
        known = ", ".join(sorted(targets))
        raise UnknownEnvironment(f"unknown environment {name!r}; known: {known}")
    cls = _load(targets[name])
    if missing := missing_members(cls):
        raise NotAnEnvironment(
            f"environment {name!r} ({targets[name]}) lacks {', '.join(missing)} of the "
            "Environment protocol; subclass envs.base.EnvironmentBase for the defaults"
        )
    return cls


def config_schema(name: str) -> dict[str, Any]:
    """JSON schema of an environment's configuration."""
    return env_class(name).Config.model_json_schema()


def takes(cls: type[Environment], keyword: str) -> bool:
    """Whether the environment's constructor has this keyword (`sandbox_settings`: it runs
    code; `data_dir`: it reads data files; envs/README.md)."""
    try:
        return keyword in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no inspectable signature (a C extension, say)
        return False


def takes_sandbox_settings(cls: type[Environment]) -> bool:
    """Whether the environment runs code and wants the service's sandbox settings."""
    return takes(cls, "sandbox_settings")


def validate_config(
    name: str, config: dict[str, Any] | None, *, operator: Operator | None = None
) -> EnvConfig:
    """The environment's Config from `config`; with `operator` (a config a client sent),
    also checked against what the operator allows. InvalidEnvConfig, with pydantic's
    errors as its cause and the first one in its message, when it does not fit."""
    cls = env_class(name)
    context = {"operator": operator} if operator is not None else None
    try:
        return cls.Config.model_validate(config or {}, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = f"{where}: {first['msg']}" if where else first["msg"]
        raise InvalidEnvConfig(f"invalid config for environment {name!r}: {reason}") from exc


def make_env(
    name: str,
    config: dict[str, Any] | EnvConfig | None = None,
    *,
    sandbox: SandboxSettings | None = None,
    data_dir: Path | None = None,
) -> Environment:
    """Build a configured environment instance. `sandbox` (the service's sandbox settings,
    OPSD_SANDBOX__*) goes to environments that take `sandbox_settings`, `data_dir` (where
    the service's environment data files live) to those that take `data_dir`; None leaves
    them to their own defaults."""
    cls = env_class(name)
    cfg = config if isinstance(config, EnvConfig) else validate_config(name, config)
    kwargs: dict[str, Any] = {}
    if sandbox is not None and takes(cls, "sandbox_settings"):
        kwargs["sandbox_settings"] = sandbox
    if data_dir is not None and takes(cls, "data_dir"):
        kwargs["data_dir"] = data_dir
    return cls(cfg, **kwargs)
