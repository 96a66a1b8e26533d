"""A small typed HTTP client for the opsd API: one method per route.

    with Client("http://127.0.0.1:8000") as api:        # token: OPSD_API_TOKEN by default
        run = api.create_run("arithmetic", steps=100)
        for event in api.events(run["id"]):             # SSE, ends when the run has ended
            print(event.kind, event.payload)

The client knows nothing of the server's code: responses are plain JSON typed with
TypedDicts. Errors come in two kinds: `ApiError` (the server answered with the
`{"error": {"code", "message", "details"}}` format, or at least an HTTP error status)
and `ServerUnreachable` (nothing answered at the URL). The SSE stream is parsed here
(no extra dependency) and resumes with `Last-Event-ID` after a dropped connection.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_KINDS = frozenset({"completed", "failed", "cancelled", "stopped"})
RECONNECTS = 5  # consecutive failed reconnections before `events` gives up

Algorithm = Literal["sdpo", "grpo"]


class Environment(TypedDict):
    name: str
    kind: str
    description: str
    config: dict[str, Any]
    config_schema: dict[str, Any]
    registered: bool  # a stored instance (True) or a bare kind with its defaults (False)
    created_at: NotRequired[str | None]


class Eval(TypedDict):
    base: float | None
    latest: float | None
    latest_step: int | None


class Run(TypedDict):
    id: int
    environment: str
    model: str
    algorithm: str
    status: str  # queued, running, stopped, failed, cancelled, completed
    steps: int
    steps_done: int
    policy_version: int
    error: str | None
    config: NotRequired[dict[str, Any]]  # get_run only; the run list leaves it out
    created_at: str
    updated_at: str
    eval: Eval
    samples_seen: int


class Page(TypedDict):
    items: list[dict[str, Any]]
    next_cursor: str | None


class TryResult(TypedDict):
    task_id: str
    prompt: str
    response: str
    reward: float
    verdict: str
    feedback: str | None


class Checkpoint(TypedDict):
    step: int
    path: str
    created_at: str
    eval_accuracy: float | None
    best: bool


class ErrorBody(TypedDict):
    code: str
    message: str
    details: NotRequired[Any]


@dataclass(frozen=True)
class Event:
    """One server-sent event of a run: `kind` is started, batch, step, eval, completed, ..."""

    id: str | None
    kind: str
    run_id: int | None
    payload: dict[str, Any]
    created_at: str | None

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


class ApiError(Exception):
    """The server refused a request; `code` and `message` come from its error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def __str__(self) -> str:
        return self.message


class ServerUnreachable(Exception):
    """Nothing answered at the URL (connection refused, unknown host, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no opsd server answers at {url} ({reason})")
        self.url, self.reason = url, reason


def error_from_response(response: httpx.Response) -> ApiError:
    """Parse the API's error format; anything else still becomes a readable ApiError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return ApiError(
            response.status_code,
            str(error.get("code", "error")),
            str(error["message"]),
            error.get("details"),
        )
    reason = response.reason_phrase or "error"
    detail = body.get("detail") if isinstance(body, dict) else None  # FastAPI's default shape
    message = f"HTTP {response.status_code} {reason}" + (f": {detail}" if detail else "")
    return ApiError(response.status_code, f"http_{response.status_code}", message, body)


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else f"cannot connect: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


class Client:
    """The opsd API over HTTP. `token` defaults to the `OPSD_API_TOKEN` variable."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("OPSD_API_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", path, params=query).json()

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, json=body or {}).json()

    # -- health ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._get("/healthz")

    def ready(self) -> dict[str, Any]:
        return self._get("/readyz")

    def metrics_text(self) -> str:
        """The Prometheus exposition of `/metrics`."""
        return self._request("GET", "/metrics").text

    # -- environments ---------------------------------------------------------------

    def list_environments(self) -> list[Environment]:
        return self._get("/v1/environments")["items"]

    def register_environment(
        self, name: str, kind: str, config: dict[str, Any] | None = None
    ) -> Environment:
        return self._post("/v1/environments", {"name": name, "kind": kind, "config": config or {}})

    def get_environment(self, name: str) -> Environment:
        return self._get(f"/v1/environments/{name}")

    def try_environment(
        self,
        name: str,
        *,
        model: str = "tiny",
        tasks: int = 2,
        samples_per_prompt: int = 4,
        max_new_tokens: int = 64,
        split: str = "train",
    ) -> list[TryResult]:
        body = {
            "model": model,
            "tasks": tasks,
            "samples_per_prompt": samples_per_prompt,
            "max_new_tokens": max_new_tokens,
            "split": split,
        }
        return self._post(f"/v1/environments/{name}/try", body)["items"]

    def probe_environment(
        self,
        name: str,
        *,
        model: str = "tiny",
        groups: int = 4,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 16,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The teacher-student gap, teacher-signal share and base reward of a few groups,
        before any training (docs/operating.md "Run health")."""
        body = {
            "model": model,
            "groups": groups,
            "samples_per_prompt": samples_per_prompt,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        }
        return self._post(f"/v1/environments/{name}/probe", body)

    # -- runs -----------------------------------------------------------------------

    def create_run(
        self,
        environment: str,
        *,
        model: str = "tiny",
        algorithm: Algorithm = "sdpo",
        steps: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> Run:
        """Queue a run; `config` holds nested RunConfig overrides."""
        body: dict[str, Any] = {"environment": environment, "model": model, "algorithm": algorithm}
        if steps is not None:
            body["steps"] = steps
        body["config"] = config or {}
        return self._post("/v1/runs", body)

    def list_runs(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> Page:
        return self._get("/v1/runs", limit=limit, cursor=cursor, status=status)

    def iter_runs(self, *, status: str | None = None, page_size: int = 50) -> Iterator[Run]:
        """Every run (newest first, as the server orders them), following the cursors."""
        cursor = None
        while True:
            page = self.list_runs(limit=page_size, cursor=cursor, status=status)
            yield from page["items"]  # type: ignore[misc]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_run(self, run_id: int) -> Run:
        return self._get(f"/v1/runs/{run_id}")

    def stop_run(self, run_id: int) -> Run:
        return self._post(f"/v1/runs/{run_id}/stop")

    def resume_run(self, run_id: int) -> Run:
        return self._post(f"/v1/runs/{run_id}/resume")

    def cancel_run(self, run_id: int) -> Run:
        return self._post(f"/v1/runs/{run_id}/cancel")

    def run_metrics(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """Per-step metric series: name -> [(step, value), ...]."""
        series = self._get(f"/v1/runs/{run_id}/metrics")["series"]
        return {name: [(int(s), float(v)) for s, v in points] for name, points in series.items()}

    def list_trajectories(
        self,
        run_id: int,
        *,
        step: int | None = None,
        verdict: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        return self._get(
            f"/v1/runs/{run_id}/trajectories",
            step=step,
            verdict=verdict,
            limit=limit,
            cursor=cursor,
        )

    def get_trajectory(self, run_id: int, trajectory_id: int) -> dict[str, Any]:
        return self._get(f"/v1/runs/{run_id}/trajectories/{trajectory_id}")

    def list_checkpoints(self, run_id: int) -> list[Checkpoint]:
        """The run's milestone checkpoints; `best` marks the highest held-out accuracy."""
        return self._get(f"/v1/runs/{run_id}/checkpoints")["items"]

    def download_checkpoint(self, run_id: int, step: int, dest: Path) -> Path:
        """Write the checkpoint at `step` to the tar file `dest` (streamed: a model of many
        gigabytes is never held in memory); returns `dest`."""
        path = f"/v1/runs/{run_id}/checkpoints/{step}/archive"
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as got:
                if got.is_error:
                    got.read()
                    raise error_from_response(got)
                with dest.open("wb") as f:
                    for chunk in got.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        return dest

    # -- events (SSE) ---------------------------------------------------------------

    def events(self, run_id: int, after: str | int | None = None) -> Iterator[Event]:
        """The run's events as they happen, from after event id `after` (None: all).

        Ends when the server closes the stream: once the run's latest event is terminal
        (completed, failed, cancelled, stopped) or the run has ended. A terminal event
        that later events follow (a stop, then a resume) does not end it. A dropped
        connection is resumed with `Last-Event-ID`; `ServerUnreachable` after
        RECONNECTS failures in a row.
        """
        last_id = None if after is None else str(after)
        failures = 0
        # A step may take long: no read timeout; the connection itself still times out.
        timeout = httpx.Timeout(self.timeout, read=None)
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self._http.stream(
                    "GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.is_error:
                        response.read()
                        raise error_from_response(response)
                    failures = 0
                    for event in parse_sse(response.iter_lines()):
                        last_id = event.id or last_id
                        failures = 0
                        yield event
                    return  # the server ended the stream
            except httpx.TransportError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise ServerUnreachable(self.url, _reason(exc)) from exc
                time.sleep(min(0.5 * 2**failures, 10.0))


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events (the WHATWG event-stream format) from text lines."""
    event_id: str | None = None
    kind = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield _event(event_id, kind, "\n".join(data))
            kind, data = "message", []
            continue
        if line.startswith(":"):  # a comment: keep-alive ping
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            event_id = value
    # An event without its closing blank line is incomplete and dropped (as browsers do).


def _event(event_id: str | None, kind: str, data: str) -> Event:
    try:
        document = json.loads(data)
    except json.JSONDecodeError:
        document = {"payload": {"data": data}}
    if not isinstance(document, dict):
        document = {"payload": {"data": document}}
    run_id = document.get("run_id")
    return Event(
        id=event_id if event_id is not None else _str_or_none(document.get("id")),
        kind=kind if kind != "message" else str(document.get("kind", kind)),
        run_id=int(run_id) if run_id is not None else None,
        payload=document.get("payload") or {},
        created_at=document.get("created_at"),
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
