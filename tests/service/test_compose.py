"""compose.yaml, compose.gpu.yaml, Dockerfile: wired as in docs/architecture.md "Two deployments".

These read the files (no Docker engine needed): images and builds, start order,
health checks, the URLs between services, the shared volume, the GPU override, and
that every OPSD_* variable is a setting opsd reads and every command one it has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from sandbox.base import SandboxSettings
from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPSD_SERVICES = ("migrate", "api", "worker")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("compose.yaml")


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_the_five_services(services):
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}


def test_infrastructure_uses_official_images_and_opsd_services_build_the_repo(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in OPSD_SERVICES:
        assert services[name]["build"]["context"] == "."
        assert services[name]["image"] == "opsd:latest"  # one image, built once


def test_migrate_runs_once_after_postgres_is_healthy(services):
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_api_and_worker_start_after_migration_and_a_healthy_redis(services, name):
    assert services[name]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }


def test_postgres_redis_and_api_have_health_checks(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in api_check


def test_api_serves_publicly_with_a_required_token_and_no_embedded_worker(services):
    api = services["api"]
    assert api["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000:8000" in api["ports"]
    env = environment(api)
    assert re.fullmatch(r"\$\{OPSD_API_TOKEN:\?.+\}", env["OPSD_API_TOKEN"])
    assert env["OPSD_EMBEDDED_WORKER"] == "false"
    assert Settings(embedded_worker=env["OPSD_EMBEDDED_WORKER"]).trains_in_process is False


def test_worker_runs_the_worker_command(services):
    assert services["worker"]["command"] == ["worker"]


@pytest.mark.parametrize("name", OPSD_SERVICES)
def test_opsd_services_reach_postgres_and_redis_by_service_name(services, name):
    env = environment(services[name])
    database = env["OPSD_DATABASE_URL"]
    assert database.startswith("postgresql+psycopg://opsd:")
    assert database.endswith("@postgres:5432/opsd")
    assert env["OPSD_REDIS_URL"] == "redis://redis:6379/0"
    postgres_env = environment(services["postgres"])
    assert postgres_env["POSTGRES_USER"] == "opsd" and postgres_env["POSTGRES_DB"] == "opsd"
    password = postgres_env["POSTGRES_PASSWORD"]
    assert database == f"postgresql+psycopg://opsd:{password}@postgres:5432/opsd"


def test_api_and_worker_share_the_data_volume(compose, services):
    for name in ("api", "worker"):
        assert "opsd-data:/data" in services[name]["volumes"]
        assert environment(services[name])["OPSD_DATA_DIR"] == "/data"
    assert "opsd-data" in compose["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_only_the_api_which_scores_in_the_sandbox_may_create_namespaces(services):
    api = services["api"]
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(
        api["security_opt"]
    )
    for name in OPSD_SERVICES:
        assert "privileged" not in services[name] and "cap_add" not in services[name]
    assert "security_opt" not in services["worker"] and "security_opt" not in services["migrate"]
    assert api["init"] is True and services["worker"]["init"] is True


def test_redis_keeps_no_persistence(services):
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--save") + 1] == ""


def test_gpu_override_gives_the_gpus_to_the_worker_and_a_vllm_server_the_api_may_use():
    override = load("compose.gpu.yaml")
    assert set(override["services"]) == {"worker", "vllm", "api"}
    gpus = [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    worker, vllm = override["services"]["worker"], override["services"]["vllm"]
    for service in (worker, vllm):
        assert service["deploy"]["resources"]["reservations"]["devices"] == gpus
    assert "cu" in worker["build"]["args"]["TORCH_INDEX"]
    assert worker["image"] != "opsd:latest"  # the CUDA image does not overwrite the CPU one
    assert environment(worker)["OPSD_DEVICE"] == "cuda"
    # the worker trains in one process per GPU it reserves
    assert worker["command"] == ["worker", "--nproc-per-node", "gpu"]
    assert worker["ipc"] == "host"

    # the server: opsd's log-probs, weight reloads, and the weights volume at opsd's path
    command = vllm["command"]
    assert command[command.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert environment(vllm)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "opsd-data:/data" in vllm["volumes"]
    assert load("compose.yaml")["x-opsd-env"]["OPSD_DATA_DIR"] == "/data"
    name = command[command.index("--served-model-name") + 1]
    port = command[command.index("--port") + 1]
    servers = json.loads(environment(override["services"]["api"])["OPSD_VLLM_SERVERS"])
    assert servers == [f"http://vllm:{port}"] and name == "policy"


def test_every_opsd_variable_in_compose_is_a_setting():
    names: set[str] = set()
    for file in ("compose.yaml", "compose.gpu.yaml"):
        for service in load(file)["services"].values():
            names |= {k for k in environment(service) if k.startswith("OPSD_")}
    assert {"OPSD_DATABASE_URL", "OPSD_REDIS_URL", "OPSD_API_TOKEN"} <= names
    for name in names:
        assert_setting(name)


def assert_setting(name: str) -> None:
    """`name` is a field of Settings; OPSD_SANDBOX__LIMITS__WALL_SECONDS is the field
    Settings.sandbox.limits.wall_seconds, read with the "__" nested delimiter."""
    *outer, last = name.removeprefix("OPSD_").lower().split("__")
    if outer:
        assert Settings.model_config.get("env_nested_delimiter") == "__", name
    model: type[BaseModel] = Settings
    for part in outer:
        assert part in model.model_fields, name
        model = model.model_fields[part].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), name
    assert last in model.model_fields, name


def test_the_api_reads_its_sandbox_settings_from_opsd_sandbox_variables(services, monkeypatch):
    sandbox_env = {
        k: v for k, v in environment(services["api"]).items() if k.startswith("OPSD_SANDBOX__")
    }
    assert {"OPSD_SANDBOX__BACKEND", "OPSD_SANDBOX__WORKERS"} <= set(sandbox_env)
    for name, value in sandbox_env.items():
        monkeypatch.setenv(name, value)
    sandbox = Settings().sandbox
    assert isinstance(sandbox, SandboxSettings) and sandbox.backend == "bwrap"
    assert sandbox.workers == int(sandbox_env["OPSD_SANDBOX__WORKERS"])
    assert not any(k.startswith("OPSD_SANDBOX") for k in environment(services["worker"]))


def test_the_commented_docker_switch_names_real_settings(monkeypatch):
    switch = re.findall(
        r"^\s*#\s+(OPSD_SANDBOX__\w+): (\S+)$", (ROOT / "compose.yaml").read_text(), re.M
    )
    assert dict(switch).get("OPSD_SANDBOX__BACKEND") == "docker"
    for name, value in switch:
        assert_setting(name)
        monkeypatch.setenv(name, value)
    assert Settings().sandbox.backend == "docker"


def test_every_service_command_is_an_opsd_command(services):
    runner = CliRunner()
    for name in OPSD_SERVICES:
        command = services[name]["command"]
        words = [w for w in command if not w.startswith("-")][:2]
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, (name, result.output)
        for flag in (w for w in command if w.startswith("--")):
            assert flag in result.output, (name, flag)


def test_dockerfile_builds_a_non_root_opsd_image_with_bubblewrap():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "bubblewrap" in dockerfile
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["opsd"\]$', dockerfile, re.M)


def test_dockerignore_keeps_what_the_image_copies():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = re.findall(r"^COPY (.+) \./", (ROOT / "Dockerfile").read_text(), re.M)
    for source in (word for line in copied for word in line.split()):
        assert source not in ignored, source
