"""`opsd runs watch`: follow a run's events with a progress bar until it ends.

The bar shows steps done of the total, the latest reward, the latest evaluation
accuracy and the training speed (from the events' own timestamps, so a replay of a
run's history does not count as speed).
"""

from __future__ import annotations

import time
from datetime import datetime

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli_common import console
from service.client import Client, Event, Run

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "stopped": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "stopped")


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class Watch:
    """What the progress bar shows, updated from the run's events."""

    def __init__(self, run: Run) -> None:
        evals = run.get("eval") or {}
        self.status = run["status"]
        self.step = run["steps_done"]
        self.reward: float | None = None
        self.accuracy: float | None = evals.get("latest")
        self.first: tuple[int, datetime] | None = None  # (step, time) of the first step event
        self.rate: float | None = None  # steps per second, from the events' own timestamps

    def update(self, event: Event) -> None:
        payload = event.payload
        if event.kind == "started":
            self.status = "running"
        elif event.kind == "step" and "step" in payload:
            self.status = "running"
            self.step = int(payload["step"])
            metrics = payload.get("metrics") or {}
            self.reward = metrics.get("reward_mean", self.reward)
            self.accuracy = metrics.get("eval_accuracy", self.accuracy)
            self._measure(event)
        elif event.kind == "eval" and payload.get("accuracy") is not None:
            self.accuracy = float(payload["accuracy"])
        elif event.terminal:
            self.status = event.kind

    def _measure(self, event: Event) -> None:
        try:
            at = datetime.fromisoformat(event.created_at or "")
        except ValueError:
            return
        if self.first is None:
            self.first = (self.step, at)
        elif (seconds := (at - self.first[1]).total_seconds()) > 0:
            self.rate = (self.step - self.first[0]) / seconds

    def line(self) -> str:
        parts = [status_text(self.status)]
        if self.reward is not None:
            parts.append(f"reward {self.reward:.3f}")
        parts.append(f"eval {accuracy(self.accuracy)}")
        if self.rate is not None:
            parts.append(f"{self.rate:.2f} steps/s")
        return "  ".join(parts)


def follow(api: Client, run_id: int) -> int:
    """Show a run's progress until it ends; the exit code: 0 only when it completed."""
    run = api.get_run(run_id)
    watch = Watch(run)
    if run["status"] not in TERMINAL_STATUSES:
        progress = Progress(
            TextColumn(f"[bold]run {run_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        last_id: str | None = None
        try:
            with progress:
                bar = progress.add_task("", total=run["steps"], completed=watch.step, status="")
                progress.update(bar, status=watch.line())
                while watch.status not in TERMINAL_STATUSES:
                    for event in api.events(run_id, after=last_id):
                        last_id = event.id or last_id
                        watch.update(event)
                        progress.update(bar, completed=watch.step, status=watch.line())
                    if watch.status not in TERMINAL_STATUSES:  # the stream ended early
                        time.sleep(1.0)
                        watch.status = api.get_run(run_id)["status"]
        except KeyboardInterrupt:
            console.print(f"stopped watching; run {run_id} goes on (`opsd runs watch {run_id}`)")
            return 130
        run = api.get_run(run_id)
    evals = run.get("eval") or {}
    console.print(
        f"run {run_id} {status_text(run['status'])} at step {run['steps_done']}/{run['steps']}; "
        f"eval {accuracy(evals.get('base'))} -> {accuracy(evals.get('latest'))}"
    )
    if run.get("error"):
        console.print(f"[red]{escape(run['error'])}[/red]", soft_wrap=True)
    if run["status"] == "stopped":
        console.print(f"`opsd runs resume {run_id}` continues it")
    return 0 if run["status"] == "completed" else 1
