"""The `opsd` command line: offline training, the tiny model, the sandbox and environments.

The service's processes (`serve`, `worker`, `db`) live in service/cli/server.py and the
commands that talk to a server (`envs list|register`, `runs ...`) in service/cli/client.py;
all are registered here.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.cli import client, demo, launch, server

if TYPE_CHECKING:
    from trainer.config import RunConfig
from service.cli.common import (
    console,
    fail,
    load_config_file,
    log_through_console,
    quiet_libraries,
)

app = typer.Typer(
    help="opsd: on-policy self-distillation from environment feedback.", no_args_is_help=True
)
tiny_app = typer.Typer(
    help="The tiny character-level model shipped with opsd.", no_args_is_help=True
)
app.add_typer(tiny_app, name="tiny-model")


@app.callback()
def main() -> None:
    """No per-file progress bars from Hugging Face libraries ("Loading weights", downloads)
    in any command's output: opsd draws its own. Set before they are imported, which is
    when they read it; a caller's own setting wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a caller's own process)
        quiet_libraries()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
def train(
    out: Annotated[
        Path, typer.Option(help="run directory: metrics.jsonl, summary.json, checkpoints")
    ],
    env: Annotated[str | None, typer.Option(help="environment name")] = None,
    model: Annotated[
        str | None, typer.Option(help="`tiny`, `tiny-tools`, a model directory or a hub name")
    ] = None,
    algorithm: Annotated[str, typer.Option(help="sdpo (self-distillation) or grpo")] = "sdpo",
    steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    config: Annotated[Path | None, typer.Option(help="RunConfig as JSON or TOML")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="any config field, e.g. --set loss.distill.alpha=0.5"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="also checkpoint every N steps")
    ] = None,
    nproc_per_node: launch.NprocOption = None,
) -> None:
    """Train a policy on an environment in this process (no server needed), or in
    several (`--nproc-per-node`, or started by torchrun)."""
    from trainer.loop import train as run_training
    from trainer.presets import merge

    overrides: dict[str, Any] = load_config_file(config) if config else {}
    flags = {"env": env, "model": model, "steps": steps, "seed": seed}
    overrides = merge(overrides, {k: v for k, v in flags.items() if v is not None})
    if lr is not None:
        overrides = merge(overrides, {"optim": {"lr": lr}})
    cfg = checked_config(algorithm, overrides, set_)

    if nproc_per_node is not None:
        launch.relaunch(nproc_per_node)
        summary = json.loads((out / "summary.json").read_text())
        print_summary(summary)
        return
    from trainer.distributed import join_world, leave_world

    if not join_world().is_main:  # started by torchrun: the main process reports
        run_training(cfg, out, device=device, checkpoint_every=checkpoint_every)
        leave_world()
        return
    log_through_console("warning")
    console.print(
        f"[bold]opsd train[/bold] {cfg.algorithm} on {cfg.env} with {cfg.model}, {cfg.steps} steps -> {out}"
    )
    with progress_bar() as progress:
        bar = progress.add_task("training", total=cfg.steps, status="evaluating base model")
        state = {"acc": None}

        def on_step(record: dict) -> None:
            if "eval_accuracy" in record:
                state["acc"] = record["eval_accuracy"]
            acc = "-" if state["acc"] is None else f"{state['acc']:.3f}"
            reward = record.get("reward_mean")
            status = f"reward {reward:.2f}  eval {acc}" if reward is not None else f"eval {acc}"
            progress.update(bar, completed=record["step"], status=status)

        summary = run_training(
            cfg, out, on_step=on_step, device=device, checkpoint_every=checkpoint_every
        )
    leave_world()
    print_summary(summary)


def print_summary(summary: dict) -> None:
    processes = f" in {summary['world_size']} processes" if summary["world_size"] > 1 else ""
    console.print(
        f"eval accuracy {summary['base_eval_accuracy']:.3f} -> [bold]{summary['final_eval_accuracy']:.3f}[/bold] "
        f"with {summary['samples_seen']} samples in {summary['wall_seconds']:.0f}s{processes}; checkpoint {summary['checkpoint']}"
    )
    if summary["stopped"] is not None:
        console.print(f"[bold yellow]stopped[/bold yellow]: {summary['stopped']['reason']}")
    if summary["best_checkpoint"] is not None:
        console.print(
            f"best: {summary['best_eval_accuracy']:.3f} at step {summary['best_step']}, "
            f"checkpoint {summary['best_checkpoint']}"
        )


@app.command()
def probe(
    env: Annotated[str, typer.Option(help="environment name")] = "arithmetic",
    model: Annotated[
        str, typer.Option(help="`tiny`, `tiny-tools`, a model directory or a hub name")
    ] = "tiny",
    groups: Annotated[int, typer.Option(help="tasks sampled, one group each")] = 4,
    n: Annotated[int | None, typer.Option("-n", help="responses per task (a group)")] = None,
    config: Annotated[Path | None, typer.Option(help="RunConfig as JSON or TOML")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="any config field, e.g. --set sampling.max_new_tokens=64"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Measure, before any training, how far the teacher reading the environment's feedback
    is from the student: a few groups sampled and scored, the teacher-student gap, the share
    of samples with a teacher signal and the base reward (the routine behind
    `POST /v1/environments/{name}/probe`)."""
    from dataclasses import asdict

    from trainer.presets import merge
    from trainer.probe import probe as run_probe

    overrides: dict[str, Any] = load_config_file(config) if config else {}
    overrides = merge(overrides, {"env": env, "model": model})
    if n is not None:
        overrides = merge(overrides, {"samples_per_prompt": n})
    cfg = checked_config("sdpo", overrides, set_)
    log_through_console("warning")
    with console.status(f"probing {cfg.env} with {cfg.model}"):
        try:
            report = run_probe(cfg, groups, device=device)
        except ValueError as exc:
            raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    gap = "-" if report.teacher_gap is None else f"{report.teacher_gap:.4f}"
    entropy = "-" if report.entropy is None else f"{report.entropy:.3f}"
    console.print(
        f"[bold]{report.env}[/bold] with {report.model}, {report.groups} groups x "
        f"{report.samples_per_prompt} samples:\n"
        f"  teacher gap     [bold]{gap}[/bold] nats per token (KL of student to teacher)\n"
        f"  teacher signal  {report.teacher_signal_frac:.0%} of samples\n"
        f"  base reward     {report.reward_mean:.3f} ({report.ok_fraction:.0%} ok)\n"
        f"  entropy         {entropy} nats per token\n"
        f"  response        {report.response_tokens_mean:.1f} tokens, "
        f"{report.truncated_frac:.0%} truncated"
    )
    if report.teacher_signal_frac == 0:
        console.print(
            "no sample got a teacher signal (no feedback, no successful sibling): "
            "self-distillation has nothing to learn from here"
        )


def checked_config(
    algorithm: str, overrides: dict[str, Any], assignments: list[str] | None
) -> RunConfig:
    """The preset of `algorithm` with `overrides` and the `--set` `assignments` on top,
    checked (check_inputs); anything wrong with it is a usage error, not a traceback."""
    from envs.registry import InvalidEnvConfig, UnknownEnvironment
    from trainer.model import ModelNotFound
    from trainer.presets import merge, parse_assignment, preset

    try:
        for assignment in assignments or []:
            overrides = merge(overrides, parse_assignment(assignment))
        cfg = preset(algorithm, overrides)  # type: ignore[arg-type]
        check_inputs(cfg)
    except (
        ValueError,
        ValidationError,
        UnknownEnvironment,
        InvalidEnvConfig,
        ModelNotFound,
    ) as exc:
        raise fail(str(exc)) from exc
    return cfg


def check_inputs(cfg: RunConfig) -> None:
    """The environment, its configuration and the model exist, before anything is written
    or loaded: UnknownEnvironment, InvalidEnvConfig or ModelNotFound otherwise."""
    from envs.registry import InvalidEnvConfig, env_class
    from trainer.model import resolve_model

    try:
        env_class(cfg.env).Config.model_validate(cfg.env_config)
    except ValidationError as exc:
        raise InvalidEnvConfig(f"invalid config for environment {cfg.env!r}: {exc}") from exc
    resolve_model(cfg.model)


class TinyTask(StrEnum):
    arithmetic = "arithmetic"
    tools = "tools"


@tiny_app.command("build")
def tiny_build(
    task: Annotated[
        TinyTask,
        typer.Option(
            help="`arithmetic` builds `tiny`; `tools` builds `tiny-tools` on top of `tiny`"
        ),
    ] = TinyTask.arithmetic,
    out: Annotated[
        Path | None,
        typer.Option(help="output directory (default: the packaged `tiny` / `tiny-tools`)"),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="pretraining steps (tools: the cap of each phase)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build and pretrain a tiny model (a few minutes on a CPU)."""
    from tiny.build import build_tiny_model
    from tiny.pretrain import PretrainConfig
    from tiny.tools import ToolPretrainConfig
    from trainer.model import TINY_MODEL_DIR, TINY_TOOLS_MODEL_DIR

    quiet_libraries()
    if task is TinyTask.tools:
        if not (TINY_MODEL_DIR / "config.json").exists():
            raise typer.BadParameter("`tiny` is not built yet: run `opsd tiny-model build` first")
        cfg = ToolPretrainConfig(seed=seed)
        total = sum(p.steps if steps is None else min(p.steps, steps) for p in cfg.phases)
        target = out or TINY_TOOLS_MODEL_DIR
    else:
        cfg = PretrainConfig(seed=seed) if steps is None else PretrainConfig(steps=steps, seed=seed)
        total = cfg.steps
        target = out or TINY_MODEL_DIR
    with progress_bar() as progress:
        bar = progress.add_task("pretraining", total=total, status="")
        build_tiny_model(
            target,
            cfg,
            on_step=lambda s, loss: progress.update(
                bar, completed=s + 1, status=f"loss {loss:.3f}"
            ),
            task=task.value,
            max_steps=steps if task is TinyTask.tools else None,
        )
        progress.update(bar, completed=total, status="done")  # a phase may stop early
    console.print(f"tiny {task.value} model written to {target}")


sandbox_app = typer.Typer(help="Run programs in the sandbox.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
envs_app = typer.Typer(
    help="Environments: try one here; list and register them on a server.", no_args_is_help=True
)
app.add_typer(envs_app, name="envs")
envs_app.command("list")(client.envs_list)
envs_app.command("register")(client.envs_register)
app.add_typer(client.runs_app, name="runs")
app.command()(server.serve)
app.command()(server.worker)
app.command()(demo.demo)
app.add_typer(server.db_app, name="db")


@sandbox_app.command("run")
def sandbox_run(
    file: Annotated[Path, typer.Argument(help="a Python program")],
    stdin: Annotated[Path | None, typer.Option(help="file to give the program on stdin")] = None,
    backend: Annotated[str, typer.Option(help="bwrap, docker or process (UNSAFE)")] = "bwrap",
    timeout: Annotated[float, typer.Option(help="wall-clock seconds (also the CPU limit)")] = 10.0,
    memory_mb: Annotated[int, typer.Option(help="memory limit in MiB")] = 512,
) -> None:
    """Run FILE in the sandbox and print its execution record as JSON."""
    import asyncio

    from sandbox import Limits, Program, SandboxError, make_sandbox, unavailable

    for path in (file, stdin):
        if path is not None and not path.is_file():
            raise fail(f"file {path} does not exist")
    try:
        why = unavailable(backend)
        limits = Limits(wall_seconds=timeout, cpu_seconds=timeout, memory_bytes=memory_mb << 20)
    except (SandboxError, ValidationError) as exc:
        raise fail(str(exc)) from exc
    if why:
        raise fail(f"sandbox backend {backend!r} is unavailable: {why}")
    program = Program(
        command=["python3", file.name],
        files={file.name: file.read_bytes()},
        stdin=stdin.read_bytes() if stdin else b"",
    )

    async def run_once():
        async with make_sandbox(backend, workers=1, limits=limits) as box:
            return await box.run(program, limits)

    try:
        record = asyncio.run(run_once())
    except SandboxError as exc:
        raise fail(f"sandbox backend {backend!r} failed: {exc}") from exc
    typer.echo(record.model_dump_json(indent=2))


@envs_app.command("try")
def envs_try(
    name: Annotated[str, typer.Argument(help="environment name")],
    model: Annotated[
        str, typer.Option(help="`tiny`, `tiny-tools`, a model directory or a hub name")
    ] = "tiny",
    n: Annotated[int, typer.Option("-n", help="responses per task")] = 4,
    tasks: Annotated[int, typer.Option(help="tasks from the train split")] = 2,
    config: Annotated[str | None, typer.Option(help="environment config as JSON")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per response")] = 64,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda ... (default: cuda if present)")
    ] = None,
) -> None:
    """Sample a few responses with a policy and show how the environment scores them
    (the routine behind `POST /v1/environments/{name}/try`)."""
    from rich.table import Table

    from envs.registry import InvalidEnvConfig, UnknownEnvironment, make_env
    from service.environments.service import try_environment
    from trainer.model import ModelNotFound, load_policy, pick_device

    try:
        env_config = json.loads(config) if config else {}
        env = make_env(name, env_config)
        policy, tokenizer = load_policy(model, device=pick_device(device))
    except json.JSONDecodeError as exc:
        raise fail(f"--config is not JSON: {exc}") from exc
    except (UnknownEnvironment, InvalidEnvConfig, ModelNotFound, ValueError) as exc:
        raise fail(str(exc)) from exc
    tried = try_environment(
        env, policy, tokenizer, tasks=tasks, samples_per_prompt=n, max_new_tokens=max_new_tokens
    )
    shown = len({t.task_id for t in tried})
    table = Table(title=f"{name}: {shown} tasks x {n} responses from {model}")
    for column in ("task", "response", "reward", "verdict", "feedback"):
        table.add_column(column, overflow="fold")
    for t in tried:
        clipped = t.response if len(t.response) <= 200 else t.response[:200] + "..."
        table.add_row(t.task_id, clipped, f"{t.reward:.2f}", t.verdict, t.feedback or "")
    console.print(table)
