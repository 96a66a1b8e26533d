"""The `bwrap` backend (local default): warm workers inside bubblewrap jails.

Each worker is one jail: new user, pid, network, IPC, UTS and cgroup namespaces, no
nested user namespaces, a read-only root holding only /usr (and the usual links), a
few /etc files and a fresh /dev, /proc and /tmp, a scrubbed environment, and, when
the service runs as root, the unprivileged `run_as_uid`. Inside, sandbox/warm.py
gives every job its own pid, mount and IPC namespaces, drops all capabilities and
sets rlimits (see warm.py). Install with `apt-get install -y bubblewrap`.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from sandbox.base import Limits, SandboxSettings
from sandbox.pool import CLEAN_ENV, WARM_SOURCE, WarmSandbox, Worker, default_python, spawn_process

logger = logging.getLogger(__name__)

ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")


@functools.cache
def _supports_disable_userns(bwrap: str) -> bool:
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    return "--disable-userns" in help_text


def bwrap_argv(settings: SandboxSettings) -> list[str]:
    """The bubblewrap command line of one jailed warm worker."""
    bwrap = shutil.which(settings.bwrap_path) or settings.bwrap_path
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    argv += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session"]
    if _supports_disable_userns(bwrap):
        argv += ["--disable-userns"]
    else:
        logger.warning("bwrap sandbox: this bubblewrap cannot forbid nested user namespaces")
    # the worker needs these two to give each job its namespaces; jobs drop them
    argv += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"]
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
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
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

    async def _spawn(self, slot: int, limits: Limits) -> Worker:
        argv = bwrap_argv(self.settings)
        return await spawn_process(argv, self.label, CLEAN_ENV, **run_as(self.settings.run_as_uid))
