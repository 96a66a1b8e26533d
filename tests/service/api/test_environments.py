"""/v1/environments: kinds and registered instances, registration rules, `try` and `probe`."""

from __future__ import annotations

import json

import pytest

from envs.registry import make_env
from sandbox import SandboxSettings
from service.environments import service as env_service
from service.settings import Settings

from .helpers import error_of

NEW_ENV = {"name": "arith-small", "kind": "arithmetic", "config": {"high": 29}}


def test_listing_shows_every_available_kind_with_its_schema(client):
    response = client.get("/v1/environments")
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()["items"]}
    arithmetic = items["arithmetic"]
    assert arithmetic["kind"] == "arithmetic"
    assert arithmetic["registered"] is False
    assert arithmetic["config"] == {}
    assert arithmetic["description"].startswith("`a+b=`")
    assert "high" in arithmetic["config_schema"]["properties"]
    assert items["code"]["description"] == "Python problems judged by tests in the sandbox."


def test_registering_validates_and_stores_the_full_config(client):
    response = client.post("/v1/environments", json=NEW_ENV)
    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["kind"], body["registered"]) == ("arith-small", "arithmetic", True)
    assert body["config"]["high"] == 29
    assert body["config"]["low"] == 10  # defaults are stored too
    assert body["created_at"] is not None

    assert client.get("/v1/environments/arith-small").json() == body
    names = {item["name"]: item for item in client.get("/v1/environments").json()["items"]}
    assert names["arith-small"]["registered"] is True
    assert names["arithmetic"]["registered"] is False


def test_a_kind_is_found_by_name_and_an_unknown_name_is_404(client):
    assert client.get("/v1/environments/code").json()["kind"] == "code"
    response = client.get("/v1/environments/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_registering_a_taken_name_is_409(client):
    assert client.post("/v1/environments", json=NEW_ENV).status_code == 201
    response = client.post("/v1/environments", json=NEW_ENV)
    assert response.status_code == 409
    assert error_of(response)["code"] == "already_exists"


def test_a_name_equal_to_another_kind_is_409_and_to_its_own_kind_is_allowed(client):
    response = client.post("/v1/environments", json={"name": "code", "kind": "arithmetic"})
    assert response.status_code == 409
    response = client.post("/v1/environments", json={"name": "arithmetic", "kind": "arithmetic"})
    assert response.status_code == 201
    items = [i for i in client.get("/v1/environments").json()["items"] if i["name"] == "arithmetic"]
    assert [i["registered"] for i in items] == [True]


def test_an_invalid_config_is_422_with_the_pydantic_errors(client):
    body = {**NEW_ENV, "config": {"high": "lots", "colour": "red"}}
    response = client.post("/v1/environments", json=body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_environment_config"
    assert {tuple(d["loc"]) for d in error["details"]} == {("high",), ("colour",)}
    assert client.get("/v1/environments/arith-small").status_code == 404


def test_a_config_its_own_validator_rejects_is_422(client):
    body = {**NEW_ENV, "config": {"low": 40, "high": 20}}
    response = client.post("/v1/environments", json=body)
    assert response.status_code == 422
    assert "high must be >= low" in error_of(response)["details"][0]["msg"]


def test_an_unknown_kind_is_422(client):
    response = client.post("/v1/environments", json={"name": "x", "kind": "chess"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "unknown_environment"


@pytest.mark.parametrize("name", ["Upper", "-dash-first", "a" * 65, "sp ace", ""])
def test_a_malformed_name_is_422(client, name):
    response = client.post("/v1/environments", json={**NEW_ENV, "name": name})
    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["body", "name"]


# `try` samples with the real tiny model; once, on the embedded stack.


@pytest.fixture
def sqlite_client(sqlite_settings, make_client):
    return make_client(sqlite_settings)


def test_try_samples_and_scores_with_the_tiny_model(sqlite_client):
    assert sqlite_client.post("/v1/environments", json=NEW_ENV).status_code == 201
    body = {"model": "tiny", "tasks": 3, "samples_per_prompt": 2, "max_new_tokens": 8}
    response = sqlite_client.post("/v1/environments/arith-small/try", json=body)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3 * 2
    assert [i["task_id"] for i in items[::2]] == [i["task_id"] for i in items[1::2]]
    for item in items:
        assert item["prompt"].endswith("=")
        assert item["verdict"] in {"ok", "wrong_answer", "format_error"}
        assert item["reward"] == (1.0 if item["verdict"] == "ok" else 0.0)
        assert (item["feedback"] is None) == (item["verdict"] == "ok")
    # the model is loaded once and kept for the next call
    assert "tiny" in sqlite_client.app.state.services.policies._loaded
    response = sqlite_client.post("/v1/environments/arithmetic/try", json={"split": "eval"})
    assert response.status_code == 200
    assert len(response.json()["items"]) == 2 * 2


def test_opsd_envs_try_and_the_try_endpoint_run_one_routine(sqlite_client, monkeypatch):
    """Both go through `try_environment` (a recording wrapper around the real one, which
    seeds torch's RNG first so that both sample alike) and answer the same responses."""
    import torch
    from typer.testing import CliRunner

    from service.cli import app

    tried = []

    def recording(*args, **kwargs):
        torch.manual_seed(5)
        tried.append(real(*args, **kwargs))
        return tried[-1]

    real = env_service.try_environment
    monkeypatch.setattr(env_service, "try_environment", recording)
    args = ["envs", "try", "arithmetic", "-n", "2", "--tasks", "2", "--max-new-tokens", "6"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    body = {"model": "tiny", "tasks": 2, "samples_per_prompt": 2, "max_new_tokens": 6}
    response = sqlite_client.post("/v1/environments/arithmetic/try", json=body)
    assert response.status_code == 200, response.text

    assert len(tried) == 2  # the command, then the endpoint
    assert [vars(t) for t in tried[0]] == [vars(t) for t in tried[1]]
    assert response.json()["items"] == [vars(t) for t in tried[1]]


def test_try_builds_a_code_environment_with_the_services_sandbox_settings(
    tmp_path, make_client, monkeypatch
):
    """Plumbing: the tiny model writes no code, so nothing reaches the sandbox; the test
    looks at the environment `try` built (a spy around the real make_env)."""
    built = []

    def spy(*args, **kwargs):
        built.append(make_env(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(env_service, "make_env", spy)
    sandbox = SandboxSettings(backend="process", image="unused:1")
    client = make_client(Settings(data_dir=tmp_path, device="cpu", sandbox=sandbox))
    body = {"model": "tiny", "tasks": 1, "samples_per_prompt": 1, "max_new_tokens": 8}
    response = client.post("/v1/environments/code/try", json=body)
    assert response.status_code == 200, response.text
    assert built[0].sandbox_settings.backend == "process"
    assert built[0].sandbox_settings.image == "unused:1"


def test_try_on_an_unknown_environment_is_404(sqlite_client):
    response = sqlite_client.post("/v1/environments/nope/try", json={})
    assert response.status_code == 404


def test_try_with_a_missing_model_directory_is_422(sqlite_client, tmp_path):
    body = {"model": str(tmp_path / "no-model")}
    response = sqlite_client.post("/v1/environments/arithmetic/try", json=body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert "is not available on this server" in error["message"]


def test_try_bounds_are_enforced(sqlite_client):
    response = sqlite_client.post("/v1/environments/arithmetic/try", json={"tasks": 17})
    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["body", "tasks"]


# `probe` measures the teacher-student gap with the real tiny model (trainer/probe.py).


def test_opsd_probe_and_the_probe_endpoint_measure_the_same_gap(sqlite_client):
    """One routine, the same seed: the command and the endpoint report the same numbers."""
    from typer.testing import CliRunner

    from service.cli import app

    assert sqlite_client.post("/v1/environments", json=NEW_ENV).status_code == 201
    body = {"model": "tiny", "groups": 2, "samples_per_prompt": 4, "max_new_tokens": 8}
    response = sqlite_client.post("/v1/environments/arith-small/probe", json=body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["env"], report["groups"], report["samples_per_prompt"]) == ("arithmetic", 2, 4)
    assert report["teacher_gap"] > 0 and 0 < report["teacher_signal_frac"] <= 1
    assert 0 <= report["reward_mean"] <= 1

    args = ["probe", "--env", "arithmetic", "--groups", "2", "-n", "4", "--json"]
    args += ["--set", "sampling.max_new_tokens=8", "--device", "cpu"]
    args += ["--set", f"env_config={json.dumps(NEW_ENV['config'])}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :]) == pytest.approx(report)


def test_probe_on_an_unknown_environment_is_404_and_a_missing_model_422(sqlite_client, tmp_path):
    assert sqlite_client.post("/v1/environments/nope/probe", json={}).status_code == 404
    body = {"model": str(tmp_path / "no-model")}
    response = sqlite_client.post("/v1/environments/arithmetic/probe", json=body)
    assert response.status_code == 422
    assert error_of(response)["code"] == "model_not_found"


def test_probe_bounds_are_enforced(sqlite_client):
    response = sqlite_client.post("/v1/environments/arithmetic/probe", json={"groups": 17})
    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["body", "groups"]
