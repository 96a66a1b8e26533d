"""The HTTP edge, before any route runs: body size limit, token on every call, Host and
Origin checks, loopback-only without a token, the bind rule in the app, capped 422s and
the offline /docs.

Chunked and unfinished bodies go over a real socket to uvicorn (a TestClient hands the
app the whole body at once): the server must answer before the body has arrived.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from service.api.auth import InsecureBind
from service.app import create_app
from service.client import ApiError, Client
from service.settings import Settings

from ..live import LiveServer
from .helpers import error_of

TOKEN = "s3cret-token"
READ_TOKEN = "read-only-token"
LIMIT = 4096
NEW_ENV = {"name": "arith-small", "kind": "arithmetic", "config": {"high": 29}}


@pytest.fixture
def client(sqlite_settings, make_client):
    """The edge is the same on both stacks: SQLite only."""
    return make_client(sqlite_settings)


@pytest.fixture
def small(sqlite_settings) -> Settings:
    return sqlite_settings.model_copy(update={"max_body_bytes": LIMIT})


def exchange(server: LiveServer, head: str, *chunks: bytes) -> tuple[int, dict]:
    """Send a request head and body bytes, then read the answer while the connection
    stays open (a server that waits for the rest of the body times the test out)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for chunk in chunks:
            conn.sendall(chunk)
        received = b""
        while b"\r\n\r\n" not in received:
            received += conn.recv(65536) or pytest.fail(f"connection closed: {received!r}")
        header, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))
        while len(body) < length:
            body += conn.recv(65536) or pytest.fail("connection closed mid-body")
    return int(header.split()[1]), json.loads(body)


@pytest.fixture
def live(small) -> Iterator[LiveServer]:
    with LiveServer(small.model_copy(update={"api_token": TOKEN})) as server:
        yield server


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# -- body size ------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_in_the_error_format(small, make_client):
    client = make_client(small)
    response = client.post("/v1/environments", json={**NEW_ENV, "pad": "x" * LIMIT})
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "content_too_large"
    assert error["details"] == {"limit_bytes": LIMIT}
    assert client.post("/v1/environments", json=NEW_ENV).status_code == 201  # under: accepted


def test_a_declared_length_over_the_limit_is_refused_before_any_body_byte(live):
    status, body = exchange(
        live,
        "POST /v1/runs HTTP/1.1\nHost: localhost\n"
        f"Authorization: Bearer {TOKEN}\nContent-Type: application/json\n"
        "Content-Length: 52428800\n",
    )
    assert status == 413
    assert body["error"]["code"] == "content_too_large"


def test_a_chunked_body_is_refused_once_it_passes_the_limit_not_at_its_end(live):
    head = (
        "POST /v1/runs HTTP/1.1\nHost: localhost\n"
        f"Authorization: Bearer {TOKEN}\nContent-Type: application/json\n"
        "Transfer-Encoding: chunked\n"
    )
    # Over the limit, and never finished: no terminating zero-length chunk.
    status, body = exchange(live, head, chunk(b'{"environment": "'), *[chunk(b"x" * 1024)] * 8)
    assert status == 413
    assert body["error"]["details"] == {"limit_bytes": LIMIT}


def test_a_chunked_body_under_the_limit_is_served(live):
    head = (
        "POST /v1/environments HTTP/1.1\nHost: localhost\n"
        f"Authorization: Bearer {TOKEN}\nContent-Type: application/json\n"
        "Transfer-Encoding: chunked\nConnection: close\n"
    )
    payload = json.dumps(NEW_ENV).encode()
    status, body = exchange(live, head, chunk(payload[:10]), chunk(payload[10:]), b"0\r\n\r\n")
    assert status == 201, body
    assert body["name"] == "arith-small"


def test_without_the_token_the_answer_is_a_401_before_the_body_is_read(live):
    status, body = exchange(
        live,
        "POST /v1/runs HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
        "Content-Length: 1000\n",
    )
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


def test_the_body_limit_is_an_opsd_setting(monkeypatch):
    monkeypatch.setenv("OPSD_MAX_BODY_BYTES", "1234")
    assert Settings().max_body_bytes == 1234
    monkeypatch.delenv("OPSD_MAX_BODY_BYTES")
    assert 1 << 20 <= Settings().max_body_bytes <= 16 << 20


# -- validation errors never echo the request -----------------------------------------


def test_a_422_names_where_and_what_but_does_not_echo_the_input(client):
    big = "7" * 40 + "x" * 1_000_000
    response = client.post("/v1/runs", json={"environment": "arithmetic", "steps": big})
    assert response.status_code == 422
    assert len(response.content) < 2000
    [detail] = error_of(response)["details"]
    assert detail == {
        "loc": ["body", "steps"],
        "msg": "Input should be a valid integer, unable to parse string as an integer",
        "type": "int_parsing",
    }


def test_a_422_with_many_errors_reports_the_first_few_with_capped_values(client):
    extra = {f"k{i}": i for i in range(500)} | {"y" * 100_000: 1}
    response = client.post("/v1/runs", json={"environment": "arithmetic", **extra})
    assert response.status_code == 422
    assert len(response.content) < 10_000
    error = error_of(response)
    assert "501 errors" in error["message"]
    assert 1 <= len(error["details"]) <= 20
    assert all(len(str(part)) <= 200 for d in error["details"] for part in d["loc"])


def test_an_invalid_run_config_is_a_422_without_the_input(client):
    bad = {"optim": {"lr": "z" * 100_000}}
    response = client.post("/v1/runs", json={"environment": "arithmetic", "config": bad})
    assert response.status_code == 422
    assert len(response.content) < 5000
    assert "zzzzzzzzzz" not in response.text


# -- the token guards every call --------------------------------------------------------


@pytest.fixture
def guarded(sqlite_settings, make_client):
    settings = sqlite_settings.model_copy(update={"api_token": TOKEN, "read_token": READ_TOKEN})
    return make_client(settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/environments", "/v1/runs/1", "/metrics"])
def test_with_a_token_reads_need_a_token_too(guarded, path):
    response = guarded.get(path)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert guarded.get(path, headers=bearer("wrong")).status_code == 401
    assert guarded.get(path, headers=bearer(TOKEN)).status_code in (200, 404)
    assert guarded.get(path, headers=bearer(READ_TOKEN)).status_code in (200, 404)


def test_the_read_token_cannot_mutate(guarded):
    response = guarded.post("/v1/environments", json=NEW_ENV, headers=bearer(READ_TOKEN))
    assert response.status_code == 403
    assert error_of(response)["code"] == "read_only_token"
    assert guarded.get("/v1/environments/arith-small", headers=bearer(TOKEN)).status_code == 404


def test_a_body_that_is_not_json_without_a_token_is_a_401_not_a_422(guarded):
    response = guarded.post(
        "/v1/environments", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/docs", "/openapi.json", "/redoc"])
def test_probes_and_the_api_documentation_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


def test_openapi_declares_the_bearer_scheme_on_every_api_call_with_a_token(guarded):
    schema = guarded.get("/openapi.json").json()
    assert schema["paths"]["/v1/runs"]["get"]["security"] == [{"bearer": []}]
    assert "401" in schema["paths"]["/v1/runs/{run_id}"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_a_read_token_without_an_api_token_is_refused():
    with pytest.raises(ValueError, match="OPSD_API_TOKEN"):
        Settings(read_token=READ_TOKEN)


# -- Host, Origin, and loopback-only without a token ------------------------------------


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "10.0.0.1"])
def test_a_foreign_host_header_is_refused(client, host):
    response = client.post("/v1/environments", json=NEW_ENV, headers={"Host": host})
    assert response.status_code == 400
    assert error_of(response)["code"] == "host_not_allowed"
    assert client.get("/v1/runs", headers={"Host": host}).status_code == 400
    assert client.get("/v1/environments/arith-small").status_code == 404  # nothing happened


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_loopback_host_headers_are_served(client, host):
    assert client.get("/v1/runs", headers={"Host": host}).status_code == 200


def test_configured_host_names_are_served(sqlite_settings, make_client):
    client = make_client(sqlite_settings.model_copy(update={"allowed_hosts": ["opsd.internal"]}))
    assert client.get("/v1/runs", headers={"Host": "opsd.internal:8000"}).status_code == 200
    assert client.get("/v1/runs", headers={"Host": "localhost"}).status_code == 400


def test_allowed_hosts_read_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("OPSD_ALLOWED_HOSTS", "a.example, b.example")
    assert Settings().allowed_hosts == ["a.example", "b.example"]


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "http://10.0.0.1:8000"])
def test_a_mutating_call_from_a_foreign_origin_is_refused(client, origin):
    response = client.post("/v1/environments", json=NEW_ENV, headers={"Origin": origin})
    assert response.status_code == 403
    assert error_of(response)["code"] == "origin_not_allowed"
    assert client.get("/v1/environments/arith-small").status_code == 404


def test_a_mutating_call_from_the_servers_own_origin_is_served(client):
    headers = {"Origin": "http://localhost:8000"}
    assert client.post("/v1/environments", json=NEW_ENV, headers=headers).status_code == 201


def test_without_a_token_a_client_beyond_loopback_is_refused(sqlite_settings, make_client):
    client = make_client(sqlite_settings, client=("192.0.2.7", 40000))
    response = client.get("/v1/runs")
    assert response.status_code == 403
    assert "OPSD_API_TOKEN" in error_of(response)["message"]
    guarded = make_client(
        sqlite_settings.model_copy(update={"api_token": TOKEN}), client=("192.0.2.7", 40000)
    )
    assert guarded.get("/v1/runs", headers=bearer(TOKEN)).status_code == 200


# -- the bind rule lives in the app ------------------------------------------------------


def test_the_app_refuses_a_public_address_without_a_token(tmp_path):
    with pytest.raises(InsecureBind, match="OPSD_API_TOKEN"):
        create_app(Settings(data_dir=tmp_path, host="0.0.0.0"))


def test_uvicorn_factory_refuses_a_public_address_without_a_token(tmp_path):
    env = {**os.environ, "OPSD_HOST": "0.0.0.0", "OPSD_DATA_DIR": str(tmp_path)}
    env.pop("OPSD_API_TOKEN", None)
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", "0"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "refusing to listen on '0.0.0.0'" in result.stderr


# -- /docs works offline ------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_use_only_assets_the_server_serves(client, page):
    response = client.get(page)
    assert response.status_code == 200
    assert "://" not in response.text, re.findall(r"\S*://\S*", response.text)
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", response.text)
    assert assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


# -- the Python client sends its token on every call -----------------------------------


def test_the_client_reads_and_streams_with_its_token_from_a_token_server(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"api_token": TOKEN, "read_token": READ_TOKEN})
    with LiveServer(settings) as server:
        url = f"http://127.0.0.1:{server.port}"
        with Client(url, token="") as anonymous, pytest.raises(ApiError) as refused:
            anonymous.list_runs()
        assert refused.value.status == 401
        with Client(url, token=TOKEN) as api:
            run = api.create_run("arithmetic", steps=1)
        server.app.state.services.repo.add_event(run["id"], "completed", {})
        with Client(url, token=READ_TOKEN) as reader:
            assert [r["id"] for r in reader.list_runs()["items"]] == [run["id"]]
            assert [event.kind for event in reader.events(run["id"])] == ["completed"]
