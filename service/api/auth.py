"""The bearer token that guards mutating calls, and the refusal to listen publicly without one.

docs/operating.md "Security": a bearer token guards every mutating call when the
server listens beyond localhost. Reads (GET) stay open. `check_bind` is what
`opsd serve` calls before it starts listening.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from service.settings import Settings

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


class InsecureBind(RuntimeError):
    """The API would listen beyond localhost without a bearer token."""


def configured_token(settings: Settings) -> str | None:
    """The token, or None when none is set (an empty string counts as none)."""
    return settings.api_token or None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; anything else (0.0.0.0, a hostname) may be public."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Raise InsecureBind if `settings.host` is not a loopback address and no token is set."""
    if configured_token(settings) is None and not is_loopback(settings.host):
        raise InsecureBind(
            f"refusing to listen on {settings.host!r} without an API token: anyone who can "
            "reach it could start and stop runs. Set OPSD_API_TOKEN, or listen on 127.0.0.1."
        )


def require_token(request: Request) -> None:
    """FastAPI dependency: a mutating call must carry `Authorization: Bearer <token>`."""
    token = configured_token(request.app.state.services.settings)
    if token is None or request.method not in MUTATING_METHODS:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Compare bytes: compare_digest refuses non-ASCII str, and headers may hold any latin-1.
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer scheme on the mutating operations of `app`'s OpenAPI document.

    Only for an app that has a token: the document then says what this server enforces.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                if method.upper() in MUTATING_METHODS:
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
