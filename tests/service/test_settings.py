"""service.settings.Settings: OPSD_* environment variables, nested ones with `__`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.base import Limits, SandboxSettings
from service.settings import Settings


def test_the_sandbox_defaults_to_bwrap_when_no_variable_names_one(monkeypatch):
    for name in ("OPSD_SANDBOX__BACKEND", "OPSD_SANDBOX__WORKERS"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().sandbox == SandboxSettings()
    assert Settings().sandbox.backend == "bwrap"


def test_opsd_sandbox_variables_set_the_nested_sandbox_settings(monkeypatch):
    monkeypatch.setenv("OPSD_SANDBOX__BACKEND", "docker")
    monkeypatch.setenv("OPSD_SANDBOX__WORKERS", "8")
    monkeypatch.setenv("OPSD_SANDBOX__IMAGE", "my-sandbox:1")
    monkeypatch.setenv("OPSD_SANDBOX__LIMITS__WALL_SECONDS", "2.5")
    sandbox = Settings().sandbox
    assert (sandbox.backend, sandbox.workers, sandbox.image) == ("docker", 8, "my-sandbox:1")
    assert sandbox.limits == Limits(wall_seconds=2.5)  # the other limits keep their defaults


def test_single_underscore_names_still_parse_beside_nested_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPSD_CLAIM_IDLE_S", "7.5")
    monkeypatch.setenv("OPSD_SANDBOX__WORKERS", "3")
    monkeypatch.setenv("OPSD_SANDBOX_REQUIRE", "bwrap")  # the sandbox tests' switch: ignored
    settings = Settings()
    assert settings.data_dir == Path(tmp_path) and settings.claim_idle_s == 7.5
    assert settings.sandbox.workers == 3


def test_a_misspelt_sandbox_variable_is_an_error_not_ignored(monkeypatch):
    monkeypatch.setenv("OPSD_SANDBOX__BACKNED", "docker")
    with pytest.raises(ValidationError, match="backned"):
        Settings()


def test_an_unknown_sandbox_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("OPSD_SANDBOX__BACKEND", "chroot")
    with pytest.raises(ValidationError, match="backend"):
        Settings()


def test_the_replica_id_defaults_to_host_and_port_and_can_be_named(monkeypatch):
    monkeypatch.delenv("OPSD_REPLICA_ID", raising=False)
    monkeypatch.setenv("OPSD_PORT", "8123")
    assert Settings().replica_id == f"{socket.gethostname()}:8123" == Settings().replica_id
    monkeypatch.setenv("OPSD_REPLICA_ID", "api-0")
    assert Settings().replica_id == "api-0"
