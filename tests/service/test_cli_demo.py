"""`opsd demo` from nothing: embedded service, a real run of the tiny model, a summary."""

import io
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from service.cli import app, common
from service.cli.demo import embedded_server
from service.storage import Repository, RunStatus, make_engine, make_sessionmaker

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


def test_demo_starts_the_embedded_service_trains_and_summarizes(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSD_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPSD_REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["demo", "--steps", "3", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "held-out accuracy" in result.output
    run_dir = tmp_path / "d" / "runs" / "1"
    assert (run_dir / "progress.png").stat().st_size > 0
    assert (run_dir / "step-000003" / "model.safetensors").is_file()
    assert (tmp_path / "d" / "opsd.db").is_file()
    assert "stream was lost" not in caplog.text + result.output  # there is no Redis


def test_demo_against_a_server_elsewhere_prints_absolute_paths_and_where_they_are(
    tmp_path, monkeypatch
):
    """`opsd demo --url` from another folder: the checkpoint is on the server's machine,
    the plot on this one; both absolute, both labelled."""
    monkeypatch.delenv("OPSD_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPSD_REDIS_URL", raising=False)
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    client_dir.mkdir()
    with embedded_server(server_dir) as (url, _):
        monkeypatch.chdir(client_dir)
        result = CliRunner().invoke(app, ["demo", "--url", url, "--steps", "2"])

    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    checkpoint = server_dir / "runs" / "1" / "step-000002"
    image = client_dir / "opsd-demo-run-1.png"
    assert f"checkpoint (on the server, {url}): {checkpoint}" in out
    assert f"plot (on this machine): {image}" in out
    assert f"{url}/runs/1 to see the run in the dashboard" in out
    with Image.open(image) as png:  # the plot names the run
        assert png.text["Title"] == "run 1: sdpo on arithmetic with tiny"
    assert not (client_dir / "runs").exists()


def test_a_library_warning_prints_above_the_live_bar_not_into_it(monkeypatch):
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(common, "console", terminal)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        common.log_through_console("warning")
        with Progress(console=terminal) as progress:
            progress.add_task("run 1", total=10, completed=5)
            logging.getLogger("some.library").warning("a library warning")
    finally:
        root.handlers[:], root.level = handlers, level

    (line,) = [line for line in screen.getvalue().splitlines() if "a library warning" in line]
    assert "WARNING" in line and "━" not in line  # a line of its own, not into the bar


def test_ctrl_c_in_the_demo_says_the_run_pauses_and_how_to_carry_it_on(tmp_path):
    """SIGINT while the demo follows its run: the embedded service (and the run with it)
    stops; the message says so and names `opsd serve` on the same data folder."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("OPSD_DATABASE_URL", "OPSD_REDIS_URL")}
    demo = subprocess.Popen(
        [OPSD, "demo", "--steps", "300", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    lines = lines_of(demo)
    try:
        seen = ""
        while not seen.startswith("run 1: step"):  # the demo follows its run
            seen = lines.get(timeout=300)
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=300)
    finally:
        demo.kill()
    out = " ".join("".join(iter(lines.get, None)).split())

    assert demo.returncode == 130, out
    assert f"`OPSD_DATA_DIR={data} opsd serve` carries it on" in out
    assert "goes on" not in out and "held-out accuracy" not in out  # no summary
    assert "Traceback" not in out
    repo = Repository(make_sessionmaker(make_engine(f"sqlite:///{data / 'opsd.db'}")))
    assert repo.get_run(1).status in (RunStatus.queued, RunStatus.running)  # to carry on


def test_demo_refuses_an_unknown_algorithm(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--algorithm", "ppo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "sdpo or grpo" in result.output


def test_demo_against_a_server_that_is_not_there_says_so(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "opsd serve" in result.output
