"""`opsd sandbox run` and `opsd envs try`: real bwrap sandbox, the packaged tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sandbox import unavailable
from service.cli import app
from trainer.model import TINY_MODEL_DIR

runner = CliRunner()
why = unavailable("bwrap")
needs_bwrap = pytest.mark.skipif(why is not None, reason=f"bwrap unavailable: {why}")


def text(result) -> str:
    return " ".join(result.output.split())


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in text(result)
    for fragment in fragments:
        assert fragment in text(result)


@needs_bwrap
def test_sandbox_run_prints_an_ok_record_for_hello_world(tmp_path):
    program = tmp_path / "hello.py"
    program.write_text("print('hello', input())\n")
    (tmp_path / "in.txt").write_text("world\n")
    result = runner.invoke(
        app, ["sandbox", "run", str(program), "--stdin", str(tmp_path / "in.txt")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["verdict"] == "ok" and record["stdout"] == "hello world\n"
    assert record["backend"] == "bwrap"


@needs_bwrap
def test_sandbox_run_reports_time_limit_for_a_sleep_and_still_exits_zero(tmp_path):
    program = tmp_path / "sleep.py"
    program.write_text("import time\ntime.sleep(30)\n")
    result = runner.invoke(app, ["sandbox", "run", str(program), "--timeout", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "time_limit"


def test_sandbox_run_fails_cleanly_on_a_missing_file_or_unknown_backend(tmp_path):
    assert_clean_failure(
        runner.invoke(app, ["sandbox", "run", str(tmp_path / "nope.py")]), "does not exist"
    )
    program = tmp_path / "p.py"
    program.write_text("print(1)\n")
    assert_clean_failure(
        runner.invoke(app, ["sandbox", "run", str(program), "--backend", "vm"]),
        "unknown sandbox backend 'vm'",
    )


@pytest.mark.skipif(not (TINY_MODEL_DIR / "config.json").exists(), reason="tiny model not built")
def test_envs_try_prints_a_table_of_rewards_verdicts_and_feedback():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["envs", "try", "arithmetic", "--model", "tiny", "-n", "2", "--device", "cpu"]
        result = runner.invoke(
            app, [*args, "--max-new-tokens", "4", "--config", '{"eval_size": 8}']
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    out = text(result)
    assert "arithmetic: 2 tasks x 2 responses from tiny" in out
    for column in ("task", "response", "reward", "verdict", "feedback"):
        assert column in out
    assert "The answer is" in out or "ok" in out


def test_envs_try_prints_no_loading_bars_of_hugging_face_libraries():
    """Loading the model draws no "Loading weights" bar into the command's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    opsd = str(Path(sys.executable).with_name("opsd"))
    args = ["envs", "try", "arithmetic", "--model", "tiny", "-n", "1", "--tasks", "1"]
    done = subprocess.run(
        [opsd, *args, "--device", "cpu", "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "arithmetic: 1 tasks x 1 responses from tiny" in " ".join(done.stdout.split())
    assert "Loading weights" not in done.stdout + done.stderr
    assert "it/s" not in done.stdout + done.stderr


def test_envs_try_fails_cleanly_on_an_unknown_environment_or_bad_config():
    assert_clean_failure(runner.invoke(app, ["envs", "try", "nope"]), "unknown environment")
    assert_clean_failure(
        runner.invoke(app, ["envs", "try", "code", "--config", "{bad"]), "not JSON"
    )
    assert_clean_failure(
        runner.invoke(app, ["envs", "try", "code", "--config", '{"source": "jsonl"}']),
        "needs `path`",
    )
