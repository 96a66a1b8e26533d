"""Memory cgroups for the jobs of bwrap workers: a cap that nothing a job holds escapes.

`RLIMIT_AS` and sampling see a job's address spaces only; memory it holds elsewhere
(memfd files, detached System V shared memory, data queued in socket buffers, files
on a tmpfs) they miss. The kernel charges all of it to the job's memory cgroup.

Each worker gets a cgroup of its own for its jobs, beside the service's (cgroup v1:
below the service's group in the memory hierarchy; v2: below the service's group,
which must then hold no processes itself, so the service first moves into a leaf
`opsd-service`). The host opens the group's `cgroup.procs` and hands the descriptor
to the worker; each job writes "0" to it, moving itself in (the kernel checks the
rights of whoever opened the file). The worker itself stays outside: when the jobs
exceed the limit, the OOM killer can only choose among them, and `oom_kills` says so.

Needs root (or a delegated v2 subtree); elsewhere `MemoryCgroups.create` returns None
and the sandbox logs once that jobs' memory is bounded by rlimits and sampling only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "opsd-job-"


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:  # one write(2): cgroup files take a value per write
        f.write(value)


def find_memory_group(
    proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> tuple[int, Path] | None:
    """(1 or 2, the directory of this process's memory cgroup), or None without one."""
    groups: dict[str, str] = {}  # controller ("" for v2) -> path of this process's group
    for line in Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            groups[name] = path
    for line in Path(mountinfo).read_text().splitlines():
        fields = line.split()
        root, point = fields[3], fields[4]
        fstype, options = fields[fields.index("-") + 1], fields[-1].split(",")
        if fstype == "cgroup" and "memory" in options and "memory" in groups:
            version, own = 1, groups["memory"]
        elif fstype == "cgroup2" and "" in groups:
            version, own = 2, groups[""]
        else:
            continue
        if not (own + "/").startswith(root.rstrip("/") + "/"):
            continue  # the mount shows another part of the tree
        directory = Path(point, os.path.relpath(own, root))
        if version == 2 and "memory" not in _read(directory / "cgroup.controllers").split():
            continue
        return version, directory.resolve()
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _v2_parent(own: Path) -> Path:
    """A v2 group whose children may have memory limits: `own`, once it holds no process."""
    if "memory" in _read(own / "cgroup.subtree_control").split():
        return own
    try:
        _write(own / "cgroup.subtree_control", "+memory")
        return own
    except OSError as e:
        if e.errno != errno.EBUSY:  # EBUSY: processes live in it (this service)
            raise
    leaf = own / "opsd-service"
    leaf.mkdir(exist_ok=True)
    _write(leaf / "cgroup.procs", str(os.getpid()))
    _write(own / "cgroup.subtree_control", "+memory")
    return own


class JobCgroup:
    """One worker's memory cgroup for its jobs."""

    def __init__(self, version: int, path: Path, limit_bytes: int) -> None:
        self.version, self.path = version, path
        path.mkdir()
        try:
            if version == 1:
                _write(path / "memory.limit_in_bytes", str(limit_bytes))
                if (path / "memory.memsw.limit_in_bytes").exists():  # no swap either
                    _write(path / "memory.memsw.limit_in_bytes", str(limit_bytes))
            else:
                _write(path / "memory.max", str(limit_bytes))
                if (path / "memory.swap.max").exists():
                    _write(path / "memory.swap.max", "0")
        except BaseException:
            path.rmdir()
            raise

    def open_procs(self) -> int:
        """A descriptor on `cgroup.procs` for the worker: writing "0" moves the writer in."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def oom_kills(self) -> int:
        """How many of its processes the OOM killer has killed so far."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in _read(self.path / name).splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> bool:
        """Remove the group; False while processes (dying ones, say) are still in it."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            raise
        return True


class MemoryCgroups:
    """Makes the job cgroups of one sandbox; the first failure turns them off, logged."""

    def __init__(self, label: str) -> None:
        self.label, self._parent, self._version = label, None, 0
        self._disabled: str | None = None
        self._names = itertools.count()

    def _setup(self) -> None:
        found = find_memory_group()
        if found is None:
            raise OSError(errno.ENOENT, "no memory cgroup controller on this machine")
        self._version, own = found
        self._parent = own if self._version == 1 else _v2_parent(own)
        _remove_stale(self._parent)

    def create(self, limit_bytes: int) -> JobCgroup | None:
        """A fresh job cgroup capped at `limit_bytes`, or None where none can be made."""
        if self._disabled is not None:
            return None
        try:
            if self._parent is None:
                self._setup()
            assert self._parent is not None
            name = f"{PREFIX}{os.getpid()}-{next(self._names)}"
            return JobCgroup(self._version, self._parent / name, limit_bytes)
        except OSError as e:
            self._disabled = str(e)
            logger.warning(
                "%s: no memory cgroup for jobs (%s): their memory is bounded by rlimits and "
                "sampling only, which miss memfd files, shared memory and socket buffers",
                self.label,
                e,
            )
            return None


def _remove_stale(parent: Path) -> None:
    """Remove the empty job groups of services that are gone (a crash leaves them)."""
    for path in parent.glob(PREFIX + "*"):
        pid = path.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                path.rmdir()
