"""Self-distillation learns through the service: an embedded deployment (a live server,
its pipeline process sampling and training, the SQLite record, the in-process bus), the
real tiny model and the real arithmetic environment, on CPU.

The bar is the offline one (tests/trainer/test_learning.py): held-out greedy accuracy
rises by at least 50 points in 100 steps. Only milestones 0 and 100 are evaluated, on
the 256 held-out problems, as offline.
"""

from __future__ import annotations

import pytest

from service.settings import Settings

from .live import live_server

STEPS = 100


@pytest.mark.slow
def test_self_distillation_through_the_service_raises_held_out_accuracy_by_50_points(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the pipeline process: the tiny model's fastest
    settings = Settings(data_dir=tmp_path / "data", device="cpu", poll_s=0.05, heartbeat_s=0.5)
    with live_server(settings) as api:
        config = {"seed": 0, "eval": {"every": STEPS, "size": 256}}
        run = api.create_run(
            "arithmetic", model="tiny", algorithm="sdpo", steps=STEPS, config=config
        )
        kinds = [event.kind for event in api.events(run["id"])]
        done = api.get_run(run["id"])
        series = api.run_metrics(run["id"])

    assert kinds[-1] == "completed", kinds
    assert (done["status"], done["steps_done"]) == ("completed", STEPS)
    assert [step for step, _ in series["loss"]] == list(range(1, STEPS + 1))
    (_, base), (last, final) = series["eval_accuracy"]
    assert last == STEPS
    assert final >= base + 0.50, series["eval_accuracy"]
