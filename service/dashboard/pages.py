"""The dashboard's URLs: one HTML shell per view, so that every view can be shared as a link.

A shell names its view (`data-page`) and loads the scripts; `static/main.js` reads the
view and its parameters from the URL and fills the page from the API. The shell holds
no data, so a path that names no run still gets a shell, and the page shows the API's
answer (a 404) itself.
"""

from __future__ import annotations

from html import escape
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from service.dashboard.assets import ASSETS_PREFIX, PLOTLY_PATH
from service.runs.schemas import MAX_INT32, MAX_INT64

router = APIRouter(include_in_schema=False)

# What the API's edge serves without a token (service.api.edge): the shells and assets.
OPEN_PATHS = frozenset({"/", "/runs", "/compare", "/environments", "/token"})
OPEN_PREFIXES = ("/runs/", "/environments/", ASSETS_PREFIX + "/")
# The pages load only this server's scripts and talk only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NAV = (("/", "Runs"), ("/runs/new", "New run"), ("/compare", "Compare"))
NAV_END = (("/environments", "Environments"), ("/token", "Token"))

RunId = Annotated[int, Path(ge=1, le=MAX_INT32)]
TrajectoryId = Annotated[int, Path(ge=1, le=MAX_INT64)]


def shell(page: str, title: str, *, charts: bool = False) -> HTMLResponse:
    """The page of view `page`; `charts` loads plotly.js too."""
    links = "".join(f'<a href="{href}">{name}</a>' for href, name in (*NAV, *NAV_END))
    plotly = f'<script src="{PLOTLY_PATH}" defer></script>' if charts else ""
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · opsd</title>
<link rel="stylesheet" href="{ASSETS_PREFIX}/dashboard.css">
{plotly}
<script type="module" src="{ASSETS_PREFIX}/main.js"></script>
</head>
<body data-page="{escape(page)}">
<header><a class="brand" href="/">opsd</a><nav>{links}</nav><span id="token-state"></span></header>
<main id="main"><p class="muted">Loading…</p></main>
</body>
</html>
"""
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get("/")
@router.get("/runs")
def runs_page() -> HTMLResponse:
    return shell("runs", "Runs")


@router.get("/runs/new")
def new_run_page() -> HTMLResponse:
    return shell("new-run", "New run")


@router.get("/runs/{run_id}")
def run_page(run_id: RunId) -> HTMLResponse:
    return shell("run", f"Run {run_id}", charts=True)


@router.get("/runs/{run_id}/trajectories")
def trajectories_page(run_id: RunId) -> HTMLResponse:
    return shell("trajectories", f"Run {run_id} trajectories")


@router.get("/runs/{run_id}/trajectories/{trajectory_id}")
def trajectory_page(run_id: RunId, trajectory_id: TrajectoryId) -> HTMLResponse:
    return shell("trajectory", f"Trajectory {trajectory_id}")


@router.get("/compare")
def compare_page() -> HTMLResponse:
    return shell("compare", "Compare runs", charts=True)


@router.get("/environments")
def environments_page() -> HTMLResponse:
    return shell("environments", "Environments")


@router.get("/environments/{name}")
def environment_page(name: Annotated[str, Path(max_length=128)]) -> HTMLResponse:
    return shell("environment", name)


@router.get("/token")
def token_page() -> HTMLResponse:
    return shell("token", "API token")
