"""Choose a sandbox backend by name, in one place (DESIGN.md "Sandbox")."""

from __future__ import annotations

from typing import Any

from sandbox.base import Sandbox, SandboxSettings, SandboxUnavailable

BACKENDS = ("bwrap", "docker", "process")


def sandbox_from_settings(settings: SandboxSettings) -> Sandbox:
    if settings.backend == "bwrap":
        from sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(settings)
    if settings.backend == "docker":
        from sandbox.docker import DockerSandbox

        return DockerSandbox(settings)
    from sandbox.process import ProcessSandbox

    return ProcessSandbox(settings)


def make_sandbox(name: str | None = None, /, **settings: Any) -> Sandbox:
    """`make_sandbox("bwrap", workers=4, limits=Limits(wall_seconds=2))`; the
    backend is `name`, else `settings["backend"]`, else bwrap."""
    if name is not None:
        settings["backend"] = name
    return sandbox_from_settings(SandboxSettings(**settings))


def unavailable(name: str, settings: SandboxSettings | None = None) -> str | None:
    """Why backend `name` cannot run on this machine, or None when it can."""
    settings = settings or SandboxSettings(backend=name)
    if name == "bwrap":
        from sandbox.bwrap import unavailable as bwrap_unavailable

        return bwrap_unavailable(settings)
    if name == "docker":
        from sandbox.docker import unavailable as docker_unavailable

        return docker_unavailable(settings)
    if name == "process":
        return None
    raise SandboxUnavailable(f"unknown sandbox backend {name!r}; choose one of {BACKENDS}")
