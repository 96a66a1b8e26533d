"""Choose a sandbox backend by name, in one place (docs/operating.md "Sandbox settings")."""

from __future__ import annotations

from typing import Any

from sandbox.base import Sandbox, SandboxSettings, SandboxUnavailable

BACKENDS = ("bwrap", "docker", "process")


def _docker_module():
    try:
        from sandbox import docker
    except ImportError as e:  # the docker SDK
        raise SandboxUnavailable(f"the docker backend needs `pip install docker`: {e}") from e
    return docker


def sandbox_from_settings(settings: SandboxSettings) -> Sandbox:
    if settings.backend == "bwrap":
        from sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(settings)
    if settings.backend == "docker":
        return _docker_module().DockerSandbox(settings)
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
    if name not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r}; choose one of {BACKENDS}")
    settings = settings or SandboxSettings(backend=name)
    if name == "bwrap":
        from sandbox.bwrap import unavailable as bwrap_unavailable

        return bwrap_unavailable(settings)
    if name == "docker":
        try:
            return _docker_module().unavailable(settings)
        except SandboxUnavailable as e:
            return str(e)
    return None  # process: a plain subprocess runs anywhere
