"""What an environment sees on every backend: the run protocol and its verdicts."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from sandbox import Program, Verdict


def py(source: str, stdin: str | bytes = b"", *args: str, **files: str) -> Program:
    return Program(
        command=["python3", "main.py", *args], files={"main.py": source, **files}, stdin=stdin
    )


def test_a_program_reads_stdin_and_its_output_comes_back(sandbox, aio, limits):
    source = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n"
    record = aio.run(sandbox.run(py(source, "1 2 3 4")))
    assert record.verdict == Verdict.ok, record
    assert (record.stdout, record.stderr, record.exit_code) == ("10\n", "", 0)
    assert record.backend == sandbox.name
    assert record.unsafe == (sandbox.name == "process")
    assert 0 < record.wall_seconds < limits.wall_seconds
    assert record.peak_memory_bytes > 1 << 20


def test_argv_files_in_subdirectories_and_env_reach_the_program(sandbox, aio):
    source = "import os, sys\nfrom pkg import helper\nprint(sys.argv[1:], helper.X, os.environ['MODE'])\n"
    program = Program(
        command=["python3", "main.py", "a", "b"],
        files={"main.py": source, "pkg/__init__.py": "", "pkg/helper.py": "X = 42\n"},
        env={"MODE": "test"},
    )
    record = aio.run(sandbox.run(program))
    assert record.stdout == "['a', 'b'] 42 test\n", record


def test_an_uncaught_exception_is_a_runtime_error_with_its_traceback(sandbox, aio):
    record = aio.run(sandbox.run(py("def f():\n    1 / 0\nf()\n")))
    assert record.verdict == Verdict.runtime_error
    assert record.exit_code == 1
    assert record.stderr.startswith("Traceback (most recent call last):\n")
    assert 'main.py", line 2, in f' in record.stderr
    assert record.stderr.endswith("ZeroDivisionError: division by zero\n")


def test_a_syntax_error_and_exit_codes_are_reported_like_python(sandbox, aio):
    syntax, code, message = aio.run(
        sandbox.run_many(
            [
                py("print("),
                py("import sys\nprint('x')\nsys.exit(3)\n"),
                py("raise SystemExit('bye')\n"),
            ]
        )
    )
    assert syntax.verdict == Verdict.runtime_error and "SyntaxError" in syntax.stderr
    assert (code.verdict, code.exit_code, code.stdout) == (Verdict.runtime_error, 3, "x\n")
    assert (message.exit_code, message.stderr) == (1, "bye\n")


def test_other_commands_run_and_a_missing_one_is_a_runtime_error(sandbox, aio):
    shell = Program(command=["sh", "-c", "read x; echo got $x; exit 4"], stdin="hello\n")
    record, missing = aio.run(sandbox.run_many([shell, Program(command=["no-such-tool"])]))
    assert (record.stdout, record.exit_code) == ("got hello\n", 4), record
    assert missing.verdict == Verdict.runtime_error and missing.exit_code == 127
    assert "no-such-tool" in missing.stderr


def test_a_signal_death_is_reported(sandbox, aio):
    crash, self_kill = aio.run(
        sandbox.run_many(
            [
                py("import ctypes\nctypes.string_at(0)\n"),
                py(
                    "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(9)\n"
                ),
            ]
        )
    )
    assert crash.verdict == Verdict.runtime_error
    assert crash.signal == signal.SIGSEGV and crash.exit_code is None
    assert (self_kill.verdict, self_kill.signal) == (Verdict.runtime_error, signal.SIGTERM)


def test_each_run_starts_in_a_clean_working_directory(sandbox, aio):
    leave = py("open('left-behind', 'w').write('x')\nprint('wrote')\n")
    look = py("import os\nprint(os.path.exists('left-behind'), sorted(os.listdir('.')))\n")
    assert aio.run(sandbox.run(leave)).stdout == "wrote\n"
    for record in aio.run(sandbox.run_many([look] * 8)):  # every worker, at least once
        assert record.stdout == "False ['main.py']\n", record


def test_a_batch_keeps_its_order_and_runs_side_by_side(sandbox, aio):
    programs = [py(f"import time\ntime.sleep(0.5)\nprint({i})\n") for i in range(8)]
    started = time.monotonic()
    records = aio.run(sandbox.run_many(programs))
    elapsed = time.monotonic() - started
    assert [r.stdout for r in records] == [f"{i}\n" for i in range(8)]
    assert elapsed < 8 * 0.5 / 2, elapsed  # 4 workers: about 1 s, surely less than 2


def test_output_beyond_the_cap_is_cut_and_marked(sandbox, aio, limits):
    program = py("import sys\nsys.stdout.write('a' * 100_000)\nsys.stderr.write('b' * 10)\n")
    record = aio.run(sandbox.run(program, limits.model_copy(update={"output_bytes": 1000})))
    assert record.verdict == Verdict.output_limit
    assert record.stdout == "a" * 1000 and record.stdout_truncated
    assert not record.stderr_truncated


KEYS = """
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
"""
LEAVE_BEHIND = (
    KEYS
    + """
import os, time
open("/tmp/left", "w").write("x")
open("/dev/shm/left", "w").write("x")
os.mkdir("/tmp/locked")
os.chmod("/tmp/locked", 0)
os.symlink("/etc/passwd", "/tmp/main.py.link")
libc.shmget(0x1234, 4096, 0o1666)  # IPC_CREAT | 0666
libc.msgget(0x1235, 0o1666)
libc.semget(0x1236, 1, 0o1666)
libc.syscall(ADD_KEY, b"user", b"left", b"secret", 6, -4)  # to the user keyring
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
print("left")
"""
)
LOOK = (
    KEYS
    + """
import os
ipc = [line for kind in ("shm", "msg", "sem") for line in open("/proc/sysvipc/" + kind).readlines()[1:]]
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
key = libc.syscall(KEYCTL, 10, -4, b"user", b"left", 0)  # KEYCTL_SEARCH the user keyring
print(sorted(os.listdir("/tmp")), os.listdir("/dev/shm"), ipc, others, key)
"""
)


def test_nothing_a_run_leaves_behind_reaches_the_next(sandbox, aio):
    if sandbox.name == "process":
        pytest.skip("the process backend is unsafe: runs share the host")
    assert aio.run(sandbox.run(py(LEAVE_BEHIND))).stdout == "left\n"
    for record in aio.run(sandbox.run_many([py(LOOK)] * 8)):  # every worker, at least once
        assert record.stdout == "['main.py'] [] [] [] -1\n", record


SCAN_MEMORY = """
import sys
needle = (sys.argv[1] + sys.argv[2]).encode()  # the one copy this program makes
found = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
        continue
    start, end = (int(x, 16) for x in fields[0].split("-"))
    try:
        with open("/proc/self/mem", "rb") as mem:
            mem.seek(start)
            found += mem.read(end - start).count(needle)
    except (OSError, OverflowError, ValueError):
        pass
print(found)
"""


def test_a_run_finds_nothing_of_earlier_runs_in_its_worker_memory(sandbox, aio):
    """Jobs are forks of a warm worker: the worker must not keep their data."""
    secret = uuid.uuid4().hex
    echo = py("import sys\nprint(sys.stdin.read() * 50)\n", secret * 20, **{"data.txt": secret})
    assert all(r.stdout.startswith(secret) for r in aio.run(sandbox.run_many([echo] * 8)))
    scan = py(SCAN_MEMORY, b"", secret[:16], secret[16:])
    for record in aio.run(sandbox.run_many([scan] * 8)):  # every worker, at least once
        assert record.stdout == "1\n", record
