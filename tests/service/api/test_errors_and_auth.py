"""One error format for every failure, the bearer-token guard, and the bind check
(more of the edge: test_edge.py)."""

from __future__ import annotations

import pytest

from service.api.auth import InsecureBind, check_bind
from service.settings import Settings

from .helpers import error_of

TOKEN = "s3cret-token"
NEW_ENV = {"name": "arith-small", "kind": "arithmetic", "config": {"high": 29}}


def test_unknown_route_is_a_404_in_the_error_format(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_wrong_method_is_a_405_in_the_error_format_with_allow(client):
    response = client.delete("/v1/runs")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"


def test_a_run_id_that_is_not_an_int_is_a_422_with_pydantic_details(client):
    response = client.get("/v1/runs/abc")
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    [detail] = error["details"]
    assert detail["loc"] == ["path", "run_id"]
    assert detail["type"] == "int_parsing"


def test_a_run_id_beyond_the_id_range_is_a_422_not_a_database_error(client):
    response = client.get(f"/v1/runs/{2**70}")
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"


def test_a_body_that_is_not_json_is_a_422(client):
    response = client.post(
        "/v1/environments", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_of(response)["details"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("cursor", ["garbage!", "aWQ6eA", "aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"])
def test_a_bad_cursor_is_a_400_invalid_cursor(client, cursor):
    response = client.get("/v1/runs", params={"cursor": cursor})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_cursor"


def test_an_unexpected_exception_is_a_500_with_a_generic_message(sqlite_settings, make_client):
    client = make_client(sqlite_settings, raise_server_exceptions=False)

    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.add_api_route("/boom", boom)
    response = client.get("/boom")
    assert response.status_code == 500
    error = error_of(response)
    assert error == {"code": "internal_error", "message": "internal server error", "details": None}


@pytest.fixture
def guarded(sqlite_settings, make_client):
    return make_client(sqlite_settings.model_copy(update={"api_token": TOKEN}))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer \xe9".encode("latin-1")},
    ],
)
def test_with_a_token_a_mutating_call_without_the_right_one_is_401(guarded, headers):
    response = guarded.post("/v1/environments", json=NEW_ENV, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/v1/environments/arith-small", headers=headers).status_code == 404


def test_with_a_token_the_right_bearer_is_accepted_for_writes_and_reads(guarded):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = guarded.post("/v1/environments", json=NEW_ENV, headers=headers)
    assert response.status_code == 201
    assert guarded.get("/v1/environments/arith-small", headers=headers).status_code == 200
    assert guarded.get("/v1/runs", headers=headers).status_code == 200


def test_openapi_declares_the_bearer_scheme_only_with_a_token(guarded, client):
    schema = guarded.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/runs"]["post"]["security"] == [{"bearer": []}]
    open_schema = client.get("/openapi.json").json()
    assert "security" not in open_schema["paths"]["/v1/runs"]["post"]


def test_without_a_token_mutating_calls_need_no_header(client):
    assert client.post("/v1/environments", json=NEW_ENV).status_code == 201


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_check_bind_refuses_a_public_address_without_a_token(host):
    with pytest.raises(InsecureBind, match="OPSD_API_TOKEN"):
        check_bind(Settings(host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_check_bind_accepts_loopback_addresses_without_a_token(host):
    check_bind(Settings(host=host))


def test_check_bind_accepts_a_public_address_with_a_token():
    check_bind(Settings(host="0.0.0.0", api_token=TOKEN))


def test_an_empty_token_counts_as_none():
    with pytest.raises(InsecureBind):
        check_bind(Settings(host="0.0.0.0", api_token=""))
