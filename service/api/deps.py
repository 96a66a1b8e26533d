"""The app's long-lived objects in one typed container, and the FastAPI dependencies to get them.

The lifespan (service/app.py) builds one `Services` and puts it on `app.state.services`;
routes ask for what they need (`RepoDep`, `BusDep`, ...) instead of reaching for globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from service.bus import Bus
from service.environments.service import PolicyCache
from service.runs.cache import ReadCache, Versions
from service.runs.series import SeriesCache
from service.settings import Settings
from service.storage import Repository

if TYPE_CHECKING:
    from service.pipeline.orchestrator import Orchestrator
    from service.pipeline.process import PipelineProcess
    from service.pipeline.worker import TrainerWorker


@dataclass
class Services:
    """Everything a request may need; opened and closed by the app's lifespan."""

    settings: Settings
    engine: Engine
    repo: Repository
    bus: Bus
    versions: Versions  # the record's version per run, looked up at most so often
    orchestrator: Orchestrator | None = None  # None when the app was made without background
    worker: TrainerWorker | None = None  # the in-process trainer (embedded mode)
    pipeline: PipelineProcess | None = None  # both of the above, in a child process
    policies: PolicyCache = field(default_factory=PolicyCache)  # models loaded for `try`
    reads: ReadCache = field(default_factory=ReadCache)  # answers to run reads, per version
    series: SeriesCache = field(default_factory=SeriesCache)  # metric series read so far
    schema_head: str | None = None  # the Alembic head revision the code expects

    def wake_orchestrator(self) -> None:
        """Tell the orchestrator a run changed (created, stopped, resumed, cancelled)."""
        if self.orchestrator is not None:
            self.orchestrator.wake()
        if self.pipeline is not None:
            self.pipeline.wake()


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_repo(request: Request) -> Repository:
    return get_services(request).repo


def get_bus(request: Request) -> Bus:
    return get_services(request).bus


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RepoDep = Annotated[Repository, Depends(get_repo)]
BusDep = Annotated[Bus, Depends(get_bus)]
