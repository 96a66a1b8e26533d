"""CachedReads: run reads answered in front of the routes while the record's version is
unchanged, with the version remembered for `read_freshness_s`."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from service.runs.cache import CachedReads, ReadCache, Versions

from ..records import set_status
from .helpers import make_run, record_step


@pytest.fixture
def fresh(settings, make_client):
    """Factory: a client of an app that remembers versions for `seconds`."""

    def make(seconds: float):
        client = make_client(settings.model_copy(update={"read_freshness_s": seconds}))
        return client, client.app.state.services

    return make


def run_paths(run_id: int) -> list[str]:
    return [
        "/v1/runs",
        f"/v1/runs/{run_id}",
        f"/v1/runs/{run_id}/metrics",
        f"/v1/runs/{run_id}/trajectories",
        f"/v1/runs/{run_id}/checkpoints",
    ]


def test_a_kept_answer_is_sent_as_built_without_a_route_or_a_query(fresh):
    client, services = fresh(60)
    run = make_run(services.repo)
    record_step(services.repo, run.id, 1, ["ok", "wrong_answer"])
    first = {path: client.get(path) for path in run_paths(run.id)}
    lookups, hits = services.versions.lookups, services.reads.hits
    for path, built in first.items():
        kept = client.get(path)
        assert kept.status_code == 200
        assert kept.content == built.content
        assert kept.headers["content-type"] == built.headers["content-type"] == "application/json"
        assert kept.headers["content-length"] == str(len(built.content))
    assert services.reads.hits == hits + len(first)
    assert services.versions.lookups == lookups  # nothing was queried
    # the request metrics name the route of a kept answer as of a built one
    metrics = client.get("/metrics").text
    assert 'route="/v1/runs/{run_id}/metrics",status="200"} 2.0' in metrics


def test_other_queries_are_other_answers_and_errors_are_not_kept(fresh):
    client, services = fresh(60)
    run = make_run(services.repo)
    record_step(services.repo, run.id, 1, ["ok", "ok", "wrong_answer"])
    path = f"/v1/runs/{run.id}/trajectories"
    assert len(client.get(path, params={"limit": 1}).json()["items"]) == 1
    assert len(client.get(path, params={"limit": 2}).json()["items"]) == 2
    assert len(client.get(path, params={"verdict": "ok"}).json()["items"]) == 2
    kept = len(services.reads)
    assert client.get("/v1/runs/999").status_code == 404
    assert client.get(path, params={"limit": 0}).status_code == 422
    assert client.get(path, params={"cursor": "not-a-cursor"}).status_code == 400
    assert len(services.reads) == kept


def test_a_change_made_beside_the_api_shows_within_the_freshness_window(fresh):
    client, services = fresh(0.5)
    run = make_run(services.repo)
    record_step(services.repo, run.id, 1, ["ok"])
    read_at = time.monotonic()
    assert client.get(f"/v1/runs/{run.id}").json()["steps_done"] == 1
    record_step(services.repo, run.id, 2, ["ok"])  # as a worker does, then its event
    services.repo.add_event(run.id, "step", {"step": 2})
    while client.get(f"/v1/runs/{run.id}").json()["steps_done"] == 1:
        assert time.monotonic() - read_at < 5, "the change never showed"
        time.sleep(0.02)
    assert time.monotonic() - read_at >= 0.5  # not before the version was looked up again


def test_a_change_made_through_this_api_shows_at_once(fresh):
    client, services = fresh(60)
    run = make_run(services.repo)
    for path in run_paths(run.id):
        client.get(path)
    assert client.post(f"/v1/runs/{run.id}/cancel").status_code == 200
    assert client.get(f"/v1/runs/{run.id}").json()["status"] == "cancelled"
    assert client.get("/v1/runs").json()["items"][0]["status"] == "cancelled"
    body = {"environment": "arith", "model": "tiny", "steps": 3}
    new = client.post("/v1/runs", json=body).json()["id"]
    assert [r["id"] for r in client.get("/v1/runs").json()["items"]] == [new, run.id]


def test_an_event_sent_down_an_event_stream_shows_in_the_next_read(fresh):
    """A client that reacts to an event reads what the event announced."""
    client, services = fresh(60)
    run = make_run(services.repo)
    set_status(services.repo, run.id, "running")
    assert client.get(f"/v1/runs/{run.id}").json()["status"] == "running"
    set_status(services.repo, run.id, "completed")
    services.repo.add_event(run.id, "completed", {})
    assert client.get(f"/v1/runs/{run.id}").json()["status"] == "running"  # remembered
    events = client.get(f"/v1/runs/{run.id}/events").text  # replayed, then the end
    assert "event: completed" in events
    assert client.get(f"/v1/runs/{run.id}").json()["status"] == "completed"


def test_a_trajectory_and_a_page_with_a_next_page_are_kept_for_good(fresh):
    """Trajectories never change once written, and later ones come after them."""
    client, services = fresh(0)
    run = make_run(services.repo)
    record_step(services.repo, run.id, 1, ["ok", "ok", "wrong_answer"])
    pages = f"/v1/runs/{run.id}/trajectories"
    first = client.get(pages, params={"limit": 2})
    last = client.get(pages, params={"limit": 2, "cursor": first.json()["next_cursor"]})
    one = client.get(f"{pages}/{first.json()['items'][0]['id']}")
    assert "immutable" in first.headers["cache-control"]
    assert "immutable" in one.headers["cache-control"]
    assert "cache-control" not in last.headers  # the newest page grows
    record_step(services.repo, run.id, 2, ["ok"])
    services.repo.add_event(run.id, "step", {"step": 2})
    hits = services.reads.hits
    assert client.get(pages, params={"limit": 2}).content == first.content
    assert client.get(f"{pages}/{first.json()['items'][0]['id']}").content == one.content
    assert services.reads.hits == hits + 2
    grown = client.get(pages, params={"limit": 2, "cursor": first.json()["next_cursor"]})
    assert len(grown.json()["items"]) == 2
    assert services.reads.hits == hits + 2


def test_concurrent_misses_of_one_answer_share_one_build():
    built = []

    async def route(scope, receive, send):
        built.append(scope["path"])
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"id": 1}'})

    services = SimpleNamespace(reads=ReadCache(), versions=Versions(lambda run: (1, 1), 60))
    app = SimpleNamespace(state=SimpleNamespace(services=services))
    front = CachedReads(route)

    async def get(path: str) -> bytes:
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "app": app}
        sent = []

        async def send(message):
            sent.append(message)

        await front(scope, None, send)
        return sent[1]["body"]

    async def scenario() -> list[bytes]:
        return await asyncio.gather(*(get("/v1/runs/1") for _ in range(20)), get("/v1/runs/2"))

    assert asyncio.run(scenario()) == [b'{"id": 1}'] * 21
    assert built == ["/v1/runs/1", "/v1/runs/2"]
