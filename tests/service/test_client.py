"""service.client without a server: error parsing, SSE parsing and resumption.

Plumbing tests over httpx's MockTransport (the wire format is the subject); the client
against a real server is tested through the CLI in test_cli_client.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from service.client import ApiError, Client, ServerUnreachable, parse_sse


def sse(*events: tuple[int, str, dict]) -> bytes:
    """The wire form of (id, kind, payload) events, as the server writes them."""
    out = []
    for event_id, kind, payload in events:
        document = {"id": event_id, "kind": kind, "run_id": 1, "payload": payload}
        out.append(f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(document)}\n\n")
    return "".join(out).encode()


def client_for(handler) -> Client:
    return Client("http://opsd.test", token="", transport=httpx.MockTransport(handler))


def test_error_body_becomes_a_typed_api_error():
    body = {"error": {"code": "not_found", "message": "run 7 not found", "details": None}}
    api = client_for(lambda request: httpx.Response(404, json=body))

    with pytest.raises(ApiError) as caught:
        api.get_run(7)

    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert str(caught.value) == "run 7 not found"


def test_an_error_without_the_api_format_is_still_an_api_error():
    api = client_for(lambda request: httpx.Response(502, text="<html>bad gateway</html>"))

    with pytest.raises(ApiError) as caught:
        api.list_environments()

    assert caught.value.status == 502
    assert caught.value.message == "HTTP 502 Bad Gateway"


def test_nothing_listening_raises_server_unreachable():
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ServerUnreachable, match="connection refused"):
        client_for(refuse).list_runs()


def test_token_is_sent_as_bearer_and_defaults_to_the_environment(monkeypatch):
    seen = []

    def record(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(201, json={"name": "e", "kind": "arithmetic"})

    monkeypatch.setenv("OPSD_API_TOKEN", "from-env")
    Client("http://t", transport=httpx.MockTransport(record)).register_environment("e", "k")
    Client("http://t", token="given", transport=httpx.MockTransport(record)).register_environment(
        "e", "k"
    )
    monkeypatch.delenv("OPSD_API_TOKEN")
    Client("http://t", transport=httpx.MockTransport(record)).register_environment("e", "k")

    assert seen == ["Bearer from-env", "Bearer given", None]


def test_parse_sse_joins_data_lines_skips_comments_and_keeps_the_last_id():
    lines = [": ping", "", "id: 4", "event: step", 'data: {"payload":', 'data: {"step": 2}}', ""]
    lines += ["data: not json", ""]

    events = list(parse_sse(iter(lines)))

    assert [(e.id, e.kind, e.payload) for e in events] == [
        ("4", "step", {"step": 2}),
        ("4", "message", {"data": "not json"}),
    ]


def test_parse_sse_drops_an_event_cut_off_before_its_blank_line():
    assert list(parse_sse(iter(["id: 1", "event: step", "data: {}"]))) == []


def test_events_go_on_past_a_stop_that_a_resume_followed_until_the_server_ends_the_stream():
    kinds = ["started", "step", "stopped", "resumed", "started", "step", "completed"]
    body = sse(*((i, kind, {}) for i, kind in enumerate(kinds, start=1)))
    api = client_for(lambda request: httpx.Response(200, content=body))

    assert [event.kind for event in api.events(1)] == kinds


def test_events_resume_with_last_event_id_after_a_dropped_connection(monkeypatch):
    monkeypatch.setattr("service.client.time.sleep", lambda s: None)
    asked: list[str | None] = []

    def handler(request):
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:

            def cut() -> Iterator[bytes]:
                yield sse((1, "started", {}), (2, "step", {"step": 1}))
                raise httpx.ReadError("connection reset", request=request)

            return httpx.Response(200, content=cut())
        return httpx.Response(200, content=sse((3, "step", {"step": 2}), (4, "failed", {})))

    events = list(client_for(handler).events(1, after=0))

    assert asked == ["0", "2"]
    assert [(e.id, e.kind) for e in events] == [
        ("1", "started"),
        ("2", "step"),
        ("3", "step"),
        ("4", "failed"),
    ]
