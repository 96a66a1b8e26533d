"""The `process` backend: UNSAFE. Warm workers as plain local processes.

Jobs run as the service's own user with rlimits (address space, CPU time, open
files) and a private working directory, nothing more: they can read the service's
files, reach the network and signal any process the service can. Use it only where
bubblewrap and docker cannot run, and only by naming it; every record it returns
says `unsafe=True` and every log line says UNSAFE.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

from sandbox.base import ExecutionRecord, Limits, Program
from sandbox.pool import (
    CLEAN_ENV,
    WARM_SOURCE,
    SandboxWorker,
    WarmSandbox,
    default_python,
    spawn_process,
)

logger = logging.getLogger(__name__)


class ProcessSandbox(WarmSandbox):
    name = "process"
    unsafe = True

    async def _spawn(self, slot: int, limits: Limits) -> SandboxWorker:
        logger.warning(
            "%s: starting worker %d; jobs run as this user, unconfined", self.label, slot
        )
        base = tempfile.mkdtemp(prefix="opsd-process-")  # the jobs' working directories
        argv = [default_python(self.settings.python), "-c", WARM_SOURCE, "plain", base]
        worker = await spawn_process(argv, self.label, CLEAN_ENV)
        stop = worker.stop

        async def stop_and_clean() -> str | None:
            detail = await stop()
            shutil.rmtree(base, ignore_errors=True)
            return detail

        worker.stop = stop_and_clean
        return worker

    async def run(self, program: Program, limits: Limits | None = None) -> ExecutionRecord:
        logger.debug("%s: running %r", self.label, program.command)
        return await super().run(program, limits)
