"""Property-based tests of the whole API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid; every response must not be
a server error and must match the status codes, content types and schemas the document
declares. The embedded stack (SQLite, in-process bus), no token, nothing training. A
registered environment, a finished run with trajectories, checkpoints and events, and a
queued run are seeded so id-based operations also reach real rows, and a worker
heartbeat so that /readyz is ready.

Schemathesis is driven through its public strategy API (`operation.as_strategy` under
Hypothesis' `@given`), one pytest test per operation: its pytest plugin reaches into
pytest's private node attributes and breaks with new pytest releases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import huggingface_hub.constants
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from service.settings import Settings

from ..records import set_status
from .helpers import make_run, record_step

EVENTS_TIMEOUT_S = 1.0  # a queued run's event stream never ends; read what came by then
EXAMPLES_PER_OPERATION = 25
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operations() -> list:
    """(method, path) of every operation in the document (building the app starts nothing)."""
    document = create_app(Settings(device="cpu"), background=False).openapi()
    return [
        pytest.param(method.upper(), path, id=f"{method.upper()} {path}")
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


@pytest.fixture  # per test: schemathesis' pytest plugin ends every ASGI lifespan after a test
def api_schema(tmp_path, monkeypatch) -> Iterator[schemathesis.BaseSchema]:
    # A generated model name is looked up on the hub; offline, that fails at once
    # (422) instead of retrying a network that is not there.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    settings = Settings(data_dir=tmp_path, device="cpu", poll_s=0.02, allowed_hosts=[asgi.HOST])
    app = create_app(settings, background=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", from_loopback(app))  # + lifespan
    repo = app.state.services.repo
    finished = make_run(repo, "arith")
    record_step(repo, finished.id, 1, ["ok", "wrong_answer"], log_ratios=[[0.1], [0.2, 0.3]])
    repo.add_checkpoint(finished.id, 1, str(tmp_path / "step-1"))
    repo.add_evaluation(finished.id, 0, 0.25)
    for kind in ("started", "step", "completed"):
        repo.add_event(finished.id, kind, {})
    set_status(repo, finished.id, "completed")
    make_run(repo, "arith")
    # /readyz answers 503 without a worker; the in-process bus is safe to call from here.
    asyncio.run(app.state.services.bus.heartbeat("fuzz-worker", 3600))
    yield schema
    asgi.shutdown_lifespans()


def from_loopback(app: ASGIApp) -> ASGIApp:
    """`app` as a caller on this machine reaches it (schemathesis's client has no address;
    a server without a token serves loopback clients only)."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": ("127.0.0.1", 50000)}
        await app(scope, receive, send)

    return call


@pytest.mark.parametrize(("method", "path"), operations())
def test_api_conforms_to_its_schema_and_never_fails_on_bad_input(api_schema, method, path):
    operation = api_schema[path][method]
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )
    kwargs = {"timeout": EVENTS_TIMEOUT_S} if path.endswith("/events") else {}

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: schemathesis.Case) -> None:
        # positive_data_acceptance expects every schema-valid body to be accepted, but some
        # checks cannot live in the schema: an environment's `config` must fit its kind's
        # own schema, run `config` overrides must make a valid RunConfig, a cursor must be
        # one the server issued, a model directory must exist. Those are 4xx by design.
        case.call_and_validate(excluded_checks=[positive_data_acceptance], **kwargs)

    conforms()
