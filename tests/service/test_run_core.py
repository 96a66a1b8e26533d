"""`opsd train` and the service drive one run core (trainer/run.py): the same run.

With the same configuration and seed, the offline loop (`trainer.loop.train`, one
process, one policy that samples and trains) and an embedded service run (a live server
whose pipeline process runs the orchestrator and the trainer worker, with their own
policy copies, the record and the in-process bus) sample the same tasks and the same
tokens at every step, train to the same losses and measure the same held-out accuracy
at every milestone: every step's tasks and token draws are functions of (seed, step),
both start from the same weights, and the service's sampler loads exactly the weights
the trainer wrote.

That holds for the synchronous case, `max_off_policy_steps = 0` (the default), which is
the only one `opsd train` has. With `max_off_policy_steps > 0` the service may sample
step s with weights older than step s - 1: which version it gets depends on how the
sampler and the trainer are scheduled, so that run differs from the offline one by
design (each batch records the policy version that sampled it).

No deterministic-algorithm switch is needed on CPU: each kernel is deterministic for a
given number of threads, and both processes run with the same number (the pipeline
process is spawned with OMP_NUM_THREADS set to the test process's torch thread count).
"""

from __future__ import annotations

import json

import pytest
import torch

from service.settings import Settings
from trainer.loop import RunPolicy, train
from trainer.presets import preset

from .live import live_server

STEPS = 4
CONFIG = {
    "seed": 3,
    "prompts_per_step": 2,
    "samples_per_prompt": 4,
    "eval": {"every": 2, "size": 32},
}
ENV_CONFIG = {"eval_size": 32}


def trajectories_by_step(api, run_id: int) -> dict[int, list[tuple[str, str]]]:
    """Step -> (task id, response) of every sample, in group and sample order."""
    items, cursor = [], None
    while True:
        page = api.list_trajectories(run_id, limit=100, cursor=cursor)
        items += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    ordered = sorted(items, key=lambda t: (t["step"], t["group_index"], t["sample_index"]))
    by_step: dict[int, list[tuple[str, str]]] = {}
    for t in ordered:
        by_step.setdefault(t["step"], []).append((t["task_id"], t["response"]))
    return by_step


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The offline run: its metrics.jsonl, and step -> (task id, response) sampled."""
    sampled: dict[int, list[tuple[str, str]]] = {}
    rollout = RunPolicy.rollout

    def recording(self, tasks, policy_version, seed=None):
        batch, rollouts = rollout(self, tasks, policy_version, seed)
        sampled[policy_version + 1] = [(r.task_id, r.response) for r in rollouts]
        return batch, rollouts

    monkeypatch.setattr(RunPolicy, "rollout", recording)
    overrides = {"model": "tiny", "env": "arithmetic", "env_config": ENV_CONFIG, "steps": STEPS}
    cfg = preset("sdpo", {**CONFIG, **overrides})
    out = tmp_path / "offline"
    train(cfg, out, device="cpu")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, sampled


def test_opsd_train_and_an_embedded_service_run_are_the_same_run(offline, tmp_path, monkeypatch):
    records, sampled = offline
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    settings = Settings(data_dir=tmp_path / "data", device="cpu", poll_s=0.05, heartbeat_s=0.5)
    assert settings.pipeline_process  # the service's own layout: sampling and training in a child
    with live_server(settings) as api:
        api.register_environment("arith-32", "arithmetic", ENV_CONFIG)
        run = api.create_run("arith-32", model="tiny", steps=STEPS, config=CONFIG)
        kinds = [event.kind for event in api.events(run["id"])]
        assert kinds[-1] == "completed", kinds
        served = trajectories_by_step(api, run["id"])
        series = api.run_metrics(run["id"])

    # the same tasks and the same sampled responses at every step
    assert sorted(served) == sorted(sampled) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert [task for task, _ in served[step]] == [task for task, _ in sampled[step]], step
        assert served[step] == sampled[step], step
    # the same optimiser steps
    for name in ("loss", "grad_norm", "lr"):
        assert series[name] == [(r["step"], r[name]) for r in records[1:]], name
    # the same held-out accuracy at every milestone (0, 2, 4)
    offline_evals = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    assert [step for step, _ in offline_evals] == [0, 2, 4]
    assert series["eval_accuracy"] == offline_evals
