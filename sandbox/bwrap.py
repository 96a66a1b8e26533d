"""The `bwrap` backend (local default): warm workers inside bubblewrap jails.

Each worker is one jail: new user, pid, network, IPC, UTS and cgroup namespaces, no
nested user namespaces, no capabilities, a seccomp deny-list (sandbox/seccomp.py),
a read-only root holding only /usr (and the usual links) and a few /etc files, a
fresh read-only /dev and /proc, size-capped tmpfs on /tmp and /dev/shm, a scrubbed
environment and, when the service runs as root, the unprivileged `run_as_uid`.
sandbox/warm.py runs as the jail's pid 1 and gives each job rlimits, kills all it
left behind and wipes /tmp, /dev/shm and IPC (see warm.py).
Install with `apt-get install -y bubblewrap`.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from sandbox.base import Limits, MiB, SandboxSettings
from sandbox.pool import CLEAN_ENV, WARM_SOURCE, WarmSandbox, Worker, default_python, spawn_process
from sandbox.seccomp import deny_list_filter

logger = logging.getLogger(__name__)

ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
SHM_BYTES = 16 * MiB


@functools.cache
def _supports_disable_userns(bwrap: str) -> bool:
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    return "--disable-userns" in help_text


def bwrap_argv(
    settings: SandboxSettings, limits: Limits, seccomp_fd: int | None = None
) -> list[str]:
    """The bubblewrap command line of one jailed warm worker."""
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
    return [*argv, default_python(settings.python), "-c", WARM_SOURCE, "jail"]


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

    def _fits(self, worker: Worker, limits: Limits) -> bool:
        return worker.limits is not None and worker.limits.tmp_bytes == limits.tmp_bytes

    async def _spawn(self, slot: int, limits: Limits) -> Worker:
        program, read_fd = deny_list_filter(), None
        if program is None:
            logger.warning("bwrap sandbox: no seccomp filter for this machine's architecture")
        else:  # bwrap reads the filter from a file descriptor
            read_fd, write_fd = os.pipe()
            try:
                os.write(write_fd, program)  # far below a pipe's capacity
            finally:
                os.close(write_fd)
        try:
            argv = bwrap_argv(self.settings, limits, seccomp_fd=read_fd)
            return await spawn_process(
                argv,
                self.label,
                CLEAN_ENV,
                limits,
                pass_fds=() if read_fd is None else (read_fd,),
                **run_as(self.settings.run_as_uid),
            )
        finally:
            if read_fd is not None:
                os.close(read_fd)
