"""The dashboard's pages: one URL per view, served offline, open without a token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.dashboard.pages import SECURITY_HEADERS

from ..api.helpers import error_of

VIEWS = {
    "/": "runs",
    "/runs": "runs",
    "/runs/new": "new-run",
    "/runs/7": "run",
    "/runs/7/trajectories?step=3&verdict=ok": "trajectories",
    "/runs/7/trajectories/9": "trajectory",
    "/compare?runs=1,2": "compare",
    "/environments": "environments",
    "/environments/arithmetic": "environment",
    "/token": "token",
}
MAIN_JS = Path(__file__).resolve().parents[3] / "service" / "dashboard" / "static" / "main.js"
TOKEN = "t" * 32


def assets_of(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)


@pytest.mark.parametrize(("path", "view"), VIEWS.items())
def test_every_view_has_a_url_of_its_own(client, path, view):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f'data-page="{view}"' in response.text


@pytest.mark.parametrize("path", VIEWS)
def test_a_page_loads_only_what_this_server_serves(client, path):
    page = client.get(path)
    assert "://" not in page.text  # no CDN, no other site
    for asset in assets_of(page.text):
        assert asset.startswith("/ui/")
        assert client.get(asset).status_code == 200, asset
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in page.headers["content-security-policy"]


def test_charts_load_plotly_only_on_the_pages_that_draw_them(client):
    with_charts = {p for p in VIEWS if "/ui/vendor/plotly.min.js" in client.get(p).text}
    assert with_charts == {"/runs/7", "/compare?runs=1,2"}


def test_the_scripts_know_every_view_the_server_serves():
    views = set(re.findall(r'^\s+"?([a-z-]+)"?: \(\) => import', MAIN_JS.read_text(), re.M))
    assert views == set(VIEWS.values())


@pytest.mark.parametrize("path", ["/runs/0", "/runs/x", "/runs/7/trajectories/0"])
def test_a_page_url_with_an_invalid_id_is_a_422(client, path):
    assert error_of(client.get(path))["code"] == "validation_error"


def test_pages_are_not_part_of_the_api_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if not p.startswith(("/v1/", "/healthz", "/readyz", "/metrics"))]


@pytest.fixture
def guarded(sqlite_settings, make_client):
    return make_client(sqlite_settings.model_copy(update={"api_token": TOKEN}))


@pytest.mark.parametrize("path", [*VIEWS, "/ui/main.js", "/ui/vendor/plotly.min.js"])
def test_with_a_token_pages_and_scripts_are_served_without_one(guarded, path):
    assert guarded.get(path).status_code == 200


def test_with_a_token_what_the_pages_read_still_needs_it(guarded):
    assert guarded.get("/v1/runs").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/v1/runs", headers=headers).status_code == 200


def test_without_a_token_pages_serve_only_this_machine(sqlite_settings, make_client):
    remote = make_client(sqlite_settings, client=("203.0.113.5", 40000))
    assert error_of(remote.get("/"))["code"] == "not_local"
