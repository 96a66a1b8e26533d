"""/v1/runs/{id}/events: Server-Sent Events replayed from the record and followed to the end."""

from __future__ import annotations

import json
import threading
import time

from .helpers import error_of, make_run, parse_sse


def events_of(client, run_id: int, **kwargs) -> list[dict[str, str]]:
    response = client.get(f"/v1/runs/{run_id}/events", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


def test_events_are_replayed_and_the_stream_ends_at_a_terminal_event(client, repo):
    run = make_run(repo)
    started = repo.add_event(run.id, "started", {"step": 0})
    step = repo.add_event(run.id, "step", {"step": 1, "reward_mean": 0.5})
    done = repo.add_event(run.id, "completed", {"steps": 1})
    repo.add_event(make_run(repo).id, "started", {})  # another run's

    events = events_of(client, run.id)
    assert [(e["id"], e["event"]) for e in events] == [
        (str(started.id), "started"),
        (str(step.id), "step"),
        (str(done.id), "completed"),
    ]
    data = json.loads(events[1]["data"])
    assert data["id"] == step.id
    assert data["kind"] == "step"
    assert data["run_id"] == run.id
    assert data["payload"] == {"step": 1, "reward_mean": 0.5}
    assert data["created_at"]


def test_last_event_id_replays_only_what_came_after(client, repo):
    run = make_run(repo)
    first = repo.add_event(run.id, "started", {})
    repo.add_event(run.id, "step", {"step": 1})
    repo.add_event(run.id, "failed", {"error": "boom"})

    events = events_of(client, run.id, headers={"Last-Event-ID": str(first.id)})
    assert [e["event"] for e in events] == ["step", "failed"]
    after = events_of(client, run.id, params={"after": first.id})
    assert [e["event"] for e in after] == ["step", "failed"]
    # the header wins over the query
    both = events_of(client, run.id, params={"after": 0}, headers={"Last-Event-ID": str(first.id)})
    assert [e["event"] for e in both] == ["step", "failed"]


def test_a_stopped_run_that_was_resumed_is_followed_past_its_old_stop_event(client, repo):
    run = make_run(repo)
    repo.add_event(run.id, "stopped", {})
    repo.add_event(run.id, "resumed", {})
    repo.add_event(run.id, "completed", {})
    events = events_of(client, run.id)
    assert [e["event"] for e in events] == ["stopped", "resumed", "completed"]


def test_a_run_already_in_a_terminal_state_ends_once_everything_is_replayed(client, repo):
    run = make_run(repo)
    repo.add_event(run.id, "started", {})
    client.post(f"/v1/runs/{run.id}/cancel")  # records the "cancelled" event
    assert [e["event"] for e in events_of(client, run.id)] == ["started", "cancelled"]
    # a client that already saw everything gets an empty stream that ends
    assert events_of(client, run.id, params={"after": 10**6}) == []


def test_new_events_of_a_live_run_are_sent_until_it_completes(client, repo):
    run = make_run(repo)
    repo.add_event(run.id, "started", {})

    def train() -> None:
        for step in (1, 2):
            time.sleep(0.1)
            repo.add_event(run.id, "step", {"step": step})
        repo.add_event(run.id, "completed", {})

    trainer = threading.Thread(target=train)
    trainer.start()
    events = events_of(client, run.id)
    trainer.join()
    assert [e["event"] for e in events] == ["started", "step", "step", "completed"]
    assert [json.loads(e["data"])["payload"].get("step") for e in events[1:3]] == [1, 2]


def test_events_of_an_unknown_run_are_a_404_before_any_stream(client):
    response = client.get("/v1/runs/99/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert error_of(response)["code"] == "not_found"


def test_a_bad_last_event_id_is_a_422(client, repo):
    run = make_run(repo)
    response = client.get(f"/v1/runs/{run.id}/events", headers={"Last-Event-ID": "later"})
    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["header", "last-event-id"]
