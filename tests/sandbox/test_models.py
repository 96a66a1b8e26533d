"""The sandbox's schemas, verdict classification and factory (no backend needed)."""

from __future__ import annotations

import signal

import pytest
from pydantic import ValidationError

from sandbox import (
    ExecutionRecord,
    Limits,
    Program,
    SandboxSettings,
    SandboxUnavailable,
    Verdict,
    make_sandbox,
    unavailable,
)
from sandbox.base import classify

RAW = {"killed": None, "signal": None, "exit_code": 0, "cpu": 0.1, "peak_memory": 1 << 20}


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x", "a/../../x", "a/./b", "", ".", "a//b", "a/"]
)
def test_file_names_must_be_plain_relative_paths(name):
    with pytest.raises(ValidationError):
        Program(command=["true"], files={name: "x"})


def test_commands_and_environment_reject_nul_bytes_and_bad_names():
    for bad in (
        {"command": []},
        {"command": ["a\0b"]},
        {"command": ["true"], "env": {"A=B": "x"}},
        {"command": ["true"], "env": {"A": "x\0"}},
    ):
        with pytest.raises(ValidationError):
            Program(**bad)
    assert Program(command=["true"], files={"pkg/mod.py": b"\xff"}).files["pkg/mod.py"] == b"\xff"


def test_limits_are_validated_and_frozen():
    with pytest.raises(ValidationError):
        Limits(wall_seconds=0)
    with pytest.raises(ValidationError):
        Limits(memory_bytes=1024)
    with pytest.raises(ValidationError):
        Limits(unknown=1)
    limits = Limits()
    with pytest.raises(ValidationError):
        limits.wall_seconds = 1


@pytest.mark.parametrize(
    ("raw", "stderr", "verdict"),
    [
        ({}, "", Verdict.ok),
        ({"exit_code": 1}, "Traceback ...\nValueError: x\n", Verdict.runtime_error),
        ({"exit_code": 1}, "Traceback ...\nMemoryError\n", Verdict.memory_limit),
        ({"exit_code": 1}, "ValueError: not a MemoryError\n", Verdict.runtime_error),
        ({"exit_code": None, "signal": signal.SIGABRT}, "std::bad_alloc", Verdict.memory_limit),
        (
            {"exit_code": None, "signal": signal.SIGKILL, "peak_memory": 250 << 20},
            "",
            Verdict.memory_limit,
        ),
        ({"exit_code": None, "signal": signal.SIGSEGV}, "", Verdict.runtime_error),
        ({"exit_code": None, "signal": signal.SIGXCPU}, "", Verdict.time_limit),
        ({"cpu": 1.5}, "", Verdict.time_limit),
        ({"killed": "wall", "exit_code": None, "signal": signal.SIGKILL}, "", Verdict.time_limit),
        (
            {"killed": "output", "exit_code": None, "signal": signal.SIGKILL},
            "",
            Verdict.output_limit,
        ),
        (
            {"killed": "memory", "exit_code": None, "signal": signal.SIGKILL},
            "",
            Verdict.memory_limit,
        ),
        ({"oom": True, "exit_code": 1}, "", Verdict.memory_limit),
        ({"error": "set-up failed"}, "", Verdict.sandbox_error),
    ],
)
def test_verdicts_follow_from_how_the_program_ended(raw, stderr, verdict):
    limits = Limits(cpu_seconds=1, memory_bytes=256 << 20)
    assert classify({**RAW, **raw}, stderr, limits)[0] == verdict


def test_sandbox_verdicts_match_the_environment_verdicts_by_value():
    from envs.base import Verdict as EnvVerdict

    for verdict in Verdict:
        assert EnvVerdict(verdict.value) == verdict


def test_records_serialise_to_json_and_back():
    record = ExecutionRecord(verdict=Verdict.ok, stdout="\ufffd\x00", backend="bwrap")
    assert ExecutionRecord.model_validate_json(record.model_dump_json()) == record


def test_the_factory_builds_backends_by_name_and_rejects_others():
    box = make_sandbox("process", workers=3)
    assert (box.name, box.settings.workers, box.unsafe) == ("process", 3, True)
    assert make_sandbox().name == "bwrap"
    assert make_sandbox(backend="docker", image="elsewhere/sandbox:1").settings.image == (
        "elsewhere/sandbox:1"
    )
    with pytest.raises(ValidationError):
        make_sandbox("chroot")
    with pytest.raises(SandboxUnavailable):
        unavailable("chroot")
    assert unavailable("process") is None
    assert "bubblewrap" in unavailable("bwrap", SandboxSettings(bwrap_path="/nonexistent/bwrap"))
