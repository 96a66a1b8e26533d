"""Service settings, read from `OPSD_*` environment variables (docs/operating.md "Settings").

Nothing reads these globally: the app factory / worker entry point builds one `Settings`
and passes what each part needs. Nested settings use `__`: `OPSD_SANDBOX__BACKEND=docker`,
`OPSD_SANDBOX__LIMITS__WALL_SECONDS=2`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sandbox.base import SandboxSettings
from trainer.model_names import ModelAccess


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
        None,
        description="bearer token for every call (not probes, docs); required beyond localhost",
    )
    read_token: str | None = Field(
        None, description="bearer token for reads only (GET, HEAD); needs OPSD_API_TOKEN"
    )
    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8000, ge=1, le=65535, description="port the API listens on")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="names the API answers to in `Host` (and `Origin` on mutating calls), "
        "comma-separated, `*` for any; default: localhost, 127.0.0.1, ::1 and OPSD_HOST, "
        "or any when OPSD_HOST is a wildcard address (0.0.0.0, ::)",
    )
    max_body_bytes: int = Field(
        4 << 20, ge=1, description="largest request body accepted; larger ones get a 413"
    )
    embedded_worker: bool | None = Field(
        None,
        description="train inside the API process; default: yes without Redis, no with it",
    )
    device: str | None = Field(None, description="torch device for sampling and training")
    pipeline_process: bool = Field(
        True,
        description="sample (and, in embedded mode, train) in a child process of the API, so "
        "that request handling and the pipeline do not share one interpreter; False keeps "
        "them in the API process",
    )
    api_scheduling: Literal["idle", "nice"] = Field(
        "idle",
        description="how request handling yields the CPU to sampling and training once the "
        "pipeline runs in its own process: `idle`, the kernel's idle scheduling class "
        "(Linux SCHED_IDLE: requests run on the CPU the pipeline leaves, and a waking "
        "pipeline takes a core from them at once); `nice`, `api_niceness` lower priority",
    )
    api_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="how far the API process lowers its CPU priority (nice) with "
        "`api_scheduling` `nice`, or where the idle class is not available",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads torch may use in the pipeline process and the worker; default: "
        "all cores but one in the pipeline process (the API keeps one to answer requests), "
        "torch's own default in a worker of its own",
    )
    vllm_servers: list[str] = Field(
        [],
        description="vLLM server URLs runs may sample on (`sampling.server_url` of backend "
        "`server`), as JSON; none by default",
    )
    read_cache_entries: int = Field(
        512,
        ge=0,
        le=100_000,
        description="answers to run reads the API keeps until the run changes (0: none)",
    )
    read_freshness_s: float = Field(
        0.1,
        ge=0,
        le=60,
        description="how long the API trusts the version of a run it looked up before it "
        "looks again: a read may show the record this many seconds late (0: look up on "
        "every read); changes made through this API process and events it streams show at "
        "once",
    )
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
        "score responses: OPSD_SANDBOX__BACKEND, __IMAGE, __WORKERS, ...; its workers and "
        "limits are the most an environment gets (its config may ask for less), and an "
        "environment cannot choose another backend",
    )
    models_dir: Path | None = Field(
        None,
        description="a directory whose model subdirectories clients may name (`my-model` is "
        "<models_dir>/my-model); None: none",
    )
    allowed_models: list[str] = Field(
        default_factory=list,
        description="model names clients may use besides the aliases (tiny, tiny-tools) and "
        "models_dir: local directories or hub names, e.g. OPSD_ALLOWED_MODELS='[\"Qwen/Qwen3-0.6B\"]'",
    )
    hub_models: bool = Field(
        False, description="let clients name any hub model, which the server then downloads"
    )
    env_data_dir: Path | None = Field(
        None,
        description="where the data files environments read live (a code environment's "
        "`path` is relative to it); default: <data_dir>/env-data",
    )

    @property
    def trains_in_process(self) -> bool:
        return self.redis_url is None if self.embedded_worker is None else self.embedded_worker

    def run_dir(self, run_id: int) -> Path:
        """Checkpoints and plots of one run."""
        return self.data_dir / "runs" / str(run_id)

    @field_validator("read_token")
    @classmethod
    def read_token_needs_api_token(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and not info.data.get("api_token"):
            raise ValueError("needs OPSD_API_TOKEN as well (without it nothing is guarded)")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def split_hosts(cls, value: Any) -> Any:
        """`a.example, b.example` -> a list; empty -> the default."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()] or None
        return value

    def model_access(self) -> ModelAccess:
        """Which model names HTTP clients may use (the operator's CLI may use any)."""
        return ModelAccess.restricted(
            models_dir=self.models_dir, allowed=tuple(self.allowed_models), hub=self.hub_models
        )

    @field_validator("data_dir")
    @classmethod
    def absolute_data_dir(cls, data_dir: Path) -> Path:
        """Absolute, so that the paths the service records and reports say where they are."""
        return data_dir.expanduser().absolute()

    @model_validator(mode="after")
    def default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'opsd.db'}"
        if self.env_data_dir is None:
            self.env_data_dir = self.data_dir / "env-data"
        return self

    @model_validator(mode="after")
    def default_replica_id(self) -> Settings:
        if not self.replica_id:
            self.replica_id = f"{socket.gethostname()}:{self.port}"
        return self
