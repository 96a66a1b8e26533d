"""The dashboard's scripts: its own, and plotly.js from the installed `plotly` package."""

from __future__ import annotations

import re

from service.dashboard.assets import STATIC_DIR, plotly_js

IMPORT = re.compile(r'(?:from|import\()\s*"(\./[^"]+)"')


def test_plotly_js_is_the_file_the_plotly_package_ships(client):
    response = client.get("/ui/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == plotly_js().read_bytes()
    assert b"plotly.js v" in response.content[:200]


def test_scripts_are_served_as_javascript_and_styles_as_css(client):
    assert client.get("/ui/main.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/nothing.js").status_code == 404


def test_every_module_a_script_imports_is_served(client):
    scripts = sorted(STATIC_DIR.glob("*.js"))
    imported = {name for path in scripts for name in IMPORT.findall(path.read_text())}
    assert imported, "no imports found: the pattern no longer matches"
    for name in imported:
        assert (STATIC_DIR / name).is_file(), name
        assert client.get(f"/ui/{name[2:]}").status_code == 200


def test_the_scripts_name_no_other_site():
    for path in [*STATIC_DIR.glob("*.js"), *STATIC_DIR.glob("*.css")]:
        assert "://" not in path.read_text(), path.name
