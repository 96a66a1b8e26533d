"""The `bwrap` backend (local default): warm workers inside bubblewrap jails.

Each worker is one jail: new user, pid, network, IPC, UTS and cgroup namespaces, no
nested user namespaces, no capabilities, a seccomp deny-list (sandbox/seccomp.py),
a read-only root holding only /usr (and the usual links) and a few /etc files, a
fresh read-only /dev and /proc, size-capped tmpfs on /tmp and /dev/shm, a scrubbed
environment and, when the service runs as root, the unprivileged `run_as_uid`.
sandbox/warm.py runs as the jail's pid 1 and gives each job rlimits, kills all it
left behind and wipes /tmp, /dev/shm and IPC (see warm.py). Where the host can make
memory cgroups (sandbox/cgroup.py), each worker's jobs run in one, capped at their
memory, /tmp and /dev/shm limits together: a cap on all they hold, wherever.
Install with `apt-get install -y bubblewrap`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import subprocess

from sandbox.base import Limits, MiB, SandboxSettings
from sandbox.cgroup import JobCgroup, MemoryCgroups
from sandbox.pool import (
    CLEAN_ENV,
    WARM_SOURCE,
    SandboxWorker,
    WarmSandbox,
    default_python,
    spawn_process,
)
from sandbox.seccomp import deny_list_filter

logger = logging.getLogger(__name__)

ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
SHM_BYTES = 16 * MiB


@functools.cache
def _supports_disable_userns(bwrap: str) -> bool:
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    return "--disable-userns" in help_text


def bwrap_argv(
    settings: SandboxSettings,
    limits: Limits,
    seccomp_fd: int | None = None,
    cgroup_fd: int | None = None,
) -> list[str]:
    """The bubblewrap command line of one jailed warm worker; its jobs join the memory
    cgroup whose `cgroup.procs` is open as `cgroup_fd`, if given."""
    bwrap = shutil.which(settings.bwrap_path) or settings.bwrap_path
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--as-pid-1", "--unshare-net"]
    argv += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session"]
    if _supports_disable_userns(bwrap):
        argv += ["--disable-userns"]
    else:
        logger.warning("bwrap sandbox: this bubblewrap cannot forbid nested user namespaces")
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for path in settings.ro_binds:
        argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
    argv += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    argv += [default_python(settings.python), "-c", WARM_SOURCE, "jail"]
    return argv if cgroup_fd is None else [*argv, "/tmp", str(cgroup_fd)]


def job_memory_bytes(limits: Limits) -> int:
    """The cap of a job's memory cgroup: what it may hold in memory, /tmp and /dev/shm."""
    return limits.memory_bytes + limits.tmp_bytes + SHM_BYTES


def run_as(uid: int) -> dict[str, object]:
    """Popen arguments that drop root to `uid` (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


def unavailable(settings: SandboxSettings) -> str | None:
    """Why this backend cannot run here, or None."""
    if not shutil.which(settings.bwrap_path):
        return "bubblewrap is not installed (apt-get install -y bubblewrap)"
    if not os.access(default_python(settings.python), os.X_OK):
        return f"no interpreter at {default_python(settings.python)}"
    return None


class BwrapSandbox(WarmSandbox):
    name = "bwrap"

    def __init__(self, settings: SandboxSettings) -> None:
        super().__init__(settings)
        self._cgroups = MemoryCgroups(self.label)

    def _fits(self, worker: SandboxWorker, limits: Limits) -> bool:
        made_for = worker.limits
        if made_for is None or made_for.tmp_bytes != limits.tmp_bytes:
            return False
        return worker.memory is None or made_for.memory_bytes == limits.memory_bytes

    async def _spawn(self, slot: int, limits: Limits) -> SandboxWorker:
        program, read_fd = deny_list_filter(), None
        if program is None:
            logger.warning("bwrap sandbox: no seccomp filter for this machine's architecture")
        else:  # bwrap reads the filter from a file descriptor
            read_fd, write_fd = os.pipe()
            try:
                os.write(write_fd, program)  # far below a pipe's capacity
            finally:
                os.close(write_fd)
        group = self._cgroups.create(job_memory_bytes(limits))
        procs_fd = None
        try:
            procs_fd = group.open_procs() if group else None
            argv = bwrap_argv(self.settings, limits, seccomp_fd=read_fd, cgroup_fd=procs_fd)
            worker = await spawn_process(
                argv,
                self.label,
                CLEAN_ENV,
                limits,
                pass_fds=tuple(fd for fd in (read_fd, procs_fd) if fd is not None),
                **run_as(self.settings.run_as_uid),
            )
        except BaseException:
            if group:
                group.remove()
            raise
        finally:
            for fd in (read_fd, procs_fd):
                if fd is not None:
                    os.close(fd)
        if group:
            _attach(worker, group)
        return worker


def _attach(worker: SandboxWorker, group: JobCgroup) -> None:
    """Count the OOM kills of `group` as the worker's; remove it when the worker stops."""
    stop = worker.stop

    async def stop_and_remove() -> str | None:
        detail = await stop()
        for _ in range(200):  # the kernel frees a killed job's group a moment later
            if group.remove():
                break
            await asyncio.sleep(0.01)
        else:
            logger.warning("bwrap sandbox: memory cgroup %s is still busy", group.path)
        return detail

    worker.memory, worker.stop = group, stop_and_remove
