"""The dashboard is served by the API app: its tests use the API tests' apps."""

from ..api.conftest import (  # noqa: F401 - fixtures
    client,
    make_client,
    postgres_url,
    repo,
    settings,
    sqlite_settings,
)
