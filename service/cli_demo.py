"""`opsd demo`: the whole service on one machine, in a few minutes, from nothing.

It starts the embedded service (SQLite, in-process bus and trainer, local sandbox)
in this process, registers `arithmetic`, starts a self-distillation run of the tiny
model through the HTTP API, follows it live, and ends with a summary and a plot. With
`--url` it does the same against a server that is already running.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from service.cli_client import Token, connect
from service.cli_common import console, fail
from service.cli_server import configure_logging, load_settings
from service.cli_watch import accuracy, follow
from service.client import ApiError, Client

ENVIRONMENT = "arithmetic"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def embedded_server(data_dir: Path | None) -> Iterator[tuple[str, Path]]:
    """`opsd serve` on a free loopback port in a background thread; yields (url, data dir)."""
    import uvicorn

    from service.app import create_app

    settings = load_settings(
        host="127.0.0.1", port=free_port(), data_dir=data_dir, redis_url=None, api_token=None
    )
    configure_logging("warning")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, name="opsd-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise fail("the embedded service did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://{settings.host}:{settings.port}", settings.data_dir
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def plot(series: dict[str, list[tuple[int, float]]], samples_per_step: int, path: Path) -> Path:
    """Held-out accuracy and mean reward against samples used, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, name, title in (
        (left, "eval_accuracy", "held-out accuracy (greedy)"),
        (right, "reward_mean", "mean reward of sampled answers"),
    ):
        points = series.get(name, [])
        axis.plot([s * samples_per_step for s, _ in points], [v for _, v in points], marker=".")
        axis.set_xlabel("samples used")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def register(api: Client) -> None:
    try:
        api.register_environment(ENVIRONMENT, ENVIRONMENT)
    except ApiError as error:
        if error.status != 409:  # registered by an earlier demo: fine
            raise


def demo(
    url: Annotated[
        str | None,
        typer.Option(help="run against this server instead of starting the embedded one"),
    ] = None,
    token: Token = None,
    steps: Annotated[int, typer.Option(min=1, help="optimiser steps")] = 300,
    algorithm: Annotated[str, typer.Option(help="sdpo or grpo")] = "sdpo",
    data_dir: Annotated[
        Path | None, typer.Option(help="where the embedded service keeps its data")
    ] = None,
) -> None:
    """Train the tiny model on arithmetic by self-distillation through the service."""
    if algorithm not in ("sdpo", "grpo"):
        raise fail(f"--algorithm must be sdpo or grpo, not {algorithm!r}")
    with embedded_server(data_dir) if url is None else _remote(url) as (base, local_dir):
        console.print(f"opsd service at {base}")
        with connect(base, token) as api:
            register(api)
            run = api.create_run(
                ENVIRONMENT,
                model="tiny",
                algorithm=algorithm,
                steps=steps,
                config={"eval": {"every": 25}},
            )
            console.print(
                f"run {run['id']}: {algorithm} on the tiny model, {steps} steps of "
                f"{run['config']['prompts_per_step']} prompts x "
                f"{run['config']['samples_per_prompt']} answers"
            )
            began = time.monotonic()
            code = follow(api, run["id"])
            seconds = time.monotonic() - began
            summarize(api, run["id"], local_dir, seconds)
    raise typer.Exit(code)


@contextmanager
def _remote(url: str) -> Iterator[tuple[str, Path]]:
    yield url, Path.cwd()


def summarize(api: Client, run_id: int, data_dir: Path, seconds: float) -> None:
    run = api.get_run(run_id)
    cfg = run["config"]
    per_step = cfg["prompts_per_step"] * cfg["samples_per_prompt"]
    series = api.run_metrics(run_id)
    checkpoints = api.list_checkpoints(run_id)
    image = plot(series, per_step, data_dir / "runs" / str(run_id) / "progress.png")
    evals = run.get("eval") or {}
    table = Table(
        title=f"run {run_id}: {run['algorithm']} on {run['environment']}", show_header=False
    )
    table.add_row("status", run["status"])
    table.add_row(
        "held-out accuracy", f"{accuracy(evals.get('base'))} -> {accuracy(evals.get('latest'))}"
    )
    if points := series.get("eval_accuracy"):
        step, best = max(points, key=lambda p: p[1])
        table.add_row("best evaluation", f"{best:.3f} at step {step}")
    table.add_row("samples used", f"{run['samples_seen']:,} ({run['steps_done']} steps)")
    table.add_row("time", f"{seconds:.0f} s ({run['steps_done'] / max(seconds, 1e-9):.2f} steps/s)")
    table.add_row("checkpoint", checkpoints[-1]["path"] if checkpoints else "-")
    table.add_row("plot", str(image))
    console.print(table)
    console.print(
        "`opsd serve` then http://127.0.0.1:8000/docs to browse the run's trajectories, "
        "token scores and metrics"
    )
