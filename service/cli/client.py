"""`opsd envs list|register` and `opsd runs ...`: the command line over the HTTP API.

Every command takes `--url` (env OPSD_URL) and `--token` (env OPSD_API_TOKEN) and talks
to a running `opsd serve` through `service.client.Client`. A refusal from the server
prints `error: <message>` and exits with 2; so does a server that is not there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from service.cli.common import console, fail, load_config_file
from service.cli.watch import EXIT_CODES_HELP, accuracy, follow, status_text
from service.client import DEFAULT_URL, ApiError, Client, Run, ServerUnreachable

runs_app = typer.Typer(
    help="Start, follow and steer training runs on a server.", no_args_is_help=True
)

Url = Annotated[str, typer.Option("--url", envvar="OPSD_URL", help="the opsd server")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="OPSD_API_TOKEN", help="bearer token", show_default=False),
]
RunId = Annotated[int, typer.Argument(help="run id")]


def describe(error: ApiError) -> str:
    """The server's message, with the first validation problems and a hint for 401."""
    message = error.message
    details = error.details
    if isinstance(details, dict):  # {"errors": [...]} or the list itself
        details = details.get("errors", details)
    if isinstance(details, list):
        problems = [
            f"{'.'.join(str(p) for p in d['loc'] if p != 'body')}: {d['msg']}"
            for d in details[:3]
            if isinstance(d, dict) and "loc" in d and "msg" in d
        ]
        if problems:
            message += " (" + "; ".join(problems) + ")"
    if error.status == 401:
        message += " (pass --token or set OPSD_API_TOKEN)"
    return message


@contextmanager
def connect(url: str, token: str | None) -> Iterator[Client]:
    """A client whose errors end the command cleanly (`error: ...`, exit code 2)."""
    client = Client(url, token)
    try:
        yield client
    except ServerUnreachable as exc:
        raise fail(f"{exc}; start one with `opsd serve`, or point --url / OPSD_URL at one") from exc
    except ApiError as exc:
        raise fail(describe(exc)) from exc
    finally:
        client.close()


def when(timestamp: str | None, form: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An ISO timestamp from the server, shortened for people."""
    if not timestamp:
        return "-"
    try:
        return datetime.fromisoformat(timestamp).strftime(form)
    except ValueError:
        return timestamp


# -- environments -------------------------------------------------------------------


def envs_list(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """List the environments the server knows: built-in kinds and registered ones."""
    with connect(url, token) as api:
        items = api.list_environments()
    table = Table(title=f"environments on {url}", box=box.SIMPLE_HEAD)
    for column in ("name", "kind", "registered", "description", "config"):
        table.add_column(column, overflow="fold")
    for env in items:
        config = json.dumps(env.get("config") or {}, sort_keys=True)
        registered = "yes" if env.get("registered") else "no (a kind)"
        cells = (env["name"], env["kind"], registered, env.get("description") or "", config)
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)


def envs_register(
    name: Annotated[str, typer.Argument(help="name runs will refer to")],
    kind: Annotated[str, typer.Option(help="environment kind, e.g. arithmetic or code")],
    config: Annotated[
        str | None, typer.Option(help="config as JSON, or @file (.json or .toml)")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Register an environment: a kind with its configuration, under a name."""
    env_config = parse_json_or_file(config, "--config") if config else {}
    with connect(url, token) as api:
        env = api.register_environment(name, kind, env_config)
    console.print(
        f"registered environment [bold]{escape(env['name'])}[/bold] ({escape(env['kind'])})"
    )


def parse_json_or_file(value: str, flag: str) -> dict[str, Any]:
    """`{"a": 1}` or `@path.json` / `@path.toml`: a JSON object either way."""
    if value.startswith("@"):
        parsed: Any = load_config_file(Path(value[1:]))
    else:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise fail(f"{flag} is not JSON (or @file): {exc}") from exc
    if not isinstance(parsed, dict):
        raise fail(f"{flag} must be a JSON object")
    return parsed


# -- runs ---------------------------------------------------------------------------


@runs_app.command("create", epilog=f"With --watch: {EXIT_CODES_HELP}")
def runs_create(
    env: Annotated[str, typer.Option(help="environment name")],
    model: Annotated[
        str, typer.Option(help="`tiny`, `tiny-tools`, a model directory or a hub name")
    ] = "tiny",
    algorithm: Annotated[str, typer.Option(help="sdpo (self-distillation) or grpo")] = "sdpo",
    steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
    config: Annotated[
        Path | None, typer.Option(help="RunConfig overrides as JSON or TOML (nested)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="any config field, e.g. --set loss.distill.alpha=0.5"),
    ] = None,
    watch: Annotated[
        bool, typer.Option(help="follow the run until it ends, as `opsd runs watch` does")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Start a training run on the server (it is queued until a trainer takes it)."""
    from trainer.presets import merge, parse_assignment

    overrides: dict[str, Any] = load_config_file(config) if config else {}
    try:
        for assignment in set_ or []:
            overrides = merge(overrides, parse_assignment(assignment))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    with connect(url, token) as api:
        run = api.create_run(
            env,
            model=model,
            algorithm=algorithm,
            steps=steps,
            config=overrides,  # type: ignore[arg-type]
        )
        console.print(
            f"run [bold]{run['id']}[/bold] {status_text(run['status'])}: {run['algorithm']} "
            f"on {escape(run['environment'])} with {escape(run['model'])}, {run['steps']} steps"
        )
        code = follow(api, run["id"]) if watch else 0
    raise typer.Exit(code)


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="only runs with this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many runs")] = 20,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List runs, newest first."""
    with connect(url, token) as api:
        runs = []
        for run in api.iter_runs(status=status, page_size=min(limit, 100)):
            if len(runs) >= limit:
                break
            runs.append(run)
    table = Table(title=f"runs on {url}" + (f" ({status})" if status else ""), box=box.SIMPLE_HEAD)
    for column in ("id", "status", "env", "model", "algo", "steps", "eval", "created"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("env", "model"))
    for run in runs:
        evals = run.get("eval") or {}
        table.add_row(
            str(run["id"]),
            status_text(run["status"]),
            Text(run["environment"]),
            Text(run["model"]),
            run["algorithm"],
            f"{run['steps_done']}/{run['steps']}",
            f"{accuracy(evals.get('base'))}→{accuracy(evals.get('latest'))}",
            when(run.get("created_at"), "%m-%d %H:%M"),
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: RunId,
    as_json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show a run: status, progress, evaluation, checkpoints and its latest metrics."""
    with connect(url, token) as api:
        run = api.get_run(run_id)
        series = api.run_metrics(run_id)
        checkpoints = api.list_checkpoints(run_id)
    if as_json:
        typer.echo(json.dumps(run, indent=2))
        return
    evals = run.get("eval") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        f"run {run['id']}",
        f"{status_text(run['status'])}  {run['algorithm']} on {escape(run['environment'])} "
        f"with {escape(run['model'])}",
    )
    pct = 100 * run["steps_done"] / run["steps"] if run["steps"] else 0.0
    grid.add_row(
        "progress",
        f"{run['steps_done']}/{run['steps']} steps ({pct:.0f}%), policy version "
        f"{run.get('policy_version', 0)}, {run.get('samples_seen', 0)} samples",
    )
    latest_step = evals.get("latest_step")
    at = f" (step {latest_step})" if latest_step is not None else ""
    grid.add_row(
        "eval", f"base {accuracy(evals.get('base'))} -> latest {accuracy(evals.get('latest'))}{at}"
    )
    grid.add_row("created", f"{when(run.get('created_at'))}, updated {when(run.get('updated_at'))}")
    if run.get("error"):
        if run["status"] == "stopped":  # a guard's reason
            grid.add_row("stopped", f"[yellow]{escape(run['error'])}[/yellow]")
        else:
            grid.add_row("error", f"[red]{escape(run['error'])}[/red]")
    grid.add_row("checkpoints", "-" if checkpoints else "none yet")
    for checkpoint in checkpoints:  # paths on the server's machine
        mark = ""
        if checkpoint.get("eval_accuracy") is not None:
            mark = f"  eval {accuracy(checkpoint['eval_accuracy'])}"
        if checkpoint.get("best"):
            mark += "  best"
        grid.add_row(Text(f"  step {checkpoint['step']}"), Text(checkpoint["path"] + mark))
    for name, points in sorted(series.items()):
        if points:
            step, value = points[-1]
            grid.add_row(Text(f"  {name}"), f"{value:.4g} (step {step})")
    console.print(grid)


@runs_app.command("watch", epilog=EXIT_CODES_HELP)
def runs_watch(run_id: RunId, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Follow a run from where it is until it ends (a bar on a terminal, plain lines in a
    pipe or log file); the exit code says how it ended."""
    with connect(url, token) as api:
        code = follow(api, run_id)
    raise typer.Exit(code)


@runs_app.command("download")
def runs_download(
    run_id: RunId,
    out: Annotated[Path, typer.Option(help="the tar file to write")],
    step: Annotated[
        int | None, typer.Option(help="the checkpoint's step (default: the best, else the last)")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download a checkpoint of a run as a tar of its model directory (loadable with
    `AutoModelForCausalLM.from_pretrained` once unpacked)."""
    with connect(url, token) as api:
        if step is None:
            checkpoints = api.list_checkpoints(run_id)
            if not checkpoints:
                raise fail(f"run {run_id} has no checkpoint yet")
            best = [c for c in checkpoints if c.get("best")]
            step = (best or checkpoints)[-1]["step"]
        api.download_checkpoint(run_id, step, out)
    console.print(f"run {run_id}: checkpoint of step {step} -> {out}")


def _transition(action: str, run_id: int, url: str, token: str | None) -> None:
    with connect(url, token) as api:
        run: Run = getattr(api, f"{action}_run")(run_id)
    console.print(f"run {run['id']}: {status_text(run['status'])}")


@runs_app.command("stop")
def runs_stop(run_id: RunId, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Stop a run after its current step (`resume` continues it)."""
    _transition("stop", run_id, url, token)


@runs_app.command("resume")
def runs_resume(run_id: RunId, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Resume a stopped run from its last checkpoint."""
    _transition("resume", run_id, url, token)


@runs_app.command("cancel")
def runs_cancel(run_id: RunId, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a run for good."""
    _transition("cancel", run_id, url, token)
