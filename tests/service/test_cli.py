"""The `opsd` command line: `train` and `tiny-model build`, and how they report bad input.

Plumbing tests: `train` runs a couple of steps of an effectively random tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()

FAST = [
    "--device", "cpu",
    "--set", "prompts_per_step=2",
    "--set", "samples_per_prompt=2",
    "--set", "sampling.max_new_tokens=4",
    "--set", "env_config.eval_size=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(random_model_dir) -> Path:
    return random_model_dir


def text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not an escaped error
    assert "Traceback" not in result.output
    assert "error:" in text(result)
    for fragment in fragments:
        assert fragment in text(result)


def test_train_runs_the_configured_steps_and_writes_summary(model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(model_dir), "--steps", "2"]
    result = runner.invoke(app, args + FAST + ["--set", "eval.size=8", "--set", "eval.every=1"])

    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["algorithm"] == "sdpo"
    assert summary["config"]["model"] == str(model_dir)
    assert summary["config"]["eval"] == {"every": 1, "size": 8, "max_new_tokens": None}
    assert summary["config"]["samples_per_prompt"] == 2
    assert summary["samples_seen"] == 2 * 2 * 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [0, 1, 2]
    assert "eval accuracy" in text(result)


def test_train_says_when_a_guard_stopped_it_and_why(model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(model_dir), "--steps", "3"]
    guard = ["--set", "guard.entropy_min=100", "--set", "guard.patience=1"]
    result = runner.invoke(app, args + FAST + ["--set", "eval.size=8"] + guard)

    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["stopped"]["step"] == 1
    assert "stopped: entropy stayed below 100.0 for 1 step " in text(result)


def test_train_with_grpo_and_lr_flags_uses_the_grpo_preset(model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(model_dir), "--steps", "1"]
    result = runner.invoke(app, args + FAST + ["--algorithm", "grpo", "--lr", "0.003"])

    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "grpo"
    assert summary["config"]["loss"]["distill_weight"] == 0.0
    assert summary["config"]["optim"]["lr"] == 0.003


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("loss.nope=1", ["loss.nope", "Extra inputs are not permitted"]),
        ("steps=-1", ["steps"]),
        ("no-equals-sign", ["expected KEY=VALUE", "no-equals-sign"]),
    ],
)
def test_train_rejects_a_bad_set_with_exit_code_2_and_no_traceback(
    assignment, fragments, model_dir, tmp_path
):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(model_dir), "--set", assignment]
    result = runner.invoke(app, args)
    assert_clean_failure(result, *fragments)
    assert not out.exists()  # rejected before anything ran


def test_train_rejects_an_unknown_algorithm(model_dir, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--model", str(model_dir)]
    result = runner.invoke(app, args + ["--algorithm", "ppo"])
    assert_clean_failure(result, "ppo", "grpo", "sdpo")


def assert_nothing_started(result, out: Path) -> None:
    """Bad input is refused before a progress bar is drawn or the run folder is made."""
    assert "evaluating base model" not in result.output and "opsd train" not in result.output
    assert not out.exists()


def test_train_with_an_unknown_environment_exits_2_listing_the_known_ones(model_dir, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--model", str(model_dir), "--steps", "1"]
    result = runner.invoke(app, args + ["--env", "no-such-env", "--device", "cpu"])
    assert_clean_failure(result, "unknown environment", "no-such-env", "arithmetic")
    assert_nothing_started(result, tmp_path / "run")


def test_train_with_an_invalid_env_config_exits_2(model_dir, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--model", str(model_dir), "--steps", "1"]
    result = runner.invoke(app, args + ["--set", "env_config.low=-3", "--device", "cpu"])
    assert_clean_failure(result, "invalid config for environment 'arithmetic'", "low")
    assert_nothing_started(result, tmp_path / "run")


def test_train_with_a_model_folder_that_holds_no_model_exits_2(tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--model", str(tmp_path), "--steps", "1"]
    result = runner.invoke(app, args + ["--device", "cpu"])
    assert_clean_failure(result, "no Hugging Face model directory", str(tmp_path))
    assert_nothing_started(result, tmp_path / "run")


def test_train_refuses_zero_steps_as_the_api_does(model_dir, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--model", str(model_dir), "--steps", "0"]
    result = runner.invoke(app, args + ["--device", "cpu"])
    assert_clean_failure(result, "steps", "greater than or equal to 1")
    assert_nothing_started(result, tmp_path / "run")


def test_train_with_a_missing_config_file_exits_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(missing)])
    assert_clean_failure(result, "does not exist")


def test_train_reads_a_toml_config_file_and_flags_override_it(model_dir, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'model = "{model_dir}"\nsteps = 5\n[eval]\nsize = 4\nevery = 10\n')
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--config", str(config), "--steps", "1"]
    result = runner.invoke(app, args + FAST)

    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "summary.json").read_text())["config"]
    assert (cfg["steps"], cfg["eval"]["size"], cfg["eval"]["every"]) == (1, 4, 10)


def test_tiny_model_build_writes_a_loadable_model_and_tokenizer(tmp_path):
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["tiny-model", "build", "--out", str(out), "--steps", "2"])

    assert result.exit_code == 0, result.output
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (out / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<eos>"
    assert tokenizer.decode(tokenizer("12+34=", add_special_tokens=False)["input_ids"]) == "12+34="
    assert str(out) in text(result)


def test_tiny_model_build_tools_starts_from_tiny_and_writes_a_loadable_model(tmp_path):
    out = tmp_path / "tiny-tools"
    args = ["tiny-model", "build", "--task", "tools", "--out", str(out), "--steps", "2"]
    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    assert "tools" in text(result) and str(out) in text(result)


def test_tiny_model_build_rejects_an_unknown_task(tmp_path):
    result = runner.invoke(app, ["tiny-model", "build", "--task", "poetry"])

    assert result.exit_code == 2
    assert "poetry" in text(result)
