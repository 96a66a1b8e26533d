"""The dashboard: web pages the API serves at `/`, a client of the REST API.

Every view has its own URL (`service.dashboard.pages`); the pages are static shells
whose scripts (`static/`, plus plotly.js from the installed `plotly` package, see
`service.dashboard.assets`) read everything through `/v1/...` with the token the user
gives. Shells and scripts hold no data, so they are served without a token, like the
API documentation; every read and change they make passes the API's own checks.
"""

from service.dashboard.assets import ASSETS_PREFIX, install_assets
from service.dashboard.pages import OPEN_PATHS, OPEN_PREFIXES, router

__all__ = ["ASSETS_PREFIX", "OPEN_PATHS", "OPEN_PREFIXES", "install_assets", "router"]
