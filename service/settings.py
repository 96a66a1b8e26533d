"""Service settings, read from `OPSD_*` environment variables (DESIGN.md "Two ways to run").

Nothing reads these globally: the app factory / worker entry point builds one `Settings`
and passes what each part needs. Nested settings use `__`: `OPSD_SANDBOX__BACKEND=docker`,
`OPSD_SANDBOX__LIMITS__WALL_SECONDS=2`.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.base import SandboxSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSD_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(
        Path("./opsd-data"), description="checkpoints, logs and the embedded SQLite database"
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; default: the SQLite file <data_dir>/opsd.db (embedded mode)",
    )
    redis_url: str | None = Field(None, description="Redis URL; None = the in-process bus")
    api_token: str | None = Field(
        None, description="bearer token for mutating calls; required beyond localhost"
    )
    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8000, ge=1, le=65535, description="port the API listens on")
    embedded_worker: bool | None = Field(
        None,
        description="train inside the API process; default: yes without Redis, no with it",
    )
    device: str | None = Field(None, description="torch device for sampling and training")
    bus_prefix: str = Field("opsd", description="key prefix of everything on the bus")
    checkpoint_keep: int = Field(
        2, ge=1, description="latest per-step checkpoints kept besides the evaluated ones"
    )
    claim_idle_s: float = Field(
        60.0,
        gt=0,
        description="a batch pending this long is taken from a silent worker; also how long "
        "a dead worker's training lock, and a dead API replica's lease on the runs it drives, "
        "outlive it (a live one renews them)",
    )
    replica_id: str = Field(
        "",
        description="this API replica's name in the runs' drive leases; unique among "
        "replicas and the same across restarts, so that a restarted replica takes back its "
        "runs at once; default: <hostname>:<port>",
    )
    heartbeat_s: float = Field(5.0, gt=0, description="worker heartbeat period")
    poll_s: float = Field(0.2, gt=0, description="how often loops look for new work")
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description="the sandbox in which environments that run code (the code environment) "
        "score responses: OPSD_SANDBOX__BACKEND, __IMAGE, __WORKERS, ...; an environment's "
        "config may name its own backend and sets its own workers and limits",
    )

    @property
    def trains_in_process(self) -> bool:
        return self.redis_url is None if self.embedded_worker is None else self.embedded_worker

    def run_dir(self, run_id: int) -> Path:
        """Checkpoints and plots of one run."""
        return self.data_dir / "runs" / str(run_id)

    @model_validator(mode="after")
    def default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'opsd.db'}"
        return self

    @model_validator(mode="after")
    def default_replica_id(self) -> Settings:
        if not self.replica_id:
            self.replica_id = f"{socket.gethostname()}:{self.port}"
        return self
