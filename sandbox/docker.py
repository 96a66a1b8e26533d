"""The `docker` backend (production): warm containers through the docker SDK.

Each worker is one long-lived container of `settings.image` (build it with
`python -m sandbox.image build`): no network, read-only root with a size-capped
tmpfs on /tmp, all capabilities dropped, no-new-privileges, an unprivileged user,
and cgroup limits on memory (no swap), CPU and process count. sandbox/warm.py runs
as the container's pid 1, which its jobs can neither kill nor trace; after each
job it kills every other process and wipes /tmp, /dev/shm and System V IPC.
A container serves jobs whose memory, process and /tmp limits it was made for;
a job with other ones gets a fresh container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import docker
import docker.errors

from sandbox.base import Limits, MiB, SandboxSettings
from sandbox.pool import CLEAN_ENV, WARM_SOURCE, SandboxWorker, WarmSandbox

logger = logging.getLogger(__name__)

WORKER_MEMORY_BYTES = 64 * MiB  # the worker itself and /dev/shm, beyond the job's limits
SHM_BYTES = 16 * MiB


def _client(settings: SandboxSettings) -> docker.DockerClient:
    if settings.docker_url:
        return docker.DockerClient(base_url=settings.docker_url, timeout=30)
    return docker.from_env(timeout=30)


def unavailable(settings: SandboxSettings) -> str | None:
    """Why this backend cannot run here (no engine, no image), or None."""
    try:
        client = _client(settings)
        client.ping()
        client.images.get(settings.image)
    except docker.errors.ImageNotFound:
        return f"no image {settings.image!r}: build it with `python -m sandbox.image build`"
    except docker.errors.DockerException as e:
        return f"no docker engine reachable: {e}"
    return None


def container_options(settings: SandboxSettings, limits: Limits, slot: int) -> dict[str, Any]:
    """Everything `containers.create` gets for one warm worker."""
    memory = limits.memory_bytes + limits.tmp_bytes + WORKER_MEMORY_BYTES
    return {
        "image": settings.image,
        "command": [settings.image_python, "-c", WARM_SOURCE, "container"],
        "user": f"{settings.run_as_uid}:{settings.run_as_uid}",
        "environment": CLEAN_ENV,
        "working_dir": "/tmp",
        "hostname": "sandbox",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},
        "shm_size": SHM_BYTES,
        "ipc_mode": "private",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": limits.processes + 1,  # the job's processes and the worker
        "nano_cpus": int(settings.docker_cpus * 1e9),
        "ulimits": [docker.types.Ulimit(name="core", soft=0, hard=0)],
        "stdin_open": True,  # and StdinOnce: when the service goes, so does the worker
        "auto_remove": True,
        "labels": {"opsd.sandbox": "worker", "opsd.sandbox.slot": str(slot)},
    }


def _cgroup(limits: Limits) -> tuple[int, int, int]:
    """The limits a container is made with (the others are set per run)."""
    return limits.memory_bytes, limits.processes, limits.tmp_bytes


class Demux:
    """Reads docker's multiplexed attach stream: 8-byte headers (stream, size), data.
    Stdout feeds the protocol; stderr (the worker's own complaints) is logged."""

    def __init__(self, reader: asyncio.StreamReader, label: str) -> None:
        self.reader, self.label, self.buffer = reader, label, bytearray()
        self.errors: list[str] = []

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            head = await self.reader.readexactly(8)
            data = await self.reader.readexactly(int.from_bytes(head[4:], "big"))
            if head[0] == 1:
                self.buffer += data
            else:
                text = data.decode(errors="replace").rstrip()
                self.errors = [*self.errors[-20:], text]
                logger.warning("%s: worker: %s", self.label, text)
        chunk = bytes(self.buffer[:n])
        del self.buffer[:n]
        return chunk


class DockerSandbox(WarmSandbox):
    name = "docker"

    def __init__(self, settings: SandboxSettings) -> None:
        super().__init__(settings)
        self._docker: docker.DockerClient | None = None

    def _fits(self, worker: SandboxWorker, limits: Limits) -> bool:
        return worker.limits is not None and _cgroup(worker.limits) == _cgroup(limits)

    def _create(self, client: docker.DockerClient, slot: int, limits: Limits):
        container = client.containers.create(**container_options(self.settings, limits, slot))
        try:
            params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            sock = client.api.attach_socket(container.id, params=params)
            container.start()
        except BaseException:
            container.remove(force=True)
            raise
        return container, getattr(sock, "_sock", sock)

    async def _spawn(self, slot: int, limits: Limits) -> SandboxWorker:
        if self._docker is None:
            self._docker = _client(self.settings)
        try:
            container, sock = await asyncio.to_thread(self._create, self._docker, slot, limits)
        except docker.errors.DockerException as e:
            raise OSError(str(e)) from e
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        demux = Demux(reader, self.label)

        async def stop() -> str:
            writer.close()
            with contextlib.suppress(docker.errors.DockerException):
                await asyncio.to_thread(container.remove, force=True)
            return "\n".join(demux.errors)

        return SandboxWorker(demux, writer, stop, limits=limits)

    async def close(self) -> None:
        await super().close()
        if self._docker is not None:
            self._docker.close()
