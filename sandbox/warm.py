"""The warm worker: a pre-started interpreter that forks one child per job.

This file lives in two places. The host imports it for the frame format; inside a
jail (bwrap), a container (docker) or a plain subprocess (process) it runs as
`python3 -c <this source> MODE`, reads jobs on stdin and answers on stdout. It uses
the standard library only and must run on the sandbox's own Python (3.9+).

Modes "jail" and "container": the worker is pid 1 of the sandbox's pid namespace,
which its jobs can neither kill (the kernel drops their signals to it) nor trace
(it is not dumpable). It forks each job, enforces wall time, output size and total
memory, and when the job ends it kills every other process in the namespace,
reaps them and wipes /tmp, /dev/shm and System V IPC before the next job.
Each job asks the kernel's OOM killer to choose it first (oom_score_adj 1000) and,
given the descriptor of a memory cgroup's process list (bwrap), moves itself there.
A `python3 file.py` job runs in the forked interpreter itself (no start-up cost);
any other command is executed. Mode "plain": no isolation at all (unsafe).

Frames: 4-byte big-endian length, then bytes. A request is a JSON header frame
and a payload frame (the files, then stdin); a response is a JSON header frame
and a payload frame (stdout, then stderr). After each response, once the job's
leftovers are gone, the worker sends {"clean": true}, or {"clean": false} and exits.
"""

import ctypes
import gc
import json
import mmap
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types

FRAME = struct.Struct(">I")
MAX_HEADER_BYTES = 16 << 20
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
TICK_SECONDS = 0.02  # how often a running job's total memory is sampled...
MEMORY_AFTER_SECONDS = 0.05  # ...once it has run this long (each process has RLIMIT_AS)
JOB_NICENESS = 10  # below the worker, which must keep its clock even under a fork bomb
ENDED = (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED)  # not a stop: a traced job stops
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PYTHON_NAMES = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")
_libc = ctypes.CDLL(None, use_errno=True)


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


def send(fd, header, parts=()):
    head = json.dumps(header).encode()
    write_all(fd, FRAME.pack(len(head)) + head + FRAME.pack(sum(len(p) for p in parts)))
    for part in parts:
        write_all(fd, part)


def _read_into(fd, buffer, n):
    """Read `n` bytes into `buffer` (an mmap): no copy of a job's data stays behind
    in the worker's heap, where the next job (a fork of the worker) could read it."""
    with memoryview(buffer) as view:
        done = 0
        while done < n:
            got = os.readv(fd, [view[done:n]])
            if not got:
                raise EOFError
            done += got
    return n


# for the worker and hence every job; each job adds its own (see _set_limits)
SHARED_RLIMITS = (
    (resource.RLIMIT_CORE, 0),
    (resource.RLIMIT_NOFILE, 1024),
    (resource.RLIMIT_MSGQUEUE, 0),
    (resource.RLIMIT_MEMLOCK, 0),
)


def _set_limits(mode, limits):
    cpu = max(1, int(-(-limits["cpu"] // 1)))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    if mode == "jail":  # counted per user namespace, where the worker is the only other
        processes = limits["processes"] + 1
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


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


def _job(mode, job, files, workdir, fds, status_w, cgroup_fd):
    """The program's process: set up, then become the program. Never returns."""
    try:
        if mode == "plain":  # elsewhere the worker's death ends the whole namespace
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if cgroup_fd is not None:  # "0": this process; the host opened the file, so it may
            os.write(cgroup_fd, b"0")
        _write_files(workdir, files)
        os.chdir(workdir)
        _set_limits(mode, job["limits"])
        if mode != "plain":
            os.nice(JOB_NICENESS)
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # also gives it its /proc/self files
        try:  # when memory runs out, the job dies, not the worker
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
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


def _job_memory(precise=False):
    """Memory of every process in our pid namespace but ours: the sum of resident
    sizes (cheap, counts shared pages once per process) or, `precise`, of
    proportional set sizes (shared pages split among their users)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        try:
            if precise:
                with open(f"/proc/{name}/smaps_rollup") as f:
                    total += sum(int(ln.split()[1]) << 10 for ln in f if ln.startswith("Pss:"))
            else:
                with open(f"/proc/{name}/statm") as f:
                    total += int(f.read().split()[1]) * resource.getpagesize()
        except (OSError, IndexError, ValueError):
            pass
    return total


def _oom_kills():
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
    return 0


def _kill(mode, pid):
    try:
        if mode == "plain":
            os.killpg(pid, signal.SIGKILL)
        else:  # we are pid 1, which kill(-1) spares: everything else in the namespace dies
            os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sweep():
    """Kill and reap every process in our pid namespace but ourselves (pid 1)."""
    for _ in range(1000):
        _kill("jail", -1)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]:
            return
        time.sleep(0.001)
    sys.exit("processes survive SIGKILL: giving up this worker")  # its namespace dies with it


def _reap(pid):
    """wait4 for `pid`'s end, passing over stops (which a traced job reports)."""
    while True:
        result = os.wait4(pid, 0)
        if os.WIFEXITED(result[1]) or os.WIFSIGNALED(result[1]):
            return result


def _supervise(mode, pid, limits, out_r, err_r, started):
    """Collect output; enforce wall time, output size and total memory; reap."""
    cap, deadline = limits["output"], started + limits["wall"]
    # output goes into mmaps, unmapped after the answer (see _read_into)
    data = {out_r: mmap.mmap(-1, max(cap, 1)), err_r: mmap.mmap(-1, max(cap, 1))}
    kept, totals, beyond = {out_r: 0, err_r: 0}, {out_r: 0, err_r: 0}, mmap.mmap(-1, 1 << 16)
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
            room = cap - kept[fd]
            with memoryview(data[fd] if room > 0 else beyond) as view:
                got = os.readv(fd, [view[kept[fd] : cap] if room > 0 else view])
            if not got:
                poller.unregister(fd)
                pending.discard(fd)
                continue
            totals[fd] += got
            kept[fd] += min(got, max(room, 0))
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
            used = _job_memory()
            if used > limits["memory"]:
                used = _job_memory(precise=True)
            peak = max(peak, used)
            if used > limits["memory"]:
                killed = "memory"
                _kill(mode, pid)
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_code not in ENDED:
            continue  # still running, or stopped: a job that traces itself reports its stops
        result = _reap(pid)
        ended, grace = time.monotonic(), time.monotonic() + 1.0
        if pidfd is not None:
            poller.unregister(pidfd)
            os.close(pidfd)
        if mode == "plain":
            _kill(mode, pid)
        else:
            _sweep()  # also closes the pipes that the job's leftovers held
    for fd in data:
        os.close(fd)
    beyond.close()
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
        "stdout_len": kept[out_r],
    }, (memoryview(data[out_r])[: kept[out_r]], memoryview(data[err_r])[: kept[err_r]])


def run_job(mode, job, files, stdin, workdir, cgroup_fd=None):
    """Run one job to its end; returns the response header and payload."""
    stdin_fd = os.memfd_create("stdin")
    write_all(stdin_fd, stdin)
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    (out_r, out_w), (err_r, err_w), (status_r, status_w) = os.pipe(), os.pipe(), os.pipe()
    oom_before = _oom_kills() if mode == "container" else 0
    started = time.monotonic()
    gc.freeze()  # the job leaves our objects alone: fewer copy-on-write faults
    pid = os.fork()
    if pid == 0:
        _job(mode, job, files, workdir, (stdin_fd, out_w, err_w), status_w, cgroup_fd)
    for fd in (stdin_fd, out_w, err_w, status_w):
        os.close(fd)
    failure = b"".join(iter(lambda: os.read(status_r, 1 << 16), b""))
    os.close(status_r)
    if failure:
        os.close(out_r)
        os.close(err_r)
        _kill(mode, pid)
        _reap(pid)
        return {"error": "job set-up failed: " + failure.decode(errors="replace")}, ()
    header, output = _supervise(mode, pid, job["limits"], out_r, err_r, started)
    header["oom"] = mode == "container" and _oom_kills() > oom_before
    return header, output


def _unlink_all_but_dirs(fd):
    """Unlink every entry of directory `fd` but its subdirectories, whose names it returns."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:  # files, links, fifos, sockets, device nodes
                os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _clean_dir(path, mode=None):
    """Remove everything under `path` (this user's), however deep, never following links.

    No recursion and one open directory at a time: the walk goes down by name and
    back up by "..", which is safe since every other process is dead. Directories
    the job locked (mode 0) are opened up first; `path` itself gets `mode` back.
    """
    try:
        if mode is not None and stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)
        fd = os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        return
    above = []  # per level: (the directory's name, its parent's subdirectories still to go)
    try:
        todo = _unlink_all_but_dirs(fd)
        while todo or above:
            if todo:
                name = todo.pop()
                os.chmod(name, 0o700, dir_fd=fd)  # a directory (lstat said so), not a link
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                above.append((name, todo))
                os.close(fd)
                fd = child
                todo = _unlink_all_but_dirs(fd)
            else:
                name, todo = above.pop()
                parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_ipc():
    """Delete the System V IPC objects a job left behind."""
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
            if remove(ipc_id) != 0:
                raise OSError(ctypes.get_errno(), f"cannot remove System V {kind} {ipc_id}")


SHARED_DIRS = ("/tmp", "/dev/shm", "/dev/mqueue")  # jail and container: wiped after each job


def _after_job(mode, workdir, modes):
    """Leave nothing of the job behind; `modes` are the shared directories' own modes."""
    if mode == "plain":
        _clean_dir(workdir, 0o700)
        os.rmdir(workdir)
        return
    for path in SHARED_DIRS:
        _clean_dir(path, modes.get(path))
    _remove_ipc()


def serve(mode, base="/tmp", cgroup_fd=None):
    """Answer jobs from stdin until it closes; plain mode works in `base`. Jobs move
    themselves into the cgroup whose `cgroup.procs` is open as `cgroup_fd`, if any."""
    cgroup_fd = None if cgroup_fd is None else int(cgroup_fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores unhandled signals
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace, no /proc/1/fd, /proc/1/mem
    for which, value in SHARED_RLIMITS:
        resource.setrlimit(which, (value, value))
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in SHARED_DIRS if os.path.isdir(p)}
    if mode != "plain":
        if os.getpid() != 1:
            sys.exit(f"{mode} mode needs to be pid 1 of its pid namespace")
        _after_job(mode, base, modes)  # a clean start
    send(1, {"ready": True, "mode": mode, "python": sys.version.split()[0]})
    jobs = 0
    while True:
        try:
            job = json.loads(read_frame(0, MAX_HEADER_BYTES))
            size = FRAME.unpack(read_exact(0, FRAME.size))[0]
            buffer = mmap.mmap(-1, max(size, 1))
            payload = memoryview(buffer)[: _read_into(0, buffer, size)]
        except EOFError:
            break
        files, offset = [], 0
        for name, size in job["files"]:
            files.append((name, payload[offset : offset + size]))
            offset += size
        jobs += 1
        workdir = base if mode != "plain" else os.path.join(base, str(jobs))
        if mode == "plain":
            os.mkdir(workdir, 0o700)
        try:
            header, output = run_job(mode, job, files, payload[offset:], workdir, cgroup_fd)
        except Exception:
            header, output = {"error": traceback.format_exc()}, ()
        send(1, header, output)
        del files, payload, buffer, output  # unmapped: the job's data leaves the worker
        try:
            _after_job(mode, workdir, modes)
        except Exception:  # the host replaces a worker that cannot clean up
            send(1, {"clean": False, "error": traceback.format_exc(limit=-2)})
            sys.exit("cannot clean up after a job: giving up this worker")
        send(1, {"clean": True})


if __name__ == "__main__":
    serve(*sys.argv[1:])
