"""Find environments by name: the built-ins under envs/ and the `opsd.envs` entry points."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from envs.base import EnvConfig, Environment
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
    return _load(targets[name])


def config_schema(name: str) -> dict[str, Any]:
    """JSON schema of an environment's configuration."""
    return env_class(name).Config.model_json_schema()


def takes_sandbox_settings(cls: type[Environment]) -> bool:
    """Whether the environment runs code and wants the service's sandbox settings: its
    constructor has a `sandbox_settings` keyword (envs/README.md, "Environments that run code")."""
    try:
        return "sandbox_settings" in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no inspectable signature (a C extension, say)
        return False


def make_env(
    name: str,
    config: dict[str, Any] | EnvConfig | None = None,
    *,
    sandbox: SandboxSettings | None = None,
) -> Environment:
    """Build a configured environment instance. `sandbox` (the service's sandbox settings,
    OPSD_SANDBOX__*) goes to environments that take `sandbox_settings`; None leaves
    them to their own defaults."""
    cls = env_class(name)
    try:
        cfg = config if isinstance(config, EnvConfig) else cls.Config.model_validate(config or {})
    except ValidationError as exc:
        raise InvalidEnvConfig(f"invalid config for environment {name!r}: {exc}") from exc
    if sandbox is not None and takes_sandbox_settings(cls):
        return cls(cfg, sandbox_settings=sandbox)
    return cls(cfg)
