"""Running untrusted code: the Sandbox protocol, verdicts, limits and backends."""

from sandbox.base import (
    ExecutionRecord,
    Limits,
    Program,
    Sandbox,
    SandboxError,
    SandboxSettings,
    SandboxUnavailable,
    Verdict,
)
from sandbox.factory import make_sandbox, sandbox_from_settings, unavailable

__all__ = [
    "ExecutionRecord",
    "Limits",
    "Program",
    "Sandbox",
    "SandboxError",
    "SandboxSettings",
    "SandboxUnavailable",
    "Verdict",
    "make_sandbox",
    "sandbox_from_settings",
    "unavailable",
]
