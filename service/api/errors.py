"""Typed exceptions -> HTTP errors, in one place (docs/contributing.md "Configuration and errors").

Every error response is `{"error": {"code", "message", "details"}}`: 4xx for the
caller's mistakes (never a 500 for bad input), 500 `internal_error` with a generic
message for bugs (the exception is logged, not shown). Route modules only raise typed
exceptions, defined in their domains (the record's in service.storage, the environments'
and runs' in their packages' `errors` modules, the environment registry's in envs); this
module only maps them, and `install_error_handlers` installs the mapping.

An error never echoes the request: validation errors say where (`loc`) and what
(`msg`, `type`) for the first MAX_ERRORS problems, without pydantic's `input`, and
every text in an error is cut at MAX_TEXT characters.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from envs.base import EnvDataError
from envs.registry import InvalidEnvConfig, UnknownEnvironment
from service.environments.errors import ModelUnavailable
from service.runs.errors import InvalidRunConfig
from service.storage import AlreadyExists, Conflict, InvalidCursor, NotFound

log = logging.getLogger(__name__)

MAX_ERRORS = 20  # validation problems reported per response
MAX_TEXT = 200  # characters of any string in `details`
MAX_MESSAGE = 500  # characters of `message`


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code", examples=["not_found"])
    message: str = Field(description="what went wrong, for people", examples=["run 7 not found"])
    details: Any = Field(None, description="more about the error (validation errors, ...)")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class BodyTooLarge(HTTPException):
    """The request body passed `limit` bytes (raised while it streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit}-byte limit")
        self.limit = limit


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be parsed, or an invalid pagination cursor",
    401: "Missing or wrong bearer token",
    403: "The token allows reads only, or the request comes from a place not served",
    404: "No such resource",
    409: "Conflicts with the current state",
    422: "The request does not validate",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring the error body for these status codes."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def json_safe(value: Any) -> Any:
    """Plain JSON from anything found in an error (exceptions, bytes, NaN become text),
    with texts cut at MAX_TEXT characters and collections at MAX_ERRORS items."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ERRORS]
        return {cut(str(k)): json_safe(v) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in list(value)[:MAX_ERRORS]]
    if isinstance(value, bytes):
        value = value[: MAX_TEXT * 4].decode("utf-8", "replace")
    return cut(str(value))


def validation_details(errors: list[Any]) -> list[Any]:
    """Where and what of the first MAX_ERRORS pydantic errors; never their `input`."""
    return [
        {"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")}
        if isinstance(e, dict)
        else str(e)
        for e in errors[:MAX_ERRORS]
    ]


def validation_message(message: str, errors: list[Any]) -> str:
    """`message`, saying how many problems there are when not all are shown."""
    shown = f", the first {MAX_ERRORS} shown" if len(errors) > MAX_ERRORS else ""
    return f"{message} ({len(errors)} errors{shown})" if len(errors) > 1 else message


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict | None = None
) -> JSONResponse:
    error = {"code": code, "message": cut(message, MAX_MESSAGE), "details": json_safe(details)}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def status_code_name(status: int) -> str:
    """401 -> `unauthorized`, 405 -> `method_not_allowed`: the HTTP phrase in snake case."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


# exception type -> (status, code); the first matching entry wins (subclasses first).
TYPED_ERRORS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (Conflict, 409, "conflict"),
    (InvalidCursor, 400, "invalid_cursor"),
    (UnknownEnvironment, 422, "unknown_environment"),
    (InvalidEnvConfig, 422, "invalid_environment_config"),
    (EnvDataError, 422, "invalid_environment_data"),
    (InvalidRunConfig, 422, "invalid_run_config"),
    (ModelUnavailable, 422, "model_not_found"),
    # Data the database refuses (a value out of range) is the caller's; a database that
    # cannot be reached is not.
    (DataError, 422, "invalid_data"),
    (OperationalError, 503, "unavailable"),
]


def classify(exc: Exception) -> tuple[int, str]:
    """(status, code) of a typed exception: the first matching TYPED_ERRORS entry."""
    return next(
        ((s, c) for cls, s, c in TYPED_ERRORS if isinstance(exc, cls)), (500, "internal_error")
    )


def typed_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = classify(exc)
    if status == 500:  # pragma: no cover - only registered types reach here
        return internal_error(request, exc)
    if isinstance(exc, DataError | OperationalError):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        message = "the database refused the request" if status == 422 else "database unavailable"
        return error_response(status, code, message)
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        errors = cause.errors()
        return error_response(
            status, code, validation_message(str(exc), errors), validation_details(errors)
        )
    return error_response(status, code, str(exc))


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Routing and auth errors (404, 405 with its `Allow`, 401 with `WWW-Authenticate`)."""
    message = exc.detail if isinstance(exc.detail, str) else status_code_name(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette lists only the first matching route's methods
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    code = status_code_name(exc.status_code)
    return error_response(exc.status_code, code, message, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method the app's routes accept at this path (RFC 9110 `Allow`)."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "api_routes", []):
        if route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    message = validation_message("the request does not validate", errors)
    return error_response(422, "validation_error", message, validation_details(errors))


def too_large(exc: BodyTooLarge) -> JSONResponse:
    return error_response(413, "content_too_large", str(exc.detail), {"limit_bytes": exc.limit})


def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
    return too_large(exc)


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, request_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(BodyTooLarge, body_too_large)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    for cls, _, _ in TYPED_ERRORS:
        app.add_exception_handler(cls, typed_error)
    app.add_exception_handler(Exception, internal_error)
