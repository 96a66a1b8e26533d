"""What each backend promises beyond the shared protocol."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import tarfile

import pytest

from sandbox import Limits, Program, SandboxSettings, Verdict, make_sandbox
from sandbox.bwrap import bwrap_argv
from sandbox.pool import default_python

HELLO = Program(command=["python3", "-c", "print('hi')"])


def test_a_worker_killed_from_outside_is_replaced(sandbox, aio):
    """The host side survives its worker's death: one sandbox_error, then fresh workers."""
    aio.run(sandbox.start())  # every slot has a worker
    idle = [sandbox._idle.get_nowait() for _ in range(sandbox._idle.qsize())]
    for entry in idle:
        sandbox._idle.put_nowait(entry)
    aio.run(idle[0][1].stop())  # as if the jail or container had died
    records = aio.run(sandbox.run_many([HELLO] * (2 * sandbox.settings.workers)))
    verdicts = [r.verdict for r in records]
    assert verdicts.count(Verdict.sandbox_error) <= 1, records
    assert verdicts.count(Verdict.ok) >= len(verdicts) - 1
    assert all(r.verdict == Verdict.ok for r in aio.run(sandbox.run_many([HELLO] * 4)))


def test_the_process_backend_says_unsafe_in_every_record_and_log_line(aio, caplog):
    caplog.set_level(logging.DEBUG, logger="sandbox")
    box = make_sandbox("process", workers=1)
    try:
        record = aio.run(box.run(HELLO))
    finally:
        aio.run(box.close())
    assert record.unsafe and record.verdict == Verdict.ok
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("sandbox")]
    assert lines and all("UNSAFE" in line for line in lines), lines


def test_bwrap_jails_see_only_system_files_and_no_network():
    argv = bwrap_argv(SandboxSettings(), Limits(tmp_bytes=8 << 20), seccomp_fd=5)
    options = " ".join(argv[: argv.index("-c")])
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--as-pid-1"):
        assert flag in argv
    assert "--die-with-parent" in argv and "--new-session" in argv
    assert "--cap-add" not in argv and argv[argv.index("--seccomp") :][:2] == ["--seccomp", "5"]
    assert argv.count("--remount-ro") == 2  # / and /dev
    assert ["--size", str(8 << 20), "--tmpfs", "/tmp"] == argv[argv.index("/tmp") - 3 :][:4]
    bound = {
        argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--ro-bind-try", "--bind")
    }
    etc = {f"/etc/{name}" for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")}
    assert (
        bound
        <= {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/alternatives"}
        | etc
    )
    assert "/home" not in options and "/root" not in options and "/work" not in options


def test_bwrap_jails_can_be_given_more_read_only_paths():
    argv = bwrap_argv(SandboxSettings(ro_binds=["/opt/toolchain"]), Limits())
    assert argv[argv.index("/opt/toolchain") - 1 :][:3] == [
        "--ro-bind",
        "/opt/toolchain",
        "/opt/toolchain",
    ]


def run_bpf(program: bytes, arch: int, nr: int) -> int:
    """A classic-BPF interpreter for the few instructions sandbox/seccomp.py emits."""
    ops = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # ld [k]: seccomp_data.nr at 0, .arch at 4
            acc = {0: nr, 4: arch}[k]
        elif code in (0x15, 0x35):  # jeq / jge
            taken = acc == k if code == 0x15 else acc >= k
            pc += jt if taken else jf
        elif code == 0x06:
            return k
        pc += 1


def test_the_seccomp_filter_denies_its_list_and_other_abis():
    from sandbox.seccomp import DENIED, RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, deny_list_filter

    for machine, column, arch in (("x86_64", 0, 0xC000003E), ("aarch64", 1, 0xC00000B7)):
        program = deny_list_filter(machine)
        denied = {numbers[column] for numbers in DENIED.values()}
        for nr in range(450):
            expected = RET_ERRNO | 1 if nr in denied else RET_ALLOW
            assert run_bpf(program, arch, nr) == expected, (machine, nr)
        assert run_bpf(program, 0x40000003, 39) == RET_KILL_PROCESS  # i386 via int 0x80
    assert run_bpf(deny_list_filter("x86_64"), 0xC000003E, 0x40000000 | 39) == RET_ERRNO | 1
    assert deny_list_filter("sparc") is None


def test_docker_containers_are_locked_down():
    pytest.importorskip("docker")
    from sandbox.docker import container_options

    limits = Limits(memory_bytes=256 << 20, processes=10, tmp_bytes=32 << 20)
    options = container_options(SandboxSettings(image="some/image:1"), limits, slot=0)
    assert options["image"] == "some/image:1"
    assert options["network_mode"] == "none" and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges:true"]
    assert options["user"] == "65534:65534"
    assert options["pids_limit"] == 11
    assert options["mem_limit"] == options["memswap_limit"] >= 256 << 20
    assert "size=33554432" in options["tmpfs"]["/tmp"]
    assert "privileged" not in options and "volumes" not in options


def test_the_image_root_filesystem_holds_python_and_no_host_secrets():
    from sandbox.image import rootfs

    with tarfile.open(fileobj=io.BytesIO(rootfs(default_python()))) as tar:
        names = set(tar.getnames())
    assert {"usr/bin/python3", "bin", "tmp", "etc/passwd"} <= names
    assert any(n.startswith("usr/lib/python3") and n.endswith("/os.py") for n in names)
    assert not any("site-packages" in n or "/test/" in n for n in names)
    assert not {"etc/shadow", "root/.bashrc", "etc/hostname"} & names


def test_a_cancelled_run_leaves_no_job_behind(sandbox, aio):
    token = f"opsd-cancel-{os.getpid()}"
    program = Program(command=["python3", "-c", "import time; time.sleep(30)", token])

    async def cancel_soon():
        task = asyncio.ensure_future(sandbox.run(program))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    aio.run(cancel_soon())
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, token)]
    assert not left
    assert aio.run(sandbox.run(HELLO)).verdict == Verdict.ok


def _cmdline_has(pid: str, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return token.encode() in f.read()
    except OSError:
        return False
