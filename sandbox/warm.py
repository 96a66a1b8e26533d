"""The warm worker: a pre-started interpreter that forks one child per job.

This file lives in two places. The host imports it for the frame format; inside a
jail (bwrap), a container (docker) or a plain subprocess (process) it runs as
`python3 -c <this source> MODE`, reads jobs on stdin and answers on stdout. It uses
the standard library only and must run on the sandbox's own Python (3.9+).

Per job (mode "jail"): the worker forks a supervisor, which enters a new pid
namespace and forks the job as its pid 1. The job makes its own mount and IPC
namespaces with a fresh /tmp, /dev/shm and /proc, drops every capability, sets
rlimits and runs. When it ends, the kernel kills whatever it left behind.
Mode "container": the worker is the container's pid 1 (which the job cannot kill)
and supervises the job itself; afterwards it kills every other process and wipes
/tmp, /dev/shm and System V IPC. Mode "plain": no isolation at all (unsafe).

Frames: 4-byte big-endian length, then bytes. A request is a JSON header frame
and a payload frame (the files, then stdin); a response is a JSON header frame
and a payload frame (stdout, then stderr).
"""

import ctypes
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types

FRAME = struct.Struct(">I")
MAX_HEADER_BYTES = 16 << 20
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x08000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 1, 4, 24, 47
CAP_SYS_ADMIN, CAP_SETPCAP = 21, 8
TICK_SECONDS = 0.02  # how often a running job's total memory is sampled...
MEMORY_AFTER_SECONDS = 0.05  # ...once it has run this long (each process has RLIMIT_AS)
PYTHON_NAMES = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")
_libc = ctypes.CDLL(None, use_errno=True)
# bound once here, so that a forked job does not build them again
_unshare, _mount_call, _prctl, _capset = _libc.unshare, _libc.mount, _libc.prctl, _libc.capset


def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd, limit=1 << 40):
    (n,) = FRAME.unpack(read_exact(fd, FRAME.size))
    if n > limit:
        raise ValueError(f"frame of {n} bytes is too large")
    return read_exact(fd, n)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send(fd, header, payload=b""):
    head = json.dumps(header).encode()
    write_all(fd, FRAME.pack(len(head)) + head + FRAME.pack(len(payload)) + payload)


def _check(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _mount(source, target, fstype, flags, data=None):
    args = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    _check(_mount_call(args[0], args[1], args[2], flags, args[3]))


def _drop_capabilities():
    """Empty the bounding, ambient, effective, permitted and inheritable sets."""
    for cap in (CAP_SYS_ADMIN, CAP_SETPCAP):
        _check(_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
    _check(_prctl(PR_CAP_AMBIENT, 4, 0, 0, 0))  # PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this pid
    data = (ctypes.c_uint32 * 6)()
    _check(_capset(header, data))


def _enter_jail(tmp_bytes):
    """In the job: private mount and IPC namespaces, fresh /tmp, /dev/shm, /proc."""
    _check(_unshare(CLONE_NEWNS | CLONE_NEWIPC))
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    opts = f"size={tmp_bytes},mode=1777"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _set_limits(mode, limits):
    cpu = max(1, int(-(-limits["cpu"] // 1)))
    rlimits = [
        (resource.RLIMIT_AS, limits["memory"]),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 1024),
        (resource.RLIMIT_MSGQUEUE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
    ]
    if mode == "jail":  # counted per user namespace: bwrap's init, worker, supervisor, the job
        rlimits.append((resource.RLIMIT_NPROC, limits["processes"] + 3))
    for which, value in rlimits:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(which, (soft, hard))


def _write_files(workdir, files):
    for name, data in files:
        path = workdir + "/" + name
        if "/" in name:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_python(script, argv):
    """Run `python3 script args...` in this already started interpreter."""
    import builtins

    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(  # noqa: SIM115
        2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path = os.path.abspath(script)
    sys.argv, sys.path[0] = argv, os.path.dirname(path)
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__, main.__cached__ = path, builtins, None
    sys.modules["__main__"] = main
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write(f"python3: can't open file {path!r}: [Errno {e.errno}] {e.strerror}\n")
        return 2
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ else None
        traceback.print_exception(type(e), e, tb)
        status = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        status = 120
    return status


def _job(mode, job, files, workdir, fds, status_w):
    """The child: set up, then become the program. Never returns."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if mode == "jail":
            _enter_jail(job["limits"]["tmp"])
        _write_files(workdir, files)
        os.chdir(workdir)
        _set_limits(mode, job["limits"])
        if mode == "jail":
            _drop_capabilities()
        _prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        os.setsid()
        env = dict(job["env"], HOME=workdir, TMPDIR=workdir) if mode == "plain" else job["env"]
        for key, value in env.items():
            os.environ[key] = value
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
    except BaseException:
        write_all(status_w, traceback.format_exc().encode())
        os._exit(1)
    os.closerange(3, 1 << 16)  # also closes status_w: set-up succeeded
    argv = job["argv"]
    if os.path.basename(argv[0]) in PYTHON_NAMES and len(argv) > 1 and argv[1][:1] != "-":
        os._exit(_run_python(argv[1], argv[1:]))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, f"opsd sandbox: cannot execute {argv[0]!r}: {e}\n".encode())
    os._exit(127)


def _job_memory(skip):
    """Resident bytes of every process in this jail or container but ours."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in skip:
            try:
                with open(f"/proc/{name}/statm") as f:
                    total += int(f.read().split()[1]) * resource.getpagesize()
            except (OSError, IndexError, ValueError):
                pass
    return total


def _oom_kills():
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key + " "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
    return 0


def _kill(mode, pid):
    try:
        if mode == "jail":  # the job is pid 1 of its namespace: everything in it dies
            os.kill(pid, signal.SIGKILL)
        elif mode == "container":  # we are pid 1, which kill(-1) spares
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sweep():
    """Container mode: kill and reap every process but ourselves (pid 1)."""
    for _ in range(1000):
        _kill("container", 0)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]:
            return
        time.sleep(0.001)
    raise RuntimeError("processes survive SIGKILL")


def _supervise(mode, pid, limits, out_r, err_r, started):
    """Collect output; enforce wall time, output size and total memory; reap."""
    cap, deadline = limits["output"], started + limits["wall"]
    data, totals = {out_r: bytearray(), err_r: bytearray()}, {out_r: 0, err_r: 0}
    skip = {1, os.getpid(), os.getppid()}
    poller = select.poll()
    for fd in data:
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = None
    pending, killed, peak, result, grace = set(data), None, 0, None, 0.0
    while pending or result is None:
        now = time.monotonic()
        if result is None:
            wait = TICK_SECONDS if killed else max(0.0, min(TICK_SECONDS, deadline - now))
        else:
            wait = max(0.0, grace - now)
        for fd, _ in poller.poll(wait * 1000):
            if fd == pidfd:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                poller.unregister(fd)
                pending.discard(fd)
                continue
            totals[fd] += len(chunk)
            data[fd] += chunk[: max(0, cap - len(data[fd]))]
            if totals[fd] > cap and killed is None:
                killed = "output"
                _kill(mode, pid)
        now = time.monotonic()
        if result is not None:
            if now >= grace:
                break  # plain mode: an escaped child still holds a pipe
            continue
        if killed is None and now >= deadline:
            killed = "wall"
            _kill(mode, pid)
        if killed is None and mode != "plain" and now - started > MEMORY_AFTER_SECONDS:
            peak = max(peak, _job_memory(skip))
            if peak > limits["memory"]:
                killed = "memory"
                _kill(mode, pid)
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            continue
        result = os.wait4(pid, 0)
        ended, grace = time.monotonic(), time.monotonic() + 1.0
        if pidfd is not None:
            poller.unregister(pidfd)
            os.close(pidfd)
        if mode == "container":
            _sweep()
        elif mode == "plain":
            _kill(mode, pid)
    for fd in data:
        os.close(fd)
    _, status, usage = result
    return {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "wall": ended - started,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_memory": max(peak, usage.ru_maxrss * 1024),
        "killed": killed,
        "stdout_total": totals[out_r],
        "stderr_total": totals[err_r],
    }, bytes(data[out_r]) + bytes(data[err_r])


def run_job(mode, job, payload, workdir):
    """Run one job to its end; returns the response header and payload."""
    files, offset, payload = [], 0, memoryview(payload)
    for name, size in job["files"]:
        files.append((name, payload[offset : offset + size]))
        offset += size
    stdin_fd = os.memfd_create("stdin")
    write_all(stdin_fd, payload[offset : offset + job["stdin"]])
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    (out_r, out_w), (err_r, err_w), (status_r, status_w) = os.pipe(), os.pipe(), os.pipe()
    oom_before = _oom_kills() if mode == "container" else 0
    started = time.monotonic()
    gc.freeze()  # the job leaves our objects alone: fewer copy-on-write faults
    pid = os.fork()
    if pid == 0:
        _job(mode, job, files, workdir, (stdin_fd, out_w, err_w), status_w)
    for fd in (stdin_fd, out_w, err_w, status_w):
        os.close(fd)
    failure = b"".join(iter(lambda: os.read(status_r, 1 << 16), b""))
    os.close(status_r)
    if failure:
        os.close(out_r)
        os.close(err_r)
        _kill(mode, pid)
        os.waitpid(pid, 0)
        return {"error": "job set-up failed: " + failure.decode(errors="replace")}, b""
    header, output = _supervise(mode, pid, job["limits"], out_r, err_r, started)
    header["oom"] = mode == "container" and _oom_kills() > oom_before
    header["stdout_len"] = min(header["stdout_total"], job["limits"]["output"])
    return header, output


def _clean_dir(path):
    """Remove everything under `path` (a directory this user owns), never following links."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            _clean_dir(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _remove_ipc():
    """Container mode: delete the System V IPC objects a job left behind."""
    for kind, remove in (
        ("shm", lambda i: _libc.shmctl(i, 0, None)),
        ("msg", lambda i: _libc.msgctl(i, 0, None)),
        ("sem", lambda i: _libc.semctl(i, 0, 0)),
    ):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:]]
        except (OSError, IndexError, ValueError):
            continue
        for ipc_id in ids:
            _check(remove(ipc_id))


def _after_job(mode, workdir):
    if mode == "container":
        for path in ("/tmp", "/dev/shm", "/dev/mqueue"):
            _clean_dir(path)
        _remove_ipc()
    elif mode == "plain":
        _clean_dir(workdir)
        os.rmdir(workdir)


def serve(mode):
    """Answer jobs from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores unhandled signals
    _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace, no /proc/PID/fd by the job
    base = "/tmp"
    if mode == "plain":
        base = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"opsd-plain-{os.getpid()}")
        os.mkdir(base, 0o700)
    if mode == "container":
        if os.getpid() != 1:
            sys.exit("container mode needs to be the container's pid 1")
        _after_job(mode, base)
    send(1, {"ready": True, "mode": mode, "python": sys.version.split()[0]})
    jobs = 0
    while True:
        try:
            job = json.loads(read_frame(0, MAX_HEADER_BYTES))
            payload = read_frame(0)
        except EOFError:
            break
        jobs += 1
        workdir = base if mode != "plain" else os.path.join(base, str(jobs))
        if mode == "plain":
            os.mkdir(workdir, 0o700)
        if mode != "jail":
            try:
                header, output = run_job(mode, job, payload, workdir)
            except Exception:
                header, output = {"error": traceback.format_exc()}, b""
            send(1, header, output)
            _after_job(mode, workdir)
            continue
        gc.freeze()
        supervisor = os.fork()
        if supervisor == 0:  # enters a new pid namespace: the job becomes its pid 1
            try:
                _check(_unshare(CLONE_NEWPID))
                header, output = run_job(mode, job, payload, workdir)
            except Exception:
                header, output = {"error": traceback.format_exc()}, b""
            send(1, header, output)
            os._exit(0)
        _, status = os.waitpid(supervisor, 0)
        if status != 0:
            sys.exit(f"the supervisor failed (status {status})")
    if mode == "plain":
        _clean_dir(base)
        os.rmdir(base)


if __name__ == "__main__":
    serve(sys.argv[1])
