"""Hostile programs: each must end with the right verdict inside its limits while
the host stays untouched. An escape is a release blocker, not a known issue.

All programs of a backend run as one batch (four at a time); each then gets its
own test. Every program reads its context (paths, ports, a token) from argv[1].
The unsafe `process` backend runs only the cases marked `rlimits=True`, which
rlimits and a private working directory contain; the others would reach the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox import ExecutionRecord, Program, Verdict

MiB = 1 << 20
TOKEN = uuid.uuid4().hex[:12]
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Hostile:
    id: str
    source: str
    verdict: Verdict
    rlimits: bool = False  # contained by rlimits alone: also run on the `process` backend
    limits: dict = field(default_factory=dict)  # wall, CPU and output changes only
    stdin: bytes = b""
    args: tuple[str, ...] = ()
    empty: bool = False  # it prints a JSON list of what it got away with: must be []


CTX = "import json, os, sys\nctx = json.loads(sys.argv[1])\n"
PROBE_READ = """
readable = []
for path in ctx["paths"]:
    try:
        with open(path, "rb") as f:
            readable.append([path, f.read(200).decode(errors="replace")])
    except OSError:
        pass
print(json.dumps(readable))
"""
PROBE_NET = """
import socket
opened = []
for kind, target in ctx["targets"]:
    try:
        if kind == "tcp":
            socket.create_connection(tuple(target), timeout=1).close()
        elif kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.sendto(b"\\x00" * 12, tuple(target))
            s.recv(512)
        elif kind == "unix":
            socket.socket(socket.AF_UNIX).connect(target)
        elif kind == "dns":
            socket.getaddrinfo(target, 443)
        opened.append([kind, target])
    except OSError:
        pass
print(json.dumps(opened))
"""
DAEMON = """
import ctypes, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a grandchild in its own session, deaf to polite signals
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        if ctx["exec"]:
            code = "import signal, time\\nfor s in (1, 2, 15): signal.signal(s, signal.SIG_IGN)\\ntime.sleep(600)"
            os.execv(sys.executable, [sys.executable, "-c", code, ctx["token"]])
        ctypes.CDLL(None).prctl(15, ctx["token"][:15].encode())  # PR_SET_NAME: visible as comm
        time.sleep(600)
    os._exit(0)
time.sleep(0.3)
print("parent done")
"""
ESCAPES = """
import ctypes, stat
libc = ctypes.CDLL(None, use_errno=True)
def check(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), "failed")
attempts = {
    "setuid 0": lambda: os.setuid(0),
    "setgid 0": lambda: os.setgid(0),
    "new user namespace": lambda: check(libc.unshare(0x10000000)),
    "new network namespace": lambda: check(libc.unshare(0x40000000)),
    "new mount namespace": lambda: check(libc.unshare(0x00020000)),
    "mount": lambda: check(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "chroot": lambda: os.chroot("/tmp"),
    "ptrace pid 1": lambda: check(libc.ptrace(16, 1, None, None)),
    "mknod disk": lambda: os.mknod("/tmp/disk", 0o600 | stat.S_IFBLK, os.makedev(8, 0)),
    "chown to root": lambda: (open("/tmp/f", "w").close(), os.chown("/tmp/f", 0, 0)),
    "open tty": lambda: open("/dev/tty", "w"),
    "set hostname": lambda: check(libc.sethostname(b"pwned", 5)),
}
done = []
for name, attempt in attempts.items():
    try:
        attempt()
        done.append(name)
    except (OSError, PermissionError):
        pass
print(json.dumps(done))
"""
FILL = """
total = 0
try:
    with open(ctx["fill"], "wb") as f:
        while True:
            f.write(b"\\0" * (1 << 20))
            f.flush()
            total += 1 << 20
except OSError as e:
    print(total, e.errno)
    raise SystemExit(1)
"""
COUNT_FORKS = """import os, time
children = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        children += 1
except OSError:
    pass
print(children)
"""


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


CASES = [
    Hostile(
        "fork_bomb",
        src("""
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """),
        Verdict.time_limit,
        limits={"wall_seconds": 2, "cpu_seconds": 1},
    ),
    Hostile(
        "thread_bomb",
        src("""
            import threading, time
            n = 0
            try:
                while True:
                    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                    n += 1
            except RuntimeError:
                print(n, flush=True)
                os._exit(0)
        """),
        Verdict.ok,
    ),
    Hostile(
        "memory_bomb",
        src("""
            chunks = []
            while True:
                chunks.append(bytearray(1 << 20))
        """),
        Verdict.memory_limit,
        rlimits=True,
    ),
    Hostile(
        "memory_one_huge_block", "block = bytearray(1 << 40)\n", Verdict.memory_limit, rlimits=True
    ),
    Hostile(
        "memory_across_children",  # each child stays under the limit, together they do not
        src("""
            import time
            for _ in range(6):
                if os.fork() == 0:
                    block = bytearray(80 << 20)
                    time.sleep(30)
                    os._exit(0)
            time.sleep(30)
        """),
        Verdict.memory_limit,
    ),
    Hostile(
        "busy_loop",
        "while True:\n    pass\n",
        Verdict.time_limit,
        rlimits=True,
        limits={"cpu_seconds": 1},
    ),
    Hostile(
        "sleep_forever",
        "import time\ntime.sleep(10**6)\n",
        Verdict.time_limit,
        rlimits=True,
        limits={"wall_seconds": 1},
    ),
    Hostile(
        "output_flood",
        "while True:\n    sys.stdout.write('x' * 65536)\n",
        Verdict.output_limit,
        rlimits=True,
    ),
    Hostile(
        "stderr_flood",
        "while True:\n    sys.stderr.write('y' * 65536)\n",
        Verdict.output_limit,
        rlimits=True,
    ),
    Hostile(
        "binary_garbage",
        src("""
            sys.stdout.buffer.write(os.urandom(50000) + b"\\x00\\xff\\xfe\\x1b[2J\\x1b]0;pwned\\x07")
            sys.stderr.buffer.write(os.urandom(5000))
        """),
        Verdict.ok,
        rlimits=True,
    ),
    Hostile(
        "huge_stdin",
        "print(len(sys.stdin.buffer.read()))\n",
        Verdict.ok,
        rlimits=True,
        stdin=os.urandom(32 * MiB),
    ),
    Hostile(
        "huge_argv",  # 20,000 arguments in, an 8 MiB one out
        src("""
            import subprocess
            try:
                subprocess.run(["true", "y" * (8 << 20)])
            except OSError as e:
                print("E2BIG" if e.errno == 7 else e)
            print(len(sys.argv))
        """),
        Verdict.ok,
        rlimits=True,
        args=tuple(["z" * 100] * 20000),
    ),
    Hostile(
        "ignores_termination_asleep",
        src("""
            import signal, time
            for s in (1, 2, 3, 10, 15, 24):  # HUP INT QUIT USR1 TERM XCPU
                signal.signal(s, signal.SIG_IGN)
            while True:
                time.sleep(0.01)
        """),
        Verdict.time_limit,
        rlimits=True,
        limits={"wall_seconds": 1},
    ),
    Hostile(
        "ignores_termination_busy",
        src("""
            import signal
            for s in (1, 2, 15, 24):
                signal.signal(s, signal.SIG_IGN)
            while True:
                pass
        """),
        Verdict.time_limit,
        rlimits=True,
        limits={"wall_seconds": 4, "cpu_seconds": 1},
    ),
    Hostile(
        "raises_its_rlimits",
        src("""
            import resource
            for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC, resource.RLIMIT_NOFILE):
                try:
                    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                    print("raised", r)
                except (ValueError, OSError):
                    pass
            block = bytearray(512 << 20)
        """),
        Verdict.memory_limit,
    ),
    Hostile(
        "write_outside_tmp",
        src("""
            wrote = []
            for path in ctx["outside"]:
                for make in (lambda p: open(p, "w").write("pwned"), os.mkdir):
                    try:
                        make(path)
                        wrote.append(path)
                    except OSError:
                        pass
            for path in ctx["private"]:  # the sandbox's own /tmp and /dev/shm: allowed
                open(path, "w").write("pwned")
            print(json.dumps(wrote))
        """),
        Verdict.ok,
        empty=True,
    ),
    Hostile(
        "read_etc_shadow",
        PROBE_READ,
        Verdict.ok,
        args=("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root/.bashrc", "/root/.ssh/id_rsa")
        + ("/etc/ssh/ssh_host_ed25519_key", "/proc/kcore"),
        empty=True,
    ),
    Hostile("read_service_files", PROBE_READ, Verdict.ok, empty=True),
    Hostile(
        "read_service_environment",
        src("""
            import glob
            dump = [dict(os.environ)]
            for path in glob.glob("/proc/*/environ"):
                try:
                    dump.append(open(path, "rb").read().decode(errors="replace"))
                except OSError:
                    pass
            print(json.dumps(dump))
        """),
        Verdict.ok,
    ),
    Hostile("connect_postgres", PROBE_NET, Verdict.ok, empty=True),
    Hostile("connect_redis", PROBE_NET, Verdict.ok, empty=True),
    Hostile("connect_api_port", PROBE_NET, Verdict.ok, empty=True),
    Hostile("connect_outside", PROBE_NET, Verdict.ok, empty=True),
    Hostile("connect_docker_socket", PROBE_NET, Verdict.ok, empty=True),
    Hostile(
        "kill_parent_and_host",
        src("""
            import signal
            for pid in {os.getppid(), 1, ctx["host_pid"]}:
                if pid not in (0, os.getpid()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            print("alive")
        """),
        Verdict.ok,
    ),
    Hostile(
        "kill_everything",
        src("""
            import signal, time
            if os.fork() == 0:
                time.sleep(30)
            os.kill(-1, signal.SIGKILL)
            print("alive")
        """),
        Verdict.ok,
    ),
    Hostile("daemon_that_execs", DAEMON, Verdict.ok),
    Hostile("daemon_that_sleeps", DAEMON, Verdict.ok),
    Hostile("fill_tmp", FILL, Verdict.runtime_error),
    Hostile("fill_dev_shm", FILL, Verdict.runtime_error),
    Hostile(
        "symlink_tricks",
        src("""
            links = []
            for i, target in enumerate(ctx["paths"]):
                os.symlink(target, f"/tmp/link{i}")
                links.append(f"/tmp/link{i}")
            os.symlink("/etc/passwd", "/tmp/main.py.next")  # bait for the next run's files
            readable = []
            for link in links:
                try:
                    readable.append([link, open(link).read(200)])
                except OSError:
                    pass
            try:
                os.link("/etc/passwd", "/tmp/hard")
                readable.append("hard link")
            except OSError:
                pass
            print(json.dumps(readable))
        """),
        Verdict.ok,
        empty=True,
    ),
    Hostile(
        "proc_probe",
        src("""
            import glob
            cmdlines = []
            for path in glob.glob("/proc/[0-9]*/cmdline"):
                try:
                    cmdlines.append(open(path, "rb").read().replace(b"\\0", b" ").decode()[:300])
                except OSError:
                    pass
            wrote, read = [], []
            for path in ("/proc/sysrq-trigger", "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches"):
                try:
                    open(path, "w").write("1")
                    wrote.append(path)
                except OSError:
                    pass
            for path in ("/proc/kcore", "/proc/1/mem", "/proc/1/environ"):
                try:
                    open(path, "rb").read(16)
                    read.append(path)
                except OSError:
                    pass
            print(json.dumps({"cmdlines": cmdlines, "wrote": wrote, "read": read}))
        """),
        Verdict.ok,
    ),
    Hostile(
        "sys_probe",
        src("""
            wrote = []
            for path in (
                "/sys/fs/cgroup/cgroup.procs",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/pids/pids.max",
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "/sys/class/net/lo/mtu",
                "/sys/power/state",
            ):
                try:
                    open(path, "w").write("max")
                    wrote.append(path)
                except OSError:
                    pass
            print(json.dumps(wrote))
        """),
        Verdict.ok,
        empty=True,
    ),
    Hostile("privilege_escapes", ESCAPES, Verdict.ok, empty=True),
]


def host_ips() -> list[str]:
    """This machine's IPv4 addresses (and docker's bridge): the API listens on them too."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return [ip for ip in out.split() if ":" not in ip] + ["172.17.0.1"]


def leftovers(token: str) -> list[str]:
    """Host processes that carry `token` in their command line or name."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "comm"):
            try:
                text = Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if token[:15] in text:
                found.append(f"{pid}: {text}")
    return found


@pytest.fixture(scope="session")
def host(tmp_path_factory, secret_env):
    """The service's secrets and ports: what no hostile program may reach."""
    service = tmp_path_factory.mktemp("service")  # the database, checkpoints, settings
    shared = Path(f"/var/tmp/opsd-test-{TOKEN}")  # world-readable: only isolation protects it
    shared.mkdir(mode=0o755)
    shm = Path(f"/dev/shm/opsd-test-{TOKEN}")
    secrets = [service / "opsd.db", service / "checkpoints" / "step-1.pt", service / ".env"]
    secrets += [shared / "settings.toml", shm]
    for path in secrets:
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"password={secret_env}\n")
        path.chmod(0o644)
    api = socket.create_server(("0.0.0.0", 0))  # stands in for the API port
    yield {
        "secrets": [str(p) for p in secrets],
        "shared": str(shared),
        "api_port": api.getsockname()[1],
        "host_pid": os.getpid(),
        "ips": host_ips(),
        "secret": secret_env,
    }
    api.close()
    subprocess.run(["rm", "-rf", str(shared), str(shm)], check=True)


def context(case: Hostile, host: dict, token: str) -> dict:
    pwned = f"opsd-pwned-{token}"
    ips = ["127.0.0.1", *host["ips"]]
    targets = {
        "connect_postgres": [["tcp", [ip, 5432]] for ip in ips]
        + [["unix", "/var/run/postgresql/.s.PGSQL.5432"], ["unix", "/tmp/.s.PGSQL.5432"]],
        "connect_redis": [["tcp", [ip, 6379]] for ip in ips]
        + [["unix", "/var/run/redis/redis.sock"]],
        "connect_api_port": [["tcp", [ip, host["api_port"]]] for ip in ips],
        "connect_outside": [
            ["tcp", ["1.1.1.1", 443]],
            ["tcp", ["8.8.8.8", 53]],
            ["udp", ["8.8.8.8", 53]],
        ]
        + [["dns", "pypi.org"], ["tcp", ["172.17.0.1", 2375]]],
        "connect_docker_socket": [["unix", "/var/run/docker.sock"], ["unix", "/run/docker.sock"]]
        + [["unix", "/run/containerd/containerd.sock"]],
    }
    paths = {
        "read_etc_shadow": list(case.args),
        "read_service_files": [
            *host["secrets"],
            str(REPO / "pyproject.toml"),
            str(REPO / ".git/config"),
        ],
        "symlink_tricks": [
            "/etc/shadow",
            "/proc/1/root/etc/shadow",
            f"/proc/{host['host_pid']}/root/etc/hostname",
        ]
        + [*host["secrets"], "../../../../../../etc/shadow"],
    }
    return {
        "token": token,
        "exec": case.id == "daemon_that_execs",
        "host_pid": host["host_pid"],
        "targets": targets.get(case.id, []),
        "paths": paths.get(case.id, []),
        "outside": [
            f"{d}/{pwned}" for d in ("/etc", "/usr", "", "/var/tmp", "/root", "/home", "/dev")
        ]
        + [
            f"{REPO}/{pwned}",
            f"{host['shared']}/{pwned}",
            *(s + ".pwned" for s in host["secrets"] if not s.startswith("/dev/shm/")),
        ],
        "private": [f"/tmp/{pwned}", f"/dev/shm/{pwned}", host["secrets"][-1] + ".pwned"],
        "fill": "/tmp/fill" if case.id == "fill_tmp" else "/dev/shm/fill",
    }


@pytest.fixture(scope="session")
def outcomes(sandbox, aio, host, limits):
    """Every case that this backend runs, as one batch: id -> (record, context, leftovers)."""
    cases = [c for c in CASES if sandbox.name != "process" or c.rlimits]
    if sandbox.name != "process":  # fork bombs only under a process limit seen to hold
        probe = Program(command=["python3", "main.py"], files={"main.py": COUNT_FORKS})
        counted = aio.run(sandbox.run(probe, limits)).stdout
        assert counted == f"{limits.processes - 1}\n", f"process limit does not hold: {counted}"

    async def one(case: Hostile):
        ctx = context(case, host, f"{TOKEN}{CASES.index(case):02d}")
        program = Program(
            command=["python3", "main.py", json.dumps(ctx), *case.args],
            files={"main.py": CTX + case.source},
            stdin=case.stdin,
        )
        record = await sandbox.run(program, limits.model_copy(update=case.limits))
        return case.id, (record, ctx, leftovers(ctx["token"]))

    async def batch():
        return dict(await asyncio.gather(*(one(c) for c in cases)))

    return aio.run(batch(), timeout=300)


def check_host_untouched(record: ExecutionRecord, ctx: dict, left: list[str], host: dict) -> None:
    assert not left, f"processes survived the run: {left}"
    for path in ctx["outside"] + ctx["private"]:
        assert not os.path.lexists(path), f"the program wrote {path} on the host"
    for path in host["secrets"]:
        assert Path(path).read_text() == f"password={host['secret']}\n"
    assert host["secret"] not in record.stdout + record.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_program_is_contained(case: Hostile, sandbox, outcomes, host, limits):
    if case.id not in outcomes:
        pytest.skip("the process backend is unsafe: rlimits cannot contain this program")
    record, ctx, left = outcomes[case.id]
    allowed = limits.model_copy(update=case.limits)
    assert record.verdict == case.verdict, record
    assert record.wall_seconds <= allowed.wall_seconds + 1.0, record
    check_host_untouched(record, ctx, left, host)
    out = record.stdout
    if case.id in ("output_flood", "stderr_flood"):
        assert record.stdout_truncated or record.stderr_truncated
        assert max(len(record.stdout), len(record.stderr)) == allowed.output_bytes
    elif case.id == "thread_bomb":
        assert int(out) < allowed.processes
    elif case.id == "huge_stdin":
        assert out == f"{32 * MiB}\n"
    elif case.id == "huge_argv":
        assert out.split() == ["E2BIG", str(1 + 1 + len(case.args))]
    elif case.id in ("fill_tmp", "fill_dev_shm"):
        filled, errno = map(int, out.split())
        assert errno == 28 and filled <= 16 * MiB  # ENOSPC at the quota
    elif case.id == "raises_its_rlimits":
        assert "raised" not in out
    elif case.id == "read_service_environment":
        assert "OPSD_TEST_SECRET" not in out
    elif case.id == "proc_probe":
        probe = json.loads(out)
        assert probe["wrote"] == [] and "/proc/kcore" not in probe["read"]
        visible = " ".join(probe["cmdlines"])
        for host_process in (
            "pytest",
            "postgres",
            "redis-server",
            "dockerd",
            "containerd",
            "/usr/bin/bwrap",
        ):
            assert host_process not in visible
    elif case.id in ("kill_parent_and_host", "kill_everything"):
        assert out == "alive\n"
    elif case.id.startswith("daemon"):
        assert out == "parent done\n"
    if case.empty:
        assert json.loads(out) == [], out


def test_the_sandbox_still_works_after_the_hostile_batch(sandbox, outcomes, aio):
    program = Program(command=["python3", "-c", "print(6 * 7)"])
    records = aio.run(sandbox.run_many([program] * 8))
    assert [r.stdout for r in records] == ["42\n"] * 8, records[0]
