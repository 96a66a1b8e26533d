"""/v1/runs: creating runs from presets, reading them and what they produced, state changes."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from service.runs.series import steps_per_second

from ..records import set_status
from .helpers import error_of, make_run, record_step

RUN = {"environment": "arithmetic", "steps": 20, "config": {"prompts_per_step": 4}}


def test_creating_a_run_on_a_kind_registers_it_and_queues_the_run(client):
    response = client.post("/v1/runs", json=RUN)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["status"] == "queued"
    assert (run["environment"], run["model"], run["algorithm"]) == ("arithmetic", "tiny", "sdpo")
    assert (run["steps"], run["steps_done"], run["samples_seen"]) == (20, 0, 0)
    assert run["config"]["env"] == "arithmetic"
    assert run["config"]["env_config"]["high"] == 49
    assert run["config"]["prompts_per_step"] == 4
    assert run["eval"] == {"base": None, "latest": None, "latest_step": None}
    assert client.get(f"/v1/runs/{run['id']}").json() == run
    registered = client.get("/v1/environments/arithmetic").json()
    assert registered["registered"] is True


def test_a_run_on_a_registered_instance_uses_its_kind_and_config(client):
    client.post(
        "/v1/environments", json={"name": "small", "kind": "arithmetic", "config": {"high": 29}}
    )
    body = {"environment": "small", "algorithm": "grpo", "config": {"optim": {"lr": 0.001}}}
    run = client.post("/v1/runs", json=body).json()
    assert run["environment"] == "small"
    assert run["algorithm"] == "grpo"
    assert run["config"]["env"] == "arithmetic"
    assert run["config"]["env_config"]["high"] == 29
    assert run["config"]["loss"]["distill_weight"] == 0.0
    assert run["config"]["optim"]["lr"] == 0.001
    assert run["steps"] == 300  # the preset's default


def test_a_mixed_loss_is_reported_as_mixed(client):
    body = {"environment": "arithmetic", "config": {"loss": {"distill_weight": 0.5}}}
    assert client.post("/v1/runs", json=body).json()["algorithm"] == "mixed"


def test_an_invalid_run_config_is_422_with_pydantic_details(client):
    body = {"environment": "arithmetic", "config": {"loss": {"distill": {"alpha": 2}}, "nope": 1}}
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_run_config"
    assert {tuple(d["loc"]) for d in error["details"]} == {("loss", "distill", "alpha"), ("nope",)}
    assert client.get("/v1/runs").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"environment": "chess"}, "unknown_environment"),
        ({"environment": "arithmetic", "model": "/no/such/model"}, "model_not_found"),
        ({"environment": "arithmetic", "model": "./a\x00b"}, "model_not_found"),
        (
            {"environment": "arithmetic", "config": {"env_config": {"high": 5}}},
            "invalid_run_config",
        ),
        ({"environment": "arithmetic", "algorithm": "ppo"}, "validation_error"),
        ({"environment": "arithmetic", "steps": 0}, "validation_error"),
    ],
)
def test_bad_run_requests_are_422_and_leave_nothing_behind(client, body, code):
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == code
    assert client.get("/v1/runs").json()["items"] == []
    assert client.get("/v1/environments/arithmetic").json()["registered"] is False


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"samples_per_prompt": 10**9}, "samples_per_prompt"),
        ({"prompts_per_step": 10**9}, "prompts_per_step"),
        ({"sampling": {"max_new_tokens": 10**9}}, "sampling.max_new_tokens"),
        ({"eval": {"size": 10**12}}, "eval.size"),
        ({"eval": {"max_new_tokens": 10**9}}, "eval.max_new_tokens"),
        ({"steps": 10**12}, "steps"),  # the top-level `steps` is bounded; so is this one
        ({"seed": 10**30}, "seed"),
        ({"context": {"max_reprompt_tokens": 10**9}}, "context.max_reprompt_tokens"),
        ({"context": {"reprompt_template": "{prompt}{feedback}" + "x" * 5000}}, "context"),
        ({"optim": {"grad_accumulation": 10**9}}, "optim.grad_accumulation"),
        ({"lora": {"r": 10**9}}, "lora.r"),
    ],
)
def test_every_run_config_field_is_bounded(client, config, field):
    response = client.post("/v1/runs", json={"environment": "arithmetic", "config": config})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_run_config"
    assert field in error["message"]
    assert client.get("/v1/runs").json()["items"] == []


def test_the_run_list_leaves_out_the_config_which_the_run_itself_shows(client):
    body = {
        "environment": "arithmetic",
        "config": {"context": {"feedback_template": "F {feedback}"}},
    }
    created = client.post("/v1/runs", json=body).json()
    assert created["config"]["context"]["feedback_template"] == "F {feedback}"
    [listed] = client.get("/v1/runs").json()["items"]
    assert "config" not in listed
    assert {k: v for k, v in created.items() if k != "config"} == listed
    assert client.get(f"/v1/runs/{created['id']}").json()["config"] == created["config"]


def test_a_config_with_an_infinite_number_is_422(client):
    # Python's JSON parser reads the non-standard `Infinity`; JSON (and Postgres) cannot hold it.
    body = '{"environment": "arithmetic", "config": {"optim": {"lr": Infinity}}}'
    response = client.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "infinite" in error_of(response)["message"]


def test_runs_are_listed_newest_first_a_page_at_a_time(client, repo):
    ids = [make_run(repo).id for _ in range(5)]
    set_status(repo, ids[1], "running")
    first = client.get("/v1/runs", params={"limit": 2}).json()
    assert [r["id"] for r in first["items"]] == ids[::-1][:2]
    second = client.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/v1/runs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [r["id"] for r in second["items"] + third["items"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    running = client.get("/v1/runs", params={"status": "running"}).json()["items"]
    assert [r["id"] for r in running] == [ids[1]]
    assert client.get("/v1/runs", params={"status": "sleeping"}).status_code == 422
    assert client.get("/v1/runs", params={"limit": 501}).status_code == 422


def test_a_run_reports_progress_evaluations_and_samples_seen(client, repo):
    run = make_run(repo)
    record_step(repo, run.id, 1, ["ok", "wrong_answer"])
    record_step(repo, run.id, 2, ["ok", "ok"])
    repo.add_evaluation(run.id, 0, 0.25)
    repo.add_evaluation(run.id, 2, 0.5)
    body = client.get(f"/v1/runs/{run.id}").json()
    assert (body["steps_done"], body["policy_version"]) == (2, 2)
    assert body["samples_seen"] == 2 * 2 * 3  # steps x prompts_per_step x samples_per_prompt
    assert body["eval"] == {"base": 0.25, "latest": 0.5, "latest_step": 2}
    listed = client.get("/v1/runs").json()["items"][0]
    assert listed["eval"] == body["eval"]


def test_an_unknown_run_is_404_on_every_read(client):
    for path in ["", "/metrics", "/trajectories", "/trajectories/1", "/checkpoints", "/feedback"]:
        response = client.get(f"/v1/runs/99{path}")
        assert response.status_code == 404, path
        assert error_of(response)["code"] == "not_found"


def test_stop_resume_cancel_follow_the_allowed_transitions(client, repo):
    run = make_run(repo)
    assert client.post(f"/v1/runs/{run.id}/stop").json()["status"] == "stopped"
    assert client.post(f"/v1/runs/{run.id}/stop").status_code == 409
    assert client.post(f"/v1/runs/{run.id}/resume").json()["status"] == "queued"
    response = client.post(f"/v1/runs/{run.id}/resume")
    assert response.status_code == 409
    assert error_of(response)["code"] == "conflict"
    assert client.post(f"/v1/runs/{run.id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/runs/{run.id}/resume").status_code == 409
    assert client.post("/v1/runs/99/cancel").status_code == 404


def test_a_failed_run_can_be_resumed_and_its_error_is_cleared(client, repo):
    run = make_run(repo)
    set_status(repo, run.id, "failed", error="worker died")
    assert client.get(f"/v1/runs/{run.id}").json()["error"] == "worker died"
    resumed = client.post(f"/v1/runs/{run.id}/resume").json()
    assert (resumed["status"], resumed["error"]) == ("queued", None)


class WakeCounter:
    """Stands in for the orchestrator: this test is about the API calling `wake`."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def test_creating_and_controlling_runs_wakes_the_orchestrator(client):
    counter = WakeCounter()
    client.app.state.services.orchestrator = counter
    run = client.post("/v1/runs", json=RUN).json()
    client.post(f"/v1/runs/{run['id']}/stop")
    client.post(f"/v1/runs/{run['id']}/resume")
    client.post(f"/v1/runs/{run['id']}/resume")  # 409: no wake
    assert counter.wakes == 3


def test_metrics_are_series_of_step_value_pairs(client, repo):
    run = make_run(repo)
    record_step(repo, run.id, 1, ["ok", "wrong_answer"])
    record_step(repo, run.id, 2, ["ok", "ok"])
    repo.add_evaluation(run.id, 2, 0.75)
    series = client.get(f"/v1/runs/{run.id}/metrics").json()["series"]
    assert series["reward_mean"] == [[1, 0.5], [2, 1.0]]
    assert series["eval_accuracy"] == [[2, 0.75]]


def test_long_metric_series_are_thinned_to_the_points_asked_for(client, repo):
    run = make_run(repo)
    for step in range(1, 12):
        record_step(repo, run.id, step, ["ok"])
    series = client.get(f"/v1/runs/{run.id}/metrics", params={"points": 4}).json()["series"]
    assert [step for step, _ in series["reward_mean"]] == [1, 4, 8, 11]
    full = client.get(f"/v1/runs/{run.id}/metrics").json()["series"]
    assert [step for step, _ in full["reward_mean"]] == list(range(1, 12))
    assert client.get(f"/v1/runs/{run.id}/metrics", params={"points": 1}).status_code == 422


def test_trajectories_filter_and_page_and_one_shows_its_token_scores(client, repo):
    run = make_run(repo)
    other = make_run(repo)
    record_step(
        repo,
        run.id,
        1,
        ["ok", "wrong_answer", "ok"],
        log_ratios=[[0.1, -0.2], [0.3], [float("nan")]],
        tokens=[["1", "2"], ["3"], ["4"]],
    )
    record_step(repo, run.id, 2, ["wrong_answer", "ok"])
    record_step(repo, other.id, 1, ["ok"])

    page = client.get(f"/v1/runs/{run.id}/trajectories", params={"limit": 3}).json()
    assert [(t["step"], t["sample_index"]) for t in page["items"]] == [(1, 0), (1, 1), (1, 2)]
    rest = client.get(
        f"/v1/runs/{run.id}/trajectories", params={"limit": 3, "cursor": page["next_cursor"]}
    ).json()
    assert [(t["step"], t["sample_index"]) for t in rest["items"]] == [(2, 0), (2, 1)]
    assert rest["next_cursor"] is None
    wrong = client.get(
        f"/v1/runs/{run.id}/trajectories", params={"verdict": "wrong_answer", "step": 1}
    ).json()["items"]
    assert [(t["step"], t["verdict"]) for t in wrong] == [(1, "wrong_answer")]
    assert wrong[0]["feedback"] == "Incorrect. The answer is 3."

    first = page["items"][0]
    detail = client.get(f"/v1/runs/{run.id}/trajectories/{first['id']}").json()
    assert detail["token_scores"] == [
        {"token": "1", "log_ratio": 0.1},
        {"token": "2", "log_ratio": -0.2},
    ]
    assert {k: detail[k] for k in first} == first
    nan_scored = client.get(f"/v1/runs/{run.id}/trajectories/{page['items'][2]['id']}").json()
    assert nan_scored["token_scores"] == [{"token": "4", "log_ratio": None}]
    untrained = client.get(f"/v1/runs/{run.id}/trajectories/{rest['items'][0]['id']}").json()
    assert untrained["token_scores"] is None

    theirs = client.get(f"/v1/runs/{other.id}/trajectories").json()["items"][0]
    response = client.get(f"/v1/runs/{run.id}/trajectories/{theirs['id']}")
    assert response.status_code == 404


def test_token_scores_without_token_texts_have_null_tokens(client, repo):
    run = make_run(repo)
    record_step(repo, run.id, 1, ["ok"], log_ratios=[[0.5, 0.25]])
    [item] = client.get(f"/v1/runs/{run.id}/trajectories").json()["items"]
    detail = client.get(f"/v1/runs/{run.id}/trajectories/{item['id']}").json()
    assert detail["token_scores"] == [
        {"token": None, "log_ratio": 0.5},
        {"token": None, "log_ratio": 0.25},
    ]


def test_checkpoints_are_listed_by_step(client, repo):
    run = make_run(repo)
    repo.add_checkpoint(run.id, 5, "/data/runs/1/step-5")
    repo.add_checkpoint(run.id, 10, "/data/runs/1/step-10")
    items = client.get(f"/v1/runs/{run.id}/checkpoints").json()["items"]
    assert [(c["step"], c["path"]) for c in items] == [
        (5, "/data/runs/1/step-5"),
        (10, "/data/runs/1/step-10"),
    ]
    assert all(c["created_at"] for c in items)


def test_the_checkpoint_list_marks_the_best_by_held_out_accuracy_the_earliest_on_a_tie(
    client, repo
):
    run = make_run(repo)
    for step, accuracy in ((0, 0.3), (2, 0.7), (4, 0.7), (6, 0.2)):
        repo.add_evaluation(run.id, step, accuracy)
        if step:
            repo.add_checkpoint(run.id, step, f"/data/runs/1/step-{step}")
    items = client.get(f"/v1/runs/{run.id}/checkpoints").json()["items"]
    assert [(c["step"], c["eval_accuracy"], c["best"]) for c in items] == [
        (2, 0.7, True),
        (4, 0.7, False),
        (6, 0.2, False),
    ]


def test_no_checkpoint_is_marked_best_when_the_base_model_scored_best(client, repo):
    run = make_run(repo)
    repo.add_evaluation(run.id, 0, 0.5)
    repo.add_evaluation(run.id, 2, 0.1)
    repo.add_checkpoint(run.id, 2, "/data/runs/1/step-2")
    [item] = client.get(f"/v1/runs/{run.id}/checkpoints").json()["items"]
    assert (item["eval_accuracy"], item["best"]) == (0.1, False)


def test_a_checkpoint_downloads_as_a_tar_of_its_model_files_without_the_optimiser(
    client, repo, tmp_path
):
    run = make_run(repo)
    directory = tmp_path / "runs" / str(run.id) / "step-000002"
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": bytes(range(256)) * 700,  # not a multiple of tar's 512 bytes
        "adapter/adapter_config.json": b"{}",
        "state.json": b'{"step": 2}',
    }
    for name, content in {**files, "trainer_state.pt": b"optimiser"}.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)
    repo.add_checkpoint(run.id, 2, str(directory))

    response = client.get(f"/v1/runs/{run.id}/checkpoints/2/archive")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert f'filename="run-{run.id}-step-000002.tar"' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == {f"step-000002/{name}": content for name, content in files.items()}


def test_a_checkpoint_that_is_not_recorded_or_gone_from_disk_is_404(client, repo, tmp_path):
    run = make_run(repo)
    repo.add_checkpoint(run.id, 4, str(tmp_path / "pruned"))
    assert client.get(f"/v1/runs/{run.id}/checkpoints/3/archive").status_code == 404
    response = client.get(f"/v1/runs/{run.id}/checkpoints/4/archive")
    assert response.status_code == 404
    assert "no longer on the server" in error_of(response)["message"]
    assert client.get("/v1/runs/999999/checkpoints/4/archive").status_code == 404


def test_feedback_is_the_newest_items_of_the_live_stream(client, repo, run_async):
    run = make_run(repo)
    bus = client.app.state.services.bus
    items = [{"task_id": f"t{i}", "feedback": "no"} for i in range(5)]
    run_async(bus.publish_feedback, str(run.id), items)
    items = client.get(f"/v1/runs/{run.id}/feedback", params={"count": 2}).json()["items"]
    assert [i["task_id"] for i in items] == ["t3", "t4"]
    assert len(client.get(f"/v1/runs/{run.id}/feedback").json()["items"]) == 5


def test_reads_are_answered_from_what_was_kept_until_the_run_has_a_new_event(client, repo):
    """Every change to a run is followed by one of its events: until then a read is
    answered from the answer kept (nothing is queried but the version); after it, the
    change shows on every read."""
    reads = client.app.state.services.reads
    run = make_run(repo)
    record_step(repo, run.id, 1, ["ok", "wrong_answer"])
    paths = [f"/v1/runs/{run.id}", f"/v1/runs/{run.id}/metrics", "/v1/runs"]
    paths += [f"/v1/runs/{run.id}/trajectories", f"/v1/runs/{run.id}/checkpoints"]
    first = {path: client.get(path).json() for path in paths}
    hits = reads.hits
    assert {path: client.get(path).json() for path in paths} == first
    assert reads.hits == hits + len(paths)

    record_step(repo, run.id, 2, ["ok", "ok"])  # as a worker does, then its event
    repo.add_checkpoint(run.id, 2, "/ckpt/2")
    assert client.get(f"/v1/runs/{run.id}").json()["steps_done"] == 1  # kept: no event yet
    repo.add_event(run.id, "step", {"step": 2})
    now = {path: client.get(path).json() for path in paths}
    assert now[f"/v1/runs/{run.id}"]["steps_done"] == 2
    assert now[f"/v1/runs/{run.id}/metrics"]["series"]["reward_mean"] == [[1, 0.5], [2, 1.0]]
    assert now["/v1/runs"]["items"][0]["steps_done"] == 2
    assert len(now[f"/v1/runs/{run.id}/trajectories"]["items"]) == 4
    assert [c["step"] for c in now[f"/v1/runs/{run.id}/checkpoints"]["items"]] == [2]


def test_a_new_run_and_another_runs_event_change_the_run_list(client, repo):
    first = make_run(repo)
    assert [r["id"] for r in client.get("/v1/runs").json()["items"]] == [first.id]
    second = make_run(repo)  # a new run has no event yet: its id is part of the version
    assert [r["id"] for r in client.get("/v1/runs").json()["items"]] == [second.id, first.id]
    set_status(repo, first.id, "running")
    repo.add_event(first.id, "started", {})
    assert client.get("/v1/runs").json()["items"][1]["status"] == "running"
    assert client.get(f"/v1/runs/{second.id}").json()["status"] == "queued"


def test_a_failed_read_keeps_nothing(client):
    reads = client.app.state.services.reads
    assert client.get("/v1/runs/99").status_code == 404
    assert client.get("/v1/runs", params={"cursor": "not-a-cursor"}).status_code == 400
    assert len(reads) == 0


def test_a_vllm_run_on_a_server_without_vllm_is_422_and_leaves_nothing(client, monkeypatch):
    from service.runs import service

    monkeypatch.setattr(service, "vllm_installed", lambda: False)
    body = {**RUN, "config": {"sampling": {"backend": "vllm"}}}
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 422
    assert "vLLM is not installed" in error_of(response)["message"]
    assert client.get("/v1/runs").json()["items"] == []


def test_a_run_samples_only_on_a_vllm_server_the_operator_lists(make_client, tmp_path):
    from service.settings import Settings

    listed = "http://vllm.internal:8000"
    client = make_client(Settings(data_dir=tmp_path, device="cpu", vllm_servers=[listed]))
    for url in ["http://169.254.169.254/latest", "http://vllm.internal:8000/other"]:
        body = {**RUN, "config": {"sampling": {"backend": "server", "server_url": url}}}
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 422, url
        assert "OPSD_VLLM_SERVERS" in error_of(response)["message"]
    body = {**RUN, "config": {"sampling": {"backend": "server"}}}
    assert "server_url" in error_of(client.post("/v1/runs", json=body))["message"]
    assert client.get("/v1/runs").json()["items"] == []
    body = {**RUN, "config": {"sampling": {"backend": "server", "server_url": listed}}}
    assert client.post("/v1/runs", json=body).status_code == 201


def test_server_adapters_without_a_lora_run_on_a_server_is_422(make_client, tmp_path):
    from service.settings import Settings

    listed = "http://vllm.internal:8000"
    client = make_client(Settings(data_dir=tmp_path, device="cpu", vllm_servers=[listed]))
    on_server = {"backend": "server", "server_url": listed, "server_adapters": True}
    for config, expected in [
        ({"sampling": on_server}, "set `lora` too"),
        ({"sampling": {"server_adapters": True}, "lora": {"r": 4}}, "needs sampling.backend"),
    ]:
        response = client.post("/v1/runs", json={**RUN, "config": config})
        assert response.status_code == 422, config
        assert expected in error_of(response)["message"]
    assert client.get("/v1/runs").json()["items"] == []
    body = {**RUN, "config": {"sampling": on_server, "lora": {"r": 4}}}
    assert client.post("/v1/runs", json=body).status_code == 201


def test_trajectories_filter_by_reward_bounds_inclusively(client, repo):
    run = make_run(repo)
    record_step(repo, run.id, 1, ["ok", "wrong_answer", "ok"])  # rewards 1, 0, 1
    url = f"/v1/runs/{run.id}/trajectories"
    rewarded = client.get(url, params={"min_reward": 1}).json()["items"]
    assert [(t["sample_index"], t["reward"]) for t in rewarded] == [(0, 1.0), (2, 1.0)]
    unrewarded = client.get(url, params={"max_reward": 0.5}).json()["items"]
    assert [t["sample_index"] for t in unrewarded] == [1]
    assert client.get(url, params={"min_reward": 0.5, "max_reward": 0.9}).json()["items"] == []
    assert client.get(url, params={"min_reward": "nan"}).status_code == 422


def test_the_run_config_schema_and_the_presets_are_served(client):
    body = client.get("/v1/runs/config-schema").json()
    assert {"loss", "optim", "sampling", "prompts_per_step"} <= body["json_schema"][
        "properties"
    ].keys()
    assert set(body["presets"]) == {"sdpo", "grpo"}
    assert body["presets"]["grpo"]["loss"]["distill_weight"] == 0.0
    assert body["reserved"] == ["env", "env_config", "model"]
    # a config built from the schema's fields is what POST /v1/runs takes
    config = {"optim": {"lr": body["presets"]["sdpo"]["optim"]["lr"] / 2}}
    run = client.post("/v1/runs", json={"environment": "arithmetic", "config": config})
    assert run.status_code == 201, run.text


def test_metrics_include_the_steps_recorded_per_second_from_the_second_step(client, repo):
    run = make_run(repo)
    for step in (1, 2, 3):
        record_step(repo, run.id, step, ["ok"])
    series = client.get(f"/v1/runs/{run.id}/metrics").json()["series"]
    assert [step for step, _ in series["steps_per_s"]] == [2, 3]
    assert all(rate > 0 for _, rate in series["steps_per_s"])


def test_steps_per_second_averages_over_a_window_of_steps():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [(step, start + timedelta(seconds=2 * step)) for step in range(1, 14)]
    rates = steps_per_second(times)
    assert [step for step, _ in rates] == list(range(2, 14))
    assert all(rate == pytest.approx(0.5) for _, rate in rates)
    paused = [*times, (14, times[-1][1] + timedelta(seconds=182))]  # a 3-minute stop
    assert steps_per_second(paused)[-1] == (14, pytest.approx(10 / 200))
    assert steps_per_second(times[:1]) == []
