"""The trainer worker (DESIGN.md "The walk of one step", step 7).

Work in progress: the public surface below is what the app factory and `opsd worker` use.
"""

from __future__ import annotations

from service.bus import Bus
from service.settings import Settings
from service.storage import Repository


class Worker:
    def __init__(
        self, repo: Repository, bus: Bus, settings: Settings, worker_id: str | None = None
    ) -> None:
        self.repo, self.bus, self.settings = repo, bus, settings
        self.worker_id = worker_id or "worker"

    async def start(self) -> None:
        """Train in a background task until `aclose`."""

    async def run(self) -> None:
        """Train until cancelled (what `opsd worker` runs)."""

    async def aclose(self) -> None:
        """Finish the step in hand, then stop."""
