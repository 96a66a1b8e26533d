"""One run end to end through HTTP, as a user drives it: a real uvicorn server (in a thread)
serving `create_app(..., background=True)`, so the orchestrator and the trainer worker
run in its pipeline process, and the typed `service.client.Client` on the other end
(tests/service/live.py).

Embedded: a SQLite file and the in-process bus (the default, no setup). Distributed:
Postgres and Redis, with the API process training too (`embedded_worker=True`).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from service.client import Client
from service.settings import Settings
from service.storage.migrate import upgrade

from .conftest import REDIS_URL
from .live import live_server

STEPS, PROMPTS, SAMPLES, EVAL_EVERY = 6, 2, 4, 3
PER_STEP = PROMPTS * SAMPLES


@pytest.fixture(params=["embedded", "distributed"])
def api(request, tmp_path, postgres, redis_prefix) -> Iterator[Client]:
    """A Client talking to a live server; the server stops (its lifespan closes) afterwards."""
    if request.param == "embedded":
        backends = {}
    else:
        url = postgres.create()
        upgrade(url)  # Postgres is migrated by `opsd db upgrade`, never by the app
        backends = {
            "database_url": url,
            "redis_url": REDIS_URL,
            "bus_prefix": redis_prefix,
            "embedded_worker": True,
        }
    settings = Settings(
        data_dir=tmp_path / "data", device="cpu", poll_s=0.05, heartbeat_s=0.5, **backends
    )
    with live_server(settings) as client:
        yield client


def all_pages(api: Client, run_id: int, limit: int, **filters) -> list[dict]:
    items, cursor = [], None
    while True:
        page = api.list_trajectories(run_id, limit=limit, cursor=cursor, **filters)
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_a_run_registered_started_and_followed_over_http_reports_everything_it_did(api, tmp_path):
    env = api.register_environment("arith-small", "arithmetic", {"high": 29})
    assert (env["name"], env["kind"], env["registered"]) == ("arith-small", "arithmetic", True)
    probed = api.probe_environment("arith-small", groups=2, samples_per_prompt=SAMPLES)
    assert (probed["env"], probed["groups"], probed["samples_per_prompt"]) == (
        "arithmetic",
        2,
        SAMPLES,
    )
    assert probed["teacher_gap"] > 0 and 0 < probed["teacher_signal_frac"] <= 1
    run = api.create_run(
        "arith-small",
        model="tiny",
        algorithm="sdpo",
        steps=STEPS,
        config={
            "prompts_per_step": PROMPTS,
            "samples_per_prompt": SAMPLES,
            "eval": {"every": EVAL_EVERY, "size": 16},
        },
    )
    run_id = run["id"]
    assert run["status"] in ("queued", "running")

    # -- the live events (SSE), followed until the run ends -------------------------------
    events = list(api.events(run_id))
    kinds = [event.kind for event in events]
    assert kinds[0] == "started" and kinds[-1] == "completed", kinds
    assert kinds.count("batch") == kinds.count("step") == STEPS
    assert [e.payload["step"] for e in events if e.kind == "eval"] == [0, 3, 6]
    assert [e.payload["step"] for e in events if e.kind == "step"] == list(range(1, STEPS + 1))
    ids = [int(event.id) for event in events]
    assert ids == sorted(set(ids)) and all(event.run_id == run_id for event in events)
    replayed = list(api.events(run_id, after=ids[2]))  # what a reconnecting client gets
    assert [int(event.id) for event in replayed] == ids[3:]

    # -- the run --------------------------------------------------------------------------
    done = api.get_run(run_id)
    assert (done["status"], done["steps_done"], done["error"]) == ("completed", STEPS, None)
    assert (done["environment"], done["model"]) == ("arith-small", "tiny")
    assert done["algorithm"] == "sdpo"
    assert done["samples_seen"] == STEPS * PER_STEP
    assert done["eval"]["base"] is not None and done["eval"]["latest_step"] == STEPS
    assert 0.0 <= done["eval"]["latest"] <= 1.0

    # -- metrics --------------------------------------------------------------------------
    series = api.run_metrics(run_id)
    assert [step for step, _ in series["loss"]] == list(range(1, STEPS + 1))
    assert [step for step, _ in series["eval_accuracy"]] == [0, 3, 6]
    assert series["eval_accuracy"][0][1] == done["eval"]["base"]
    assert {"reward_mean", "samples_seen", "grad_norm"} <= series.keys()
    assert {"teacher_gap", "entropy", "teacher_signal_frac", "truncated_frac"} <= series.keys()

    # -- trajectories, paged with cursors and filtered ------------------------------------
    trajectories = all_pages(api, run_id, limit=5)
    assert len(trajectories) == STEPS * PER_STEP
    assert [t["id"] for t in trajectories] == sorted({t["id"] for t in trajectories})
    assert {(t["step"], t["group_index"], t["sample_index"]) for t in trajectories} == {
        (s, g, i) for s in range(1, STEPS + 1) for g in range(PROMPTS) for i in range(SAMPLES)
    }
    step_two = all_pages(api, run_id, limit=3, step=2)
    assert [t["id"] for t in step_two] == [t["id"] for t in trajectories if t["step"] == 2]
    wrong = [t for t in trajectories if t["verdict"] == "wrong_answer"]
    assert wrong, "the tiny model answers some problems wrong"
    assert all_pages(api, run_id, limit=7, verdict="wrong_answer") == wrong

    # -- one wrong answer in full: feedback, teacher context, per-token scores ------------
    # (of a group nobody solved: with a solution in the context, feedback is left out)
    solved = {(t["step"], t["group_index"]) for t in trajectories if t["verdict"] == "ok"}
    unsolved = [t for t in wrong if (t["step"], t["group_index"]) not in solved]
    assert unsolved, "the tiny model gets some problem wrong in every sample"
    full = api.get_trajectory(run_id, unsolved[0]["id"])
    assert full["feedback"] and full["teacher_context"]
    # the teacher saw the prompt and the environment's feedback (docs/algorithm.md "Teacher context")
    assert full["prompt"] in full["teacher_context"]
    assert full["feedback"] in full["teacher_context"]
    scores = full["token_scores"]
    assert scores, "a trained step records per-token log-ratios"
    assert all(isinstance(s["token"], str) and isinstance(s["log_ratio"], float) for s in scores)
    assert full["response"].strip() in "".join(s["token"] for s in scores)

    # -- checkpoints at the milestones, loadable directories ------------------------------
    checkpoints = api.list_checkpoints(run_id)
    assert [c["step"] for c in checkpoints] == [3, 6]
    for checkpoint in checkpoints:
        assert (Path(checkpoint["path"]) / "model.safetensors").is_file()
        assert (Path(checkpoint["path"]) / "config.json").is_file()
    evaluated = dict(series["eval_accuracy"])
    best_step = max(evaluated, key=lambda s: (evaluated[s], -s))
    assert [c["best"] for c in checkpoints] == [c["step"] == best_step for c in checkpoints]
    # a checkpoint downloads as a tar that unpacks into a loadable model
    tar_path = api.download_checkpoint(run_id, checkpoints[-1]["step"], tmp_path / "last.tar")
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "download", filter="data")
    AutoModelForCausalLM.from_pretrained(tmp_path / "download" / "step-000006")

    # -- health ---------------------------------------------------------------------------
    ready = api.ready()
    assert ready["status"] == "ready", ready
    assert ready["checks"] == {"database": "ok", "bus": "ok", "worker": "ok", "pipeline": "ok"}


def test_a_tool_run_over_http_shows_episodes_per_turn_metrics_and_masked_tool_output(api):
    """`lookup` episodes with the shipped `tiny-tools`: the model calls the tool, reads its
    output and answers; the API shows each episode's turns and the tool output unscored."""
    api.register_environment("lookup", "lookup", {})
    run = api.create_run(
        "lookup",
        model="tiny-tools",
        algorithm="sdpo",
        steps=2,
        config={
            "prompts_per_step": 4,
            "samples_per_prompt": 4,
            "sampling": {"max_new_tokens": 160},
            "eval": {"every": 2, "size": 8},
        },
    )
    kinds = [event.kind for event in api.events(run["id"])]
    assert kinds[-1] == "completed", kinds

    series = api.run_metrics(run["id"])
    assert {"turns_mean", "tool_calls_mean", "tool_errors_mean", "truncated_frac"} <= series.keys()
    trajectories = all_pages(api, run["id"], limit=50)
    assert len(trajectories) == 2 * 16
    for t in trajectories:
        per_turn = t["metrics"]["per_turn"]
        assert t["metrics"]["turns"] == len(per_turn) >= 1
        assert (
            sum(turn["tool"] == "lookup" and turn["ran"] for turn in per_turn)
            == (t["metrics"]["tool_calls"])
        )
        assert t["policy_version"] == t["step"] - 1

    called = [t for t in trajectories if t["metrics"]["tool_calls"] and t["verdict"] == "ok"]
    assert called, "tiny-tools calls the tool in some episodes"
    full = api.get_trajectory(run["id"], called[0]["id"])
    assert "<tool_response>" in full["response"]
    scores = full["token_scores"]
    unscored = "".join(s["token"] for s in scores if s["log_ratio"] is None)
    scored = "".join(s["token"] for s in scores if s["log_ratio"] is not None)
    assert unscored.strip().startswith("<tool_response>")  # the tool output, masked
    assert "<tool_call>" in scored and "<tool_response>" not in scored

    failed = [t for t in trajectories if t["verdict"] != "ok" and t["teacher_context"]]
    assert failed, "some episodes fail and get a teacher context"
    assert any("A correct solution:\n<tool_call>" in t["teacher_context"] for t in failed)
