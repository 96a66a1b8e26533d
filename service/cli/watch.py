"""`opsd runs watch`: follow a run from its current state until it ends.

On a terminal the command shows a progress bar: steps done of the total, the latest
reward, the latest evaluation accuracy and the training speed (from the events' own
timestamps, so a replay of a run's history does not count as speed). Into a pipe or a
log file it prints one plain line per evaluation, and otherwise one every
`LINE_EVERY_S` seconds while the run moves.

A run's recorded events are read from the start and folded into its state, so a
`stopped` event that a `resumed` and a new `started` followed is history, not the end.
The run has ended when the server closes the event stream and the run itself is in
one of `EXIT_CODES`' states; the exit code says which.
"""

from __future__ import annotations

import time
from datetime import datetime

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli.common import console
from service.client import Client, Event, Run

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "stopped": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
# How a watched run ended -> the command's exit code (2 is the command's own error:
# a bad flag, no server, an unknown run).
EXIT_CODES = {"completed": 0, "failed": 1, "stopped": 3, "cancelled": 4}
INTERRUPTED = 130  # Ctrl-C: the watch stopped, not the run
EXIT_CODES_HELP = (
    "Exit code: 0 completed, 1 failed, 3 stopped (`opsd runs resume` continues it), "
    "4 cancelled, 2 the command's own error, 130 interrupted."
)
LINE_EVERY_S = 10.0  # plain output: at most one line this often between evaluations
RECONNECT_S = 1.0  # the stream ended while the run goes on: look again after this


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class Watch:
    """The run's state as its events tell it, oldest first."""

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
            self.first = self.rate = None  # measure the speed from this start on
        elif event.kind == "resumed":
            self.status = str(payload.get("status", "queued"))
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


class Bar:
    """On a terminal: one live progress bar."""

    def __init__(self, run: Run, watch: Watch) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]run {run['id']}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(
            "", total=run["steps"], completed=watch.step, status=watch.line()
        )

    def __enter__(self) -> Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, watch: Watch, event: Event) -> None:
        self.progress.update(self.task, completed=watch.step, status=watch.line())


class Lines:
    """Into a pipe or a log file: a plain line per evaluation, else one every LINE_EVERY_S
    seconds while the run moves; evaluations older than the watch are not repeated."""

    def __init__(self, run: Run, watch: Watch) -> None:
        self.run_id, self.total, self.watch = run["id"], run["steps"], watch
        self.since_step = watch.step  # evaluations before this step are history
        self.shown: tuple[str, int] | None = None
        self.at = 0.0

    def __enter__(self) -> Lines:
        self.print(self.watch)  # where the run is as the watch begins
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown != (self.watch.status, self.watch.step):
            self.print(self.watch)  # where it ended

    def print(self, watch: Watch) -> None:
        console.print(
            f"run {self.run_id}: step {watch.step}/{self.total}  {watch.line()}",
            soft_wrap=True,
            highlight=False,
        )
        self.shown, self.at = (watch.status, watch.step), time.monotonic()

    def show(self, watch: Watch, event: Event) -> None:
        new_eval = event.kind == "eval" and int(event.payload.get("step", -1)) >= self.since_step
        moved = self.shown != (watch.status, watch.step)
        if new_eval or (moved and time.monotonic() - self.at >= LINE_EVERY_S):
            self.print(watch)


def follow(api: Client, run_id: int, interrupted: str | None = None) -> int:
    """Show a run's progress until it ends; the exit code (EXIT_CODES) says how it ended.

    `interrupted`: what to print on Ctrl-C (by default, that the run goes on).
    """
    run = api.get_run(run_id)
    if run["status"] not in EXIT_CODES:
        watch = Watch(run)
        view = Bar(run, watch) if console.is_terminal else Lines(run, watch)
        try:
            with view:
                run = _until_ended(api, run_id, watch, view)
        except KeyboardInterrupt:
            console.print(
                interrupted
                or f"stopped watching; run {run_id} goes on (`opsd runs watch {run_id}`)",
                soft_wrap=True,
            )
            return INTERRUPTED
    evals = run.get("eval") or {}
    console.print(
        f"run {run_id} {status_text(run['status'])} at step {run['steps_done']}/{run['steps']}; "
        f"eval {accuracy(evals.get('base'))} -> {accuracy(evals.get('latest'))}"
    )
    if run.get("error"):
        color = "yellow" if run["status"] == "stopped" else "red"  # stopped: a guard's reason
        console.print(f"[{color}]{escape(run['error'])}[/{color}]", soft_wrap=True)
    if run["status"] == "stopped":
        console.print(f"`opsd runs resume {run_id}` continues it")
    return EXIT_CODES[run["status"]]


def _until_ended(api: Client, run_id: int, watch: Watch, view: Bar | Lines) -> Run:
    """Fold the run's events into `watch` until the stream ends with the run ended."""
    last_id: str | None = None
    while True:
        for event in api.events(run_id, after=last_id):
            last_id = event.id or last_id
            watch.update(event)
            view.show(watch, event)
        run = api.get_run(run_id)
        if run["status"] in EXIT_CODES:
            return run
        # The stream ended while the run goes on (it was resumed just after a stop, or
        # the connection closed): follow on from the last event seen.
        time.sleep(RECONNECT_S)
