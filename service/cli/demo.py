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

from service.cli.client import Token, connect
from service.cli.common import console, fail, log_through_console
from service.cli.server import load_settings
from service.cli.watch import INTERRUPTED, accuracy, follow
from service.client import ApiError, Client, Run

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
    log_through_console("warning")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the console too
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


def plot(
    run: Run, series: dict[str, list[tuple[int, float]]], samples_per_step: int, path: Path
) -> Path:
    """Held-out accuracy and mean reward against samples used, as a PNG titled by the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"run {run['id']}: {run['algorithm']} on {run['environment']} with {run['model']}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    fig.suptitle(title)
    for axis, name, axis_title in (
        (left, "eval_accuracy", "held-out accuracy (greedy)"),
        (right, "reward_mean", "mean reward of sampled answers"),
    ):
        points = series.get(name, [])
        axis.plot([s * samples_per_step for s, _ in points], [v for _, v in points], marker=".")
        axis.set_xlabel("samples used")
        axis.set_title(axis_title)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Title": title})
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
    steps: Annotated[int, typer.Option(min=1, help="optimiser steps")] = 150,
    algorithm: Annotated[str, typer.Option(help="sdpo or grpo")] = "sdpo",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="where the embedded service keeps its data [default: ./opsd-data]"),
    ] = None,
) -> None:
    """Train the tiny model on arithmetic by self-distillation through the service."""
    if algorithm not in ("sdpo", "grpo"):
        raise fail(f"--algorithm must be sdpo or grpo, not {algorithm!r}")
    remote = url is not None
    with _remote(url) if remote else embedded_server(data_dir) as (base, local_dir):
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
            code = follow(api, run["id"], interrupted=on_interrupt(run["id"], base, local_dir))
            if code == INTERRUPTED:
                raise typer.Exit(code)
            seconds = time.monotonic() - began
            summarize(api, run["id"], seconds, server=base if remote else None, data_dir=local_dir)
    raise typer.Exit(code)


def on_interrupt(run_id: int, base: str, data_dir: Path | None) -> str:
    """What Ctrl-C leaves behind: with the embedded service the run pauses with this
    command and carries on under `opsd serve` on the same data folder."""
    if data_dir is None:
        return (
            f"stopped watching; run {run_id} goes on at {base} "
            f"(`opsd runs watch {run_id} --url {base}`)"
        )
    return (
        f"stopped: the embedded service ends with the demo, so run {run_id} pauses at its "
        f"last checkpoint; `OPSD_DATA_DIR={data_dir} opsd serve` carries it on "
        f"(then `opsd runs watch {run_id}`)"
    )


@contextmanager
def _remote(url: str) -> Iterator[tuple[str, None]]:
    yield url, None


def summarize(
    api: Client, run_id: int, seconds: float, *, server: str | None, data_dir: Path | None
) -> None:
    """The run's outcome. `server`: the URL of a server elsewhere (its paths are on that
    machine); else the embedded service, whose data is under `data_dir` here."""
    run = api.get_run(run_id)
    cfg = run["config"]
    per_step = cfg["prompts_per_step"] * cfg["samples_per_prompt"]
    series = api.run_metrics(run_id)
    checkpoints = api.list_checkpoints(run_id)
    if data_dir is not None:
        image = data_dir / "runs" / str(run_id) / "progress.png"
    else:
        image = Path(f"opsd-demo-run-{run_id}.png")
    image = plot(run, series, per_step, image.absolute())
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
    console.print(table)
    # Paths on lines of their own, unwrapped, to copy; each says which machine holds it.
    checkpoint = checkpoints[-1]["path"] if checkpoints else "-"
    if server is None:
        if checkpoints:
            checkpoint = str(Path(checkpoint).absolute())
        paths = {"checkpoint": checkpoint, "plot": str(image)}
        hint = f"`OPSD_DATA_DIR={data_dir} opsd serve`, then http://127.0.0.1:8000/runs/{run['id']}"
    else:
        paths = {f"checkpoint (on the server, {server})": checkpoint}
        paths["plot (on this machine)"] = str(image)
        hint = f"{server}/runs/{run['id']}"
    for name, path in paths.items():
        console.print(f"{name}: {path}", soft_wrap=True, highlight=False)
    console.print(
        f"{hint} to see the run in the dashboard: its curves, trajectories and token scores",
        soft_wrap=True,
    )
