"""/v1/runs/{id}/events: Server-Sent Events replayed from the record and followed to the end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable

import anyio

from service.bus import make_bus
from service.pipeline.runtime import emit
from service.runs.events import follow_run

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


def follower(
    services, run_id: int, poll_s: float, produce=None, bus=None
) -> Callable[[], Awaitable[list[str]]]:
    """The kinds of the events `follow_run` sends for `run_id` (on the app's repository
    and, unless `bus` is given, its bus) while `produce()` emits, within ten seconds."""

    async def run() -> list[str]:
        kinds: list[str] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:

                async def consume() -> None:
                    repo, the_bus = services.repo, bus or services.bus
                    async for message in follow_run(repo, run_id, 0, poll_s, the_bus):
                        kinds.append(message.event)

                group.start_soon(consume)
                if produce is not None:
                    await produce()
        return kinds

    return run


def test_a_live_run_is_followed_through_the_bus_between_polls_of_the_record(client, repo):
    """With polls an hour apart, what `emit` records and announces arrives at once."""
    services = client.app.state.services
    run = make_run(repo)

    async def produce() -> None:
        await anyio.sleep(0.2)  # the stream has read the (empty) record and waits
        for kind in ("started", "step", "step", "completed"):
            await emit(services.repo, services.bus, run.id, kind, {})

    kinds = client.portal.call(follower(services, run.id, 3600.0, produce))
    assert kinds == ["started", "step", "step", "completed"]


def test_without_a_reachable_bus_the_stream_polls_the_record(client, repo):
    """A bus that cannot subscribe (no Redis there) leaves the stream to polling."""
    services = client.app.state.services
    run = make_run(repo)
    for kind in ("started", "completed"):
        repo.add_event(run.id, kind, {})

    async def run_with_a_dead_bus() -> list[str]:
        dead = make_bus("redis://127.0.0.1:1/0")
        try:
            return await follower(services, run.id, 0.02, bus=dead)()
        finally:
            await dead.aclose()

    assert client.portal.call(run_with_a_dead_bus) == ["started", "completed"]


def test_a_tail_stream_sends_only_the_events_recorded_after_it_opened(client, repo):
    run = make_run(repo)
    repo.add_event(run.id, "started", {})
    repo.add_event(run.id, "step", {"step": 1})

    def train() -> None:
        time.sleep(0.5)  # the stream opens meanwhile
        repo.add_event(run.id, "step", {"step": 2})
        repo.add_event(run.id, "completed", {})

    trainer = threading.Thread(target=train)
    trainer.start()
    events = events_of(client, run.id, params={"tail": True})
    trainer.join()
    assert [e["event"] for e in events] == ["step", "completed"]
    assert json.loads(events[0]["data"])["payload"] == {"step": 2}
    # a reconnecting client's Last-Event-ID wins over the tail
    first = json.loads(events[0]["data"])["id"]
    resumed = events_of(client, run.id, params={"tail": True}, headers={"Last-Event-ID": "0"})
    assert [e["event"] for e in resumed] == ["started", "step", "step", "completed"]
    assert (
        events_of(client, run.id, params={"tail": True, "after": first})[0]["event"] == "completed"
    )
