"""Who may call the API: bearer tokens, the names it answers to, and the bind rule.

docs/operating.md "Security": a bearer token guards the API when the server listens
beyond localhost. With a token, every call but the probes, the API documentation and
the dashboard's pages and scripts (service.dashboard) carries it; `read_token`
(optional) allows reads only. Without a token the server
listens and answers on loopback only. `check_bind` runs in the app factory, so every
way of starting the app enforces it; `opsd serve` also calls it for an early message.
The checks themselves run per request in `service.api.edge`.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI

from service.settings import Settings

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
Grant = Literal["all", "read"]


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


def is_wildcard(host: str) -> bool:
    """0.0.0.0, :: or an empty host: every interface."""
    try:
        return not host.strip() or ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The names `Host` may carry: configured, or loopback plus OPSD_HOST (`*`: any)."""
    if settings.allowed_hosts is not None:
        names = settings.allowed_hosts
    elif is_wildcard(settings.host):
        names = ["*"]
    else:
        names = [*DEFAULT_HOSTS, settings.host]
    return frozenset(normalize_host(n) for n in names)


def normalize_host(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def host_of_header(value: str) -> str:
    """The name in a `Host` header: `[::1]:8000` -> `::1`, `Example.com:80` -> `example.com`."""
    value = value.strip()
    if value.startswith("["):
        return normalize_host(value[1:].partition("]")[0])
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return normalize_host(value)


def host_of_origin(origin: str) -> str | None:
    """The host of an `Origin` header; None for `null` or anything unparsable."""
    try:
        return normalize_host(urlsplit(origin.strip()).hostname or "") or None
    except ValueError:
        return None


def token_grant(settings: Settings, authorization: str) -> Grant | None:
    """What an `Authorization` header allows: everything, reads only, or nothing."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Compare bytes: compare_digest refuses non-ASCII str, and headers may hold any latin-1.
    given_bytes = given.strip().encode("latin-1", "replace")
    grants: list[tuple[str | None, Grant]] = [
        (configured_token(settings), "all"),
        (settings.read_token or None, "read"),
    ]
    for token, grant in grants:
        if token is not None and secrets.compare_digest(given_bytes, token.encode()):
            return grant
    return None


def document_bearer_auth(app: FastAPI, open_paths: frozenset[str]) -> None:
    """Declare the bearer scheme and its 401 on every operation of `app`'s OpenAPI
    document but those under `open_paths`.

    Only for an app that has a token: the document then says what this server enforces.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        unauthorized = {"$ref": "#/components/schemas/ErrorBody"}
        for path, operations in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {}).setdefault(
                    "401",
                    {
                        "description": "Missing or wrong bearer token",
                        "content": {"application/json": {"schema": unauthorized}},
                    },
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
