"""Hostile programs through one long-lived warm worker per backend, job after job, as
the service uses it: each must end with the right verdict, and the same worker must
then run the next job in a clean state (or, where it cannot, be replaced first).

Each program reads a token from argv[1] and puts it in its children's command lines,
so that a survivor shows up among the host's processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from sandbox import ExecutionRecord, Limits, Program, Sandbox, Verdict
from sandbox.pool import encode

MiB = 1 << 20
ISOLATED = ("bwrap", "docker")  # where memory beyond the address space can be capped

# the worker (the job's parent) by its start time, and what the job finds around it
PROBE = textwrap.dedent("""
    import os
    stat = open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()
    shared = [] if os.getcwd() != "/tmp" else os.listdir("/dev/shm") + [
        line for kind in ("shm", "msg", "sem") for line in open("/proc/sysvipc/" + kind).readlines()[1:]
    ]
    print(stat[19], sorted(os.listdir(".")), shared)
""")


def hostile(source: str) -> str:
    return "import os, sys\ntoken = sys.argv[1]\n" + textwrap.dedent(source).lstrip("\n")


# Memory held outside any address space, which RLIMIT_AS and sampling do not see.
# `python3 -c` is a fresh interpreter, smaller than the worker: without its OOM score,
# the kernel would kill the worker.
MEMFD = hostile("""
    held = []
    for _ in range(512):
        fd = os.memfd_create(token)
        os.write(fd, b"x" * (1 << 20))
        held.append(fd)
    print("held 512 MiB")
""")
SYSV_SHM = hostile("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    for _ in range(64):  # 8 MiB each, detached: no process maps them any more
        shm = libc.shmget(0, 8 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        if shm < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        address = libc.shmat(shm, None, 0)
        ctypes.memset(address, 1, 8 << 20)
        libc.shmdt(ctypes.c_void_p(address))
    print("held 512 MiB")
""")
SOCKET_BUFFERS = hostile("""
    import resource, socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, queued = [], 0
    try:
        while True:
            pair = socket.socketpair()
            held.append(pair)
            for sock in pair:  # fill both directions
                sock.setblocking(False)
                try:
                    while True:
                        queued += sock.send(b"x" * 65536)
                except BlockingIOError:
                    pass
    except OSError:  # out of descriptors
        pass
    print(f"queued {queued >> 20} MiB in {2 * len(held)} sockets")
""")
TRACED_AND_STOPPED = hostile("""
    import ctypes, signal, time
    if os.fork() == 0:  # a child that would outlive its parent
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", token])
    ctypes.CDLL(None).ptrace(0, 0, None, None)  # PTRACE_TRACEME: the worker is the tracer
    os.kill(os.getpid(), signal.SIGSTOP)
    print("resumed")
""")
DEEP_TREE = hostile("""
    import socket, stat
    top = os.getcwd()
    for base in [top] + (["/dev/shm"] if top == "/tmp" else []):
        os.chdir(base)
        for depth in range(1100):  # deeper than Python's recursion limit
            os.mkdir("d")
            os.chdir("d")
            if depth % 100 == 99:
                os.mkfifo("fifo")
                socket.socket(socket.AF_UNIX).bind("socket")
                os.symlink("..", "loop")
                open("file", "w").write("x")
                os.chmod("file", 0)
        os.chdir(base)
    os.chdir(top)
    for depth in range(40):  # a path far beyond PATH_MAX
        name = "n" * 200
        os.mkdir(name)
        os.chdir(name)
    os.chdir(top)
    os.chmod("d/d/d", stat.S_IWUSR)  # unreadable, unsearchable
    os.chmod("d", stat.S_IRUSR | stat.S_IXUSR)  # not writable
    try:
        os.chmod(top, 0)  # bwrap's /tmp and the process backend's directory are the job's
    except OSError:
        pass
    print("left a tree")
""")


class Warm:
    """One warm worker of a backend, used job after job."""

    def __init__(self, box: Sandbox, aio: Any, limits: Limits) -> None:
        self.box, self.aio, self.limits = box, aio, limits

    def run(self, program: Program, limits: Limits | None = None) -> ExecutionRecord:
        return self.aio.run(self.box.run(program, limits or self.limits))

    def probe(self) -> str:
        record = self.run(Program(command=["python3", "main.py"], files={"main.py": PROBE}))
        assert record.verdict == Verdict.ok, record
        return record.stdout


@pytest.fixture
def warm(one_worker: Sandbox, aio: Any, limits: Limits) -> Warm:
    return Warm(one_worker, aio, limits)


def survivors(token: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def run_hostile(warm: Warm, source: str, **limits: float) -> ExecutionRecord:
    """Run `source` between two probes: the same worker must be there, and clean."""
    token = f"opsd-warm-{uuid.uuid4().hex[:12]}"
    before = warm.probe()
    program = Program(command=["python3", "-c", source, token])
    record = warm.run(program, warm.limits.model_copy(update=limits))
    assert warm.probe() == before, record  # the same worker, and nothing left in sight
    assert not survivors(token), record
    return record


@pytest.mark.parametrize(
    "source", [MEMFD, SYSV_SHM, SOCKET_BUFFERS], ids=["memfd", "sysv_shm", "socket_buffers"]
)
def test_memory_held_outside_the_address_space_is_capped(warm, source):
    if warm.box.name not in ISOLATED:
        pytest.skip("the process backend is unsafe: it caps address spaces only")
    record = run_hostile(warm, source)
    assert record.verdict == Verdict.memory_limit, record
    assert "held" not in record.stdout and "queued" not in record.stdout


def test_a_job_that_traces_and_stops_itself_runs_into_its_time_limit(warm):
    record = run_hostile(warm, TRACED_AND_STOPPED, wall_seconds=1)
    assert record.verdict == Verdict.time_limit, record
    assert record.wall_seconds >= 1 and record.stdout == ""


def test_clean_up_survives_any_tree_a_job_leaves(warm):
    record = run_hostile(warm, DEEP_TREE)
    assert (record.verdict, record.stdout) == (Verdict.ok, "left a tree\n"), record


LEAVE_MANY = hostile("""
    for i in range(10000):  # cleaning these up takes the worker a while
        open(f"f{i}", "w").close()
    print("left")
""")


def test_a_worker_that_dies_cleaning_up_is_replaced_before_the_next_job(warm):
    warm.probe()  # the worker is up
    program = Program(command=["python3", "-c", LEAVE_MANY, "token"])

    async def die_cleaning_up() -> ExecutionRecord:
        slot, worker = warm.box._idle.get_nowait()
        try:
            await worker.settle()  # after the probe
            # Room to write the files on a busy machine: the job must finish, not hit a limit.
            limits = warm.limits.model_copy(update={"cpu_seconds": 5, "wall_seconds": 10})
            header, payload = encode(program, limits)
            raw, _ = await worker.call(header, payload, limits)
            assert raw["exit_code"] == 0, raw
            await worker.stop()  # it answered; now it dies before it has cleaned up
        finally:
            warm.box._idle.put_nowait((slot, worker))
        return await warm.box.run(Program(command=["python3", "-c", "print(42)"]))

    record = warm.aio.run(die_cleaning_up())
    assert (record.verdict, record.stdout) == (Verdict.ok, "42\n"), record


IMMUTABLE = hostile("""
    import subprocess
    open("stuck", "w").write("x")
    subprocess.run(["chattr", "+i", "stuck"], check=True)  # root may: no one can unlink it
    print(os.path.abspath("stuck"))
""")


def test_a_worker_that_cannot_clean_up_is_replaced_before_the_next_job(warm):
    if warm.box.name != "process" or os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("only a root job on the unsafe backend can leave what no one can remove")
    before = warm.probe()
    record = warm.run(Program(command=["python3", "-c", IMMUTABLE, "token"]))
    stuck = record.stdout.strip()
    try:
        assert record.verdict == Verdict.ok, record
        after = warm.probe()  # on a new worker, which works
        assert after.split()[0] != before.split()[0]
    finally:
        subprocess.run(["chattr", "-i", stuck], check=False)
        shutil.rmtree(os.path.dirname(os.path.dirname(stuck)), ignore_errors=True)
