"""The server-facing commands: `opsd envs list|register`, `opsd runs ...`, `serve`, `worker`, `db`.

A real server (create_app on SQLite, background=False so that nothing trains) listens
on a free port in a thread; the commands run through typer's CliRunner against it.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from service.cli import app
from service.settings import Settings
from service.storage import Repository, RunStatus, make_engine, make_sessionmaker
from service.storage import models as orm
from service.storage.migrate import upgrade

from .conftest import REDIS_URL, delete_prefix
from .live import LiveServer
from .records import set_status

runner = CliRunner()
TOKEN = "s3cret-token"
OPSD = str(Path(sys.executable).with_name("opsd"))  # the installed command


def lines_of(process: subprocess.Popen) -> queue.Queue:
    """The process's output lines as they come (None after the last)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


class Server(LiveServer):
    """A migrated database behind a live server that trains nothing."""

    def __init__(self, settings: Settings) -> None:
        upgrade(settings.database_url)
        super().__init__(settings)

    def repo(self) -> Repository:
        return Repository(make_sessionmaker(make_engine(self.settings.database_url)))


def settings_for(tmp: Path, **fields) -> Settings:
    return Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'opsd.db'}", **fields)


@pytest.fixture(autouse=True)
def no_opsd_environment(monkeypatch):
    """The caller's OPSD_* variables must not leak into the commands under test."""
    for name in ("OPSD_URL", "OPSD_API_TOKEN", "OPSD_REDIS_URL", "OPSD_HOST", "OPSD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with Server(settings_for(tmp_path_factory.mktemp("server"))) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Server]:
    with Server(settings_for(tmp_path_factory.mktemp("guarded"), api_token=TOKEN)) as running:
        yield running


def opsd(*args: str, url: str | None = None):
    return runner.invoke(app, [*args, *(["--url", url] if url else [])])


def text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not an escaped error
    assert "Traceback" not in result.output
    assert text(result).startswith("error:")
    for fragment in fragments:
        assert fragment in text(result)


def create_run(server: Server, *extra: str) -> int:
    args = ["runs", "create", "--env", "arithmetic", "--steps", "3", *extra]
    result = opsd(*args, url=server.url)
    assert result.exit_code == 0, result.output
    assert "queued" in text(result)
    return int(text(result).split()[1])  # "run <id> queued: ..."


# -- environments -------------------------------------------------------------------


def test_envs_list_shows_the_built_in_environments(server):
    result = opsd("envs", "list", url=server.url)

    assert result.exit_code == 0, result.output
    assert "arithmetic" in result.output and "code" in result.output


def test_envs_register_adds_an_environment_and_a_duplicate_fails_cleanly(server):
    register = ("envs", "register", "small-sums", "--kind", "arithmetic")
    first = opsd(*register, "--config", '{"eval_size": 8}', url=server.url)
    again = opsd(*register, url=server.url)
    listed = opsd("envs", "list", url=server.url)

    assert first.exit_code == 0, first.output
    assert "registered environment small-sums" in text(first)
    assert_clean_failure(again, "small-sums")
    assert "small-sums" in listed.output


def test_envs_register_reads_the_config_from_a_toml_file(server, tmp_path):
    config = tmp_path / "env.toml"
    config.write_text("eval_size = 4\n")

    result = opsd(
        "envs", "register", "from-file", "--kind", "arithmetic", "--config", f"@{config}",
        url=server.url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output


def test_envs_register_with_a_bad_config_fails_cleanly(server):
    not_json = opsd("envs", "register", "x", "--kind", "arithmetic", "--config", "{")
    unknown_kind = opsd("envs", "register", "y", "--kind", "no-such-kind", url=server.url)

    assert_clean_failure(not_json, "--config is not JSON")
    assert_clean_failure(unknown_kind, "no-such-kind")


# -- runs ---------------------------------------------------------------------------


def test_runs_create_queues_a_run_that_list_and_show_report(server):
    run_id = create_run(server, "--algorithm", "grpo", "--set", "optim.lr=0.001")

    listed = opsd("runs", "list", url=server.url)
    queued = opsd("runs", "list", "--status", "queued", url=server.url)
    shown = opsd("runs", "show", str(run_id), url=server.url)
    as_json = opsd("runs", "show", str(run_id), "--json", url=server.url)

    assert listed.exit_code == 0 and queued.exit_code == 0, listed.output + queued.output
    assert str(run_id) in listed.output and "queued" in queued.output
    assert shown.exit_code == 0, shown.output
    assert f"run {run_id}" in text(shown) and "queued" in text(shown)
    assert "0/3 steps" in text(shown) and "grpo on arithmetic" in text(shown)
    assert '"algorithm": "grpo"' in as_json.output
    assert '"lr": 0.001' in as_json.output


def test_runs_show_lists_the_checkpoints_of_the_run(server):
    run_id = create_run(server)
    repo = server.repo()
    paths = [server.settings.run_dir(run_id) / f"step-00000{step}" for step in (1, 2)]
    for step, path in enumerate(paths, start=1):
        repo.add_checkpoint(run_id, step, str(path))
    repo.add_evaluation(run_id, 1, 0.5)
    repo.add_evaluation(run_id, 2, 0.25)

    shown = opsd("runs", "show", str(run_id), url=server.url)
    fresh = opsd("runs", "show", str(create_run(server)), url=server.url)

    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.split()) for line in shown.output.splitlines()]
    assert "checkpoints -" in lines
    assert f"step 1 {paths[0]} eval 0.500 best step 2 {paths[1]} eval 0.250 " in text(shown)
    assert "checkpoints none yet" in text(fresh)


def test_runs_show_gives_the_reason_a_guard_stopped_the_run(server):
    run_id = create_run(server)
    set_status(server.repo(), run_id, RunStatus.stopped, "entropy stayed below 0.1")

    shown = opsd("runs", "show", str(run_id), url=server.url)

    assert shown.exit_code == 0, shown.output
    assert "stopped entropy stayed below 0.1" in text(shown)


def test_runs_download_writes_the_best_checkpoint_or_the_step_asked_for(server, tmp_path):
    run_id = create_run(server)
    repo = server.repo()
    for step, accuracy_at in ((2, 0.6), (4, 0.2)):
        directory = server.settings.run_dir(run_id) / f"step-00000{step}"
        directory.mkdir(parents=True)
        (directory / "config.json").write_text(f'{{"step": {step}}}')
        repo.add_checkpoint(run_id, step, str(directory))
        repo.add_evaluation(run_id, step, accuracy_at)

    best = opsd("runs", "download", str(run_id), "--out", str(tmp_path / "b.tar"), url=server.url)
    asked = opsd(
        "runs",
        "download",
        str(run_id),
        "--step",
        "4",
        "--out",
        str(tmp_path / "4.tar"),
        url=server.url,
    )
    missing = opsd(
        "runs",
        "download",
        str(run_id),
        "--step",
        "3",
        "--out",
        str(tmp_path / "3.tar"),
        url=server.url,
    )

    assert best.exit_code == 0 and "checkpoint of step 2" in text(best), best.output
    assert asked.exit_code == 0, asked.output
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert tar.extractfile("step-000002/config.json").read() == b'{"step": 2}'
    with tarfile.open(tmp_path / "4.tar") as tar:
        assert tar.getnames() == ["step-000004/config.json"]
    assert_clean_failure(missing, "no checkpoint at step 3")


def test_runs_create_takes_nested_overrides_from_a_config_file(server, tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"optim": {"lr": 0.0005}, "samples_per_prompt": 2}')

    run_id = create_run(server, "--config", str(config), "--set", "optim.lr=0.002")
    shown = opsd("runs", "show", str(run_id), "--json", url=server.url)

    assert '"lr": 0.002' in shown.output  # --set wins over the file
    assert '"samples_per_prompt": 2' in shown.output


def test_runs_create_with_an_invalid_config_fails_cleanly(server):
    bad_value = opsd(
        "runs", "create", "--env", "arithmetic", "--set", "optim.lr=-1", url=server.url
    )
    no_env = opsd("runs", "create", "--env", "no-such-env", url=server.url)

    assert_clean_failure(bad_value, "lr")
    assert_clean_failure(no_env, "no-such-env")


def test_runs_stop_resume_cancel_move_the_run_through_its_states(server):
    run_id = str(create_run(server))

    stopped = opsd("runs", "stop", run_id, url=server.url)
    resumed = opsd("runs", "resume", run_id, url=server.url)
    cancelled = opsd("runs", "cancel", run_id, url=server.url)
    resumed_again = opsd("runs", "resume", run_id, url=server.url)

    assert stopped.exit_code == 0 and "stopped" in text(stopped), stopped.output
    assert resumed.exit_code == 0 and "queued" in text(resumed), resumed.output
    assert cancelled.exit_code == 0 and "cancelled" in text(cancelled), cancelled.output
    assert_clean_failure(resumed_again)


def test_runs_show_of_a_missing_run_fails_cleanly(server):
    assert_clean_failure(opsd("runs", "show", "987654", url=server.url), "987654")


@pytest.mark.parametrize(
    ("ending", "code"), [("completed", 0), ("failed", 1), ("stopped", 3), ("cancelled", 4)]
)
def test_runs_watch_follows_the_events_and_exits_by_how_the_run_ended(server, ending, code):
    """Plumbing: the events are written into the record by the test, not by training;
    the run ends while the command follows it."""
    run_id = create_run(server)
    repo = server.repo()
    set_status(repo, run_id, RunStatus.running)
    repo.add_event(run_id, "started", {})
    for step in (1, 2, 3):
        repo.add_event(run_id, "step", {"step": step, "metrics": {"reward_mean": 0.25 * step}})
    repo.add_event(run_id, "eval", {"step": 3, "accuracy": 0.5})

    def end_run() -> None:
        time.sleep(1.0)
        set_status(repo, run_id, RunStatus(ending), error="boom" if ending == "failed" else None)
        repo.add_event(run_id, ending, {})

    ender = threading.Thread(target=end_run)
    ender.start()
    result = opsd("runs", "watch", str(run_id), url=server.url)
    ender.join()

    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert f"run {run_id} {ending}" in text(result)
    assert "reward 0.750" in text(result) and "eval 0.500" in text(result)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory, postgres) -> Iterator[Server]:
    """The service on Postgres and the Redis bus (what `opsd serve` runs beside workers)."""
    prefix = f"opsd-test-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("pg"),
        database_url=postgres.create(),
        redis_url=REDIS_URL,
        bus_prefix=prefix,
    )
    with Server(settings) as running:
        yield running
    delete_prefix(REDIS_URL, prefix)


@pytest.mark.parametrize("where", ["server", "postgres_server"])
def test_runs_watch_after_a_stop_and_a_resume_follows_the_run_until_it_completes(where, request):
    """`opsd runs stop 3 && opsd runs resume 3 && opsd runs watch 3`: the old `stopped`
    event is history; the watch follows the run on and exits 0 when it completes.
    Plumbing: the test writes what the trainer would."""
    server: Server = request.getfixturevalue(where)
    run_id = create_run(server)
    repo = server.repo()
    set_status(repo, run_id, RunStatus.running)
    repo.add_event(run_id, "started", {})
    repo.add_event(run_id, "step", {"step": 1, "metrics": {"reward_mean": 0.25}})
    assert opsd("runs", "stop", str(run_id), url=server.url).exit_code == 0
    assert opsd("runs", "resume", str(run_id), url=server.url).exit_code == 0
    set_status(repo, run_id, RunStatus.running)
    repo.add_event(run_id, "started", {})

    def train_on() -> None:
        time.sleep(1.5)
        for step in (2, 3):
            repo.add_event(run_id, "step", {"step": step, "metrics": {"reward_mean": 0.25 * step}})
        with repo.sessions.begin() as s:
            s.get(orm.Run, run_id).steps_done = 3
        set_status(repo, run_id, RunStatus.completed)
        repo.add_event(run_id, "completed", {})

    trainer = threading.Thread(target=train_on)
    trainer.start()
    result = opsd("runs", "watch", str(run_id), url=server.url)
    trainer.join()

    assert result.exit_code == 0, result.output
    assert f"run {run_id} completed at step 3/3" in text(result)
    assert "reward 0.750" in text(result)


def test_runs_watch_of_a_stopped_run_says_so_and_exits_3(server):
    run_id = create_run(server)
    assert opsd("runs", "stop", str(run_id), url=server.url).exit_code == 0

    result = opsd("runs", "watch", str(run_id), url=server.url)

    assert result.exit_code == 3, result.output
    assert f"run {run_id} stopped" in text(result)
    assert f"opsd runs resume {run_id}" in text(result)


def test_runs_watch_into_a_pipe_prints_a_line_per_evaluation_while_the_run_goes_on(server):
    """Not a terminal (a pipe, a log file, CI): plain lines as the run moves, no bar."""
    run_id = create_run(server)
    repo = server.repo()
    set_status(repo, run_id, RunStatus.running)
    repo.add_event(run_id, "started", {})
    watcher = subprocess.Popen(
        [OPSD, "runs", "watch", str(run_id), "--url", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = lines_of(watcher)
    try:
        first = lines.get(timeout=60)  # where the run is as the watch begins
        repo.add_event(run_id, "step", {"step": 1, "metrics": {"reward_mean": 0.5}})
        repo.add_event(run_id, "eval", {"step": 1, "accuracy": 0.25})
        evaluated = lines.get(timeout=60)  # arrives while the run still goes on

        set_status(repo, run_id, RunStatus.cancelled)
        repo.add_event(run_id, "cancelled", {})
        watcher.wait(timeout=60)
    finally:
        watcher.kill()
    rest = "".join(iter(lines.get, None))

    assert first.startswith(f"run {run_id}: step 0/3"), first
    assert evaluated.startswith(f"run {run_id}: step 1/3"), evaluated
    assert "reward 0.500" in evaluated and "eval 0.250" in evaluated
    assert f"run {run_id} cancelled" in rest
    assert watcher.returncode == 4
    assert "━" not in first + evaluated + rest  # no progress bar drawn into the pipe


# -- reaching the server ------------------------------------------------------------


def test_an_unreachable_server_is_reported_with_a_hint(monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        monkeypatch.setenv("OPSD_URL", url)

        result = opsd("runs", "list")

    assert_clean_failure(result, f"no opsd server answers at {url}", "opsd serve")


def test_a_guarded_server_refuses_a_call_without_the_token(guarded, monkeypatch):
    without = opsd("envs", "register", "guarded-env", "--kind", "arithmetic", url=guarded.url)
    reads = opsd("envs", "list", url=guarded.url)
    with_flag = opsd(
        "envs", "register", "guarded-env", "--kind", "arithmetic", "--token", TOKEN, url=guarded.url
    )
    monkeypatch.setenv("OPSD_API_TOKEN", TOKEN)
    with_env = opsd("runs", "create", "--env", "guarded-env", "--steps", "1", url=guarded.url)
    reads_with_env = opsd("envs", "list", url=guarded.url)

    assert_clean_failure(without, "bearer token", "OPSD_API_TOKEN")
    assert_clean_failure(reads, "bearer token", "OPSD_API_TOKEN")
    assert reads_with_env.exit_code == 0, reads_with_env.output
    assert with_flag.exit_code == 0, with_flag.output
    assert with_env.exit_code == 0, with_env.output


# -- serve, worker, db --------------------------------------------------------------


def test_serve_refuses_a_public_address_without_a_token(monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k))
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))

    result = opsd("serve", "--host", "0.0.0.0")

    assert_clean_failure(result, "refusing to listen on '0.0.0.0'", "OPSD_API_TOKEN")
    assert started == []


def test_serve_runs_uvicorn_with_the_app_on_the_settings_address(monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: started.append((app, k)))
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPSD_PORT", "8123")
    monkeypatch.setenv("OPSD_API_TOKEN", TOKEN)

    result = opsd("serve", "--host", "0.0.0.0")

    assert result.exit_code == 0, result.output
    ((served, options),) = started
    assert isinstance(served, FastAPI)
    assert options["host"] == "0.0.0.0" and options["port"] == 8123
    assert options["access_log"] is False and options["log_level"] == "info"


def test_serve_on_a_port_in_use_fails_at_once_before_it_migrates_or_trains(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "OPSD_DATA_DIR": str(tmp_path / "data")}
        env.pop("OPSD_DATABASE_URL", None)
        env.pop("OPSD_REDIS_URL", None)

        second = subprocess.run(
            [OPSD, "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    output = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 2, output
    assert output.startswith(f"error: cannot listen on 127.0.0.1:{port}: address already in use")
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "opsd.db").exists()  # no migrations ran


def test_serve_reports_invalid_settings_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))

    assert_clean_failure(opsd("serve", "--port", "70000"), "OPSD_PORT")


def test_worker_without_redis_refuses(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))

    assert_clean_failure(opsd("worker"), "OPSD_REDIS_URL", "opsd serve")


def test_worker_runs_on_redis_until_sigterm_and_exits_cleanly(monkeypatch, tmp_path, redis_prefix):
    upgrade(f"sqlite:///{tmp_path / 'opsd.db'}")
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPSD_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("OPSD_BUS_PREFIX", redis_prefix)
    terminate = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    terminate.start()

    result = opsd("worker", "--id", "cli-test")
    terminate.join()

    assert result.exit_code == 0, result.output
    assert "SIGTERM: stopping" in text(result) and "worker stopped" in text(result)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back


def test_worker_with_redis_down_fails_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPSD_REDIS_URL", "redis://127.0.0.1:9/0")

    assert_clean_failure(opsd("worker"), "Redis at redis://127.0.0.1:9/0 does not answer")


def test_db_upgrade_creates_the_tables_of_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'opsd.db'}"

    first = opsd("db", "upgrade", "--url", url)
    again = opsd("db", "upgrade", "--url", url)

    assert first.exit_code == 0, first.output
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"runs", "environments", "events", "alembic_version"} <= tables
    assert "upgraded empty -> revision" in text(first)
    assert "already at revision" in text(again)


def test_db_upgrade_reads_the_database_from_the_environment(monkeypatch, postgres):
    url = postgres.create()
    monkeypatch.setenv("OPSD_DATABASE_URL", url)

    result = opsd("db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "runs" in inspect(create_engine(url)).get_table_names()
    postgres.drop(url)


def test_db_upgrade_of_an_unreachable_database_fails_cleanly():
    result = opsd("db", "upgrade", "--url", "postgresql+psycopg://opsd:pw@127.0.0.1:9/opsd")

    assert_clean_failure(result, "cannot migrate")
    assert "pw" not in text(result)
