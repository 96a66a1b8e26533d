"""The dashboard's scripts and styles: its own files under `static/`, and plotly.js from
the installed `plotly` package, so that the pages work offline with nothing copied in."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PREFIX = "/ui"
STATIC_DIR = Path(__file__).parent / "static"
PLOTLY_PATH = ASSETS_PREFIX + "/vendor/plotly.min.js"


def plotly_js() -> Path:
    """plotly.js as the `plotly` Python package ships it."""
    return Path(str(files("plotly") / "package_data" / "plotly.min.js"))


def install_assets(app: FastAPI) -> None:
    """Serve plotly.js and `static/` under ASSETS_PREFIX (after the app's routes)."""
    script = plotly_js()

    @app.get(PLOTLY_PATH, include_in_schema=False)
    def plotly() -> FileResponse:
        return FileResponse(script, media_type="text/javascript")

    app.mount(ASSETS_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-assets")
