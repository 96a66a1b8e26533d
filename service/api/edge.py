"""What every HTTP request must pass before any route runs or any body byte is parsed.

In order:
1. `Host` names this server, and so does `Origin` on a mutating call (400, 403): a
   page on another site must not reach a localhost API through DNS rebinding or a
   cross-site form;
2. without a token, the client is on this machine (403), however the app was started;
3. with a token, every call but the probes, the documentation and the dashboard's pages
   and scripts (which hold no data) carries it (401), and the read token only reads (403);
4. the body stays within `max_body_bytes` (413): a larger `Content-Length` is refused
   at once, and a body without one (chunked) is counted as it streams in.

A pure ASGI middleware: FastAPI reads and validates a body before any dependency runs.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import (
    MUTATING_METHODS,
    READ_METHODS,
    allowed_hosts,
    configured_token,
    host_of_header,
    host_of_origin,
    is_loopback,
    token_grant,
)
from service.api.errors import BodyTooLarge, error_response, too_large
from service.settings import Settings

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


class EdgeGuard:
    """Refuses, in the API's error format, requests that must not reach a route."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        open_paths: Collection[str],
        open_prefixes: tuple[str, ...],
    ) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_hosts(settings)
        self.token = configured_token(settings)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope, Headers(scope=scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self.limited(receive), tracked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's handlers
            if started:
                raise
            await too_large(exc)(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers) -> Response | None:
        """The error response for a request that must go no further, or None."""
        method = scope["method"]
        if not self.host_allowed(host_of_header(headers.get("host", ""))):
            return error_response(
                400, "host_not_allowed", "this server does not answer to that Host"
            )
        origin = headers.get("origin")
        if method in MUTATING_METHODS and origin is not None:
            host = host_of_origin(origin)
            if host is None or not self.host_allowed(host):
                return error_response(403, "origin_not_allowed", "cross-origin call refused")
        if self.token is None:
            client = scope.get("client")
            if client and not is_loopback(client[0]):
                return error_response(
                    403,
                    "not_local",
                    "this server has no API token and serves only this machine; "
                    "set OPSD_API_TOKEN to serve other machines",
                )
        elif not self.is_open(scope["path"]):
            grant = token_grant(self.settings, headers.get("authorization", ""))
            if grant is None:
                message = "missing or wrong bearer token"
                return error_response(401, "unauthorized", message, headers=UNAUTHORIZED)
            if grant == "read" and method not in READ_METHODS:
                return error_response(403, "read_only_token", "this token allows reads only")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return too_large(BodyTooLarge(self.settings.max_body_bytes))
        return None

    def host_allowed(self, host: str) -> bool:
        return "*" in self.hosts or host in self.hosts

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def limited(self, receive: Receive) -> Receive:
        """`receive` that raises BodyTooLarge once the body passes the limit."""
        limit = self.settings.max_body_bytes
        seen = 0

        async def receive_within_limit() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return receive_within_limit
