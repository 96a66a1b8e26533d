"""What clients may ask of the server is the operator's to set: the sandbox an environment
runs code in (a config may ask for less, never more or another backend), the files an
environment reads (inside the environment data directory), and the models a client may
name (aliases, a models directory, an allow-list, hub names only when enabled).

Real HTTP through the embedded app (SQLite), real model loading for `try`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sandbox import Limits, SandboxSettings
from service.settings import Settings
from trainer.model import TINY_MODEL_DIR

from .helpers import error_of

PROBLEM = {
    "id": "double",
    "prompt": "Write d(x) returning 2 * x.",
    "entry_point": "d",
    "tests": [{"call": [2], "expected": 4}],
}
TRY = {"model": "tiny", "tasks": 1, "samples_per_prompt": 1, "max_new_tokens": 4}


def write_problems(path: Path, count: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**PROBLEM, "id": f"p{i}", "split": "train"}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def env_data(tmp_path) -> Path:
    return tmp_path / "env-data"


@pytest.fixture
def client(tmp_path, env_data, make_client):
    sandbox = SandboxSettings(
        backend="bwrap", workers=2, limits=Limits(wall_seconds=5, memory_bytes=512 << 20)
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        device="cpu",
        sandbox=sandbox,
        env_data_dir=env_data,
        models_dir=tmp_path / "models",
    )
    return make_client(settings)


def register(client, config: dict, name: str = "mine", kind: str = "code"):
    return client.post("/v1/environments", json={"name": name, "kind": kind, "config": config})


# -- the sandbox ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"sandbox_backend": "process"}, "sandbox_backend"),
        ({"sandbox_backend": "docker"}, "sandbox_backend"),
        ({"workers": 3}, "workers"),
        ({"wall_seconds": 6}, "wall_seconds"),
        ({"memory_mb": 1024}, "memory_mb"),
        ({"memory_mb": 10**9}, "memory_mb"),
    ],
)
def test_an_environment_cannot_ask_for_another_sandbox_or_more_than_the_operator_allows(
    client, config, field
):
    for kind in ("code", "code_tools"):
        response = register(client, config, kind=kind)
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == "invalid_environment_config"
        assert field in error["message"]
    assert client.get("/v1/environments/mine").status_code == 404


def test_an_environment_may_ask_for_less_and_name_the_servers_own_backend(client):
    config = {"sandbox_backend": "bwrap", "workers": 1, "wall_seconds": 2, "memory_mb": 128}
    response = register(client, config)
    assert response.status_code == 201, response.text
    assert response.json()["config"]["workers"] == 1


# -- environment data files -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../data/opsd.db", "sub/../../outside.jsonl", "missing.jsonl", "sub", "link"],
)
def test_a_problem_file_must_be_a_file_inside_the_environment_data_directory(
    client, env_data, tmp_path, path
):
    write_problems(tmp_path / "outside.jsonl")
    (env_data / "sub").mkdir(parents=True)
    (env_data / "link").symlink_to(tmp_path / "outside.jsonl")  # leaves the directory
    response = register(client, {"source": "jsonl", "path": path})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_environment_config"
    assert str(tmp_path) not in error["message"]  # the server's paths stay unseen


def test_a_problem_file_inside_the_data_directory_is_read_by_try(client, env_data):
    write_problems(env_data / "sets" / "double.jsonl")
    response = register(client, {"source": "jsonl", "path": "sets/double.jsonl", "eval_size": 1})
    assert response.status_code == 201, response.text
    response = client.post("/v1/environments/mine/try", json=TRY)
    assert response.status_code == 200, response.text
    [item] = response.json()["items"]
    assert item["prompt"].startswith(PROBLEM["prompt"])


@pytest.mark.parametrize("breakage", ["deleted", "directory", "not utf-8", "not json"])
def test_try_on_an_environment_whose_problem_file_broke_is_422(client, env_data, breakage):
    path = env_data / "p.jsonl"
    write_problems(path)
    assert register(client, {"source": "jsonl", "path": "p.jsonl"}).status_code == 201
    path.unlink()
    if breakage == "directory":
        path.mkdir()
    elif breakage == "not utf-8":
        path.write_bytes(b"\xff\xfe\xfa")
    elif breakage == "not json":
        path.write_text("{nope\n")
    response = client.post("/v1/environments/mine/try", json=TRY)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_environment_data"
    assert "p.jsonl" in error["message"] and str(env_data) not in error["message"]


def test_a_stored_absolute_path_is_not_read(client):
    """A row written before the data directory existed (or by hand) is refused at use."""
    repo = client.app.state.services.repo
    repo.create_environment("old", "code", {"source": "jsonl", "path": "/etc/passwd"})
    response = client.post("/v1/environments/old/try", json=TRY)
    assert response.status_code == 422, response.text
    assert "environment data directory" in error_of(response)["message"]


# -- models -----------------------------------------------------------------------------


def refused(client, model: str) -> str:
    response = client.post("/v1/environments/arithmetic/try", json={**TRY, "model": model})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "model_not_found"
    return error["message"].replace(repr(model), "<name>")


def test_a_client_may_not_name_a_server_directory_or_a_hub_model(client, tmp_path):
    checkpoint = tmp_path / "data" / "runs" / "1" / "step-3"
    shutil.copytree(TINY_MODEL_DIR, checkpoint)
    names = [
        str(TINY_MODEL_DIR),  # exists and holds a model
        str(checkpoint),  # another run's checkpoint
        str(tmp_path / "nothing-here"),  # does not exist
        "../" * 12 + str(TINY_MODEL_DIR).lstrip("/"),
        "../models/../../",
        "Qwen/Qwen3-0.6B",  # a hub name: the server would download it
    ]
    messages = {refused(client, name) for name in names}
    assert len(messages) == 1, messages  # the same words whether or not a path exists
    [message] = messages
    assert "not available on this server" in message and str(tmp_path) not in message
    response = client.post("/v1/runs", json={"environment": "arithmetic", "model": names[0]})
    assert response.status_code == 422
    assert client.get("/v1/runs").json()["items"] == []


def test_a_model_of_the_models_directory_is_named_by_its_subdirectory(client, tmp_path):
    shutil.copytree(TINY_MODEL_DIR, tmp_path / "models" / "small")
    response = client.post("/v1/environments/arithmetic/try", json={**TRY, "model": "small"})
    assert response.status_code == 200, response.text
    response = client.post("/v1/runs", json={"environment": "arithmetic", "model": "small"})
    assert response.status_code == 201, response.text
    assert response.json()["model"] == "small"


def test_a_symlink_out_of_the_models_directory_is_refused(client, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "escape").symlink_to(TINY_MODEL_DIR)
    refused(client, "escape")


@pytest.mark.parametrize("named", ["in the models directory", "allowed by its path"])
def test_a_model_whose_config_names_an_unknown_architecture_is_422(tmp_path, make_client, named):
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    name = "broken" if named == "in the models directory" else str(broken)
    settings = Settings(
        data_dir=tmp_path / "data",
        device="cpu",
        models_dir=tmp_path / "models",
        allowed_models=[str(broken)],
    )
    message = refused(make_client(settings), name)
    assert "cannot load model" in message and str(tmp_path) not in message.replace(name, "")


def test_the_operator_allows_more_models_by_name(tmp_path, make_client):
    settings = Settings(
        data_dir=tmp_path / "data", device="cpu", allowed_models=[str(TINY_MODEL_DIR)]
    )
    client = make_client(settings)
    body = {**TRY, "model": str(TINY_MODEL_DIR)}
    response = client.post("/v1/environments/arithmetic/try", json=body)
    assert response.status_code == 200, response.text
    assert "not available" in refused(client, str(TINY_MODEL_DIR.parent / "tiny-tools"))
