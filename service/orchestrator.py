"""The orchestrator (DESIGN.md "The walk of one step", steps 1-6 and 8).

Work in progress: the public surface below is what the app factory uses.
"""

from __future__ import annotations

from service.bus import Bus
from service.settings import Settings
from service.storage import Repository


class Orchestrator:
    def __init__(self, repo: Repository, bus: Bus, settings: Settings) -> None:
        self.repo, self.bus, self.settings = repo, bus, settings

    async def start(self) -> None:
        """Begin driving queued and running runs (background task)."""

    def wake(self) -> None:
        """Look for new work now (a run was created, stopped, resumed or cancelled)."""

    async def aclose(self) -> None:
        """Stop driving runs; runs stay `running` in the record and resume on next start."""
