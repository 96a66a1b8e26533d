"""Several runs at once in one API process (Postgres, Redis, training in the process): each
run loads its policy twice (the orchestrator's sampling copy and the trainer's), so
starting runs together, or restarting an API with active runs, loads models in several
threads at once. Every run must complete."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from service.client import Client
from service.settings import Settings
from service.storage.migrate import upgrade

from .conftest import REDIS_URL
from .live import live_server

RUNS = 3
CONFIG = {
    "prompts_per_step": 2,
    "samples_per_prompt": 2,
    "sampling": {"max_new_tokens": 8},
    "eval": {"every": 3, "size": 8},
}
DONE = ("completed", "failed", "cancelled")
WAIT_S = 300.0  # small, shared machines


def start_together(api: Client, steps: int) -> list[int]:
    with ThreadPoolExecutor(RUNS) as pool:
        runs = pool.map(
            lambda _: api.create_run("arithmetic", model="tiny", steps=steps, config=CONFIG),
            range(RUNS),
        )
        return [run["id"] for run in runs]


def wait_for(api: Client, run_ids: list[int], statuses: tuple[str, ...]) -> dict[int, dict]:
    deadline = time.monotonic() + WAIT_S
    while True:
        runs = {run_id: api.get_run(run_id) for run_id in run_ids}
        if all(run["status"] in statuses for run in runs.values()):
            return runs
        assert time.monotonic() < deadline, {i: r["status"] for i, r in runs.items()}
        time.sleep(0.2)


def assert_completed(runs: dict[int, dict], steps: int) -> None:
    failures = {i: r["error"] for i, r in runs.items() if r["status"] != "completed"}
    assert failures == {}
    assert all(run["steps_done"] == steps for run in runs.values())


def test_runs_started_together_and_an_api_restarted_with_active_runs_all_complete(
    tmp_path, postgres, redis_prefix
):
    url = postgres.create()
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=REDIS_URL,
        bus_prefix=redis_prefix,
        embedded_worker=True,
        device="cpu",
        poll_s=0.05,
        heartbeat_s=0.5,
        claim_idle_s=2,  # batches the stopped process held are claimed soon after
    )
    with live_server(settings) as api:
        first = start_together(api, steps=3)
        assert_completed(wait_for(api, first, DONE), steps=3)
        second = start_together(api, steps=4)
        wait_for(api, second, ("running", *DONE))  # active when the API goes down
    with live_server(settings) as api:  # every active run is picked up again at once
        assert_completed(wait_for(api, second, DONE), steps=4)
