"""The offline training loop: metrics, summary, checkpoints and resuming.

Plumbing tests: the policy is the tiny model's architecture after one pretraining step
(so effectively random) and the runs are a few steps long; what they check is what the
loop writes, not that the model learns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.checkpoint import checkpoint_path
from trainer.loop import RunPolicy, train
from trainer.presets import preset

SAMPLES_PER_STEP = 2 * 4


@pytest.fixture(scope="module")
def model_dir(random_model_dir) -> Path:
    return random_model_dir


def config(model_dir: Path, algorithm: str = "sdpo", **overrides):
    base = {
        "model": str(model_dir),
        "steps": 3,
        "prompts_per_step": 2,
        "samples_per_prompt": 4,
        "sampling": {"max_new_tokens": 4},
        "eval": {"every": 2, "size": 16},
        "env_config": {"eval_size": 16},
    }
    return preset(algorithm, {**base, **overrides})


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_summary_and_a_loadable_checkpoint(model_dir, tmp_path):
    cfg = config(model_dir)
    seen: list[dict] = []
    summary = train(cfg, tmp_path, device="cpu", on_step=seen.append)

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records == seen  # the callback sees exactly what is written
    for r in records[1:]:
        assert {"step", "reward_mean", "loss", "samples_seen", "lr", "distill_loss"} <= r.keys()
        assert r["samples_seen"] == r["step"] * SAMPLES_PER_STEP
        assert 0.0 <= r["reward_mean"] <= 1.0
    assert records[0]["samples_seen"] == 0
    assert [r["step"] for r in records if "eval_accuracy" in r] == [0, 2, 3]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in records if "eval_accuracy" in r)

    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["base_eval_accuracy"] == records[0]["eval_accuracy"]
    assert summary["final_eval_accuracy"] == records[3]["eval_accuracy"]
    assert summary["samples_seen"] == 3 * SAMPLES_PER_STEP
    assert summary["wall_seconds"] > 0
    assert summary["algorithm"] == "sdpo"
    assert summary["config"] == cfg.model_dump(mode="json")
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.model_dump(mode="json")

    ckpt = checkpoint_path(tmp_path, 3)
    assert summary["checkpoint"] == str(ckpt)
    trained = AutoModelForCausalLM.from_pretrained(ckpt)
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    weight = "model.embed_tokens.weight"
    assert not torch.equal(trained.state_dict()[weight], initial.state_dict()[weight])


def test_resuming_with_more_steps_continues_from_the_checkpoint_and_records_each_step_once(
    model_dir, tmp_path
):
    train(config(model_dir, steps=2), tmp_path, device="cpu", checkpoint_every=1)
    first = read_metrics(tmp_path)
    summary = train(config(model_dir, steps=4), tmp_path, device="cpu")

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[:3] == first  # earlier steps are kept, not recomputed
    assert summary["base_eval_accuracy"] == first[0]["eval_accuracy"]
    assert summary["samples_seen"] == 4 * SAMPLES_PER_STEP
    assert checkpoint_path(tmp_path, 4).is_dir()


def test_a_resumed_run_trains_exactly_like_an_uninterrupted_one(model_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(config(model_dir, steps=4), whole, device="cpu")
    train(config(model_dir, steps=2), split, device="cpu")
    train(config(model_dir, steps=4), split, device="cpu")

    def trained(run: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_metrics(run)
        ]

    assert trained(split) == trained(whole)
    weights_whole = AutoModelForCausalLM.from_pretrained(checkpoint_path(whole, 4)).state_dict()
    weights_split = AutoModelForCausalLM.from_pretrained(checkpoint_path(split, 4)).state_dict()
    assert all(torch.equal(weights_split[k], weights_whole[k]) for k in weights_whole)


def test_resuming_after_a_crash_drops_metrics_past_the_last_checkpoint(model_dir, tmp_path):
    train(config(model_dir, steps=2), tmp_path, device="cpu", checkpoint_every=1)
    shutil.rmtree(checkpoint_path(tmp_path, 2))  # step 2 was recorded, its checkpoint lost
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]

    train(config(model_dir, steps=3), tmp_path, device="cpu")

    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_rerunning_a_finished_run_keeps_its_summary(model_dir, tmp_path, monkeypatch):
    # Scripted evaluation (accuracy = steps trained / 10) so that final differs from base;
    # a rerun after the last checkpoint (e.g. a crash before summary.json) has no step left.
    monkeypatch.setattr(RunPolicy, "evaluate", lambda self: self.learner.steps_done / 10)
    first = train(config(model_dir, steps=3), tmp_path, device="cpu")
    again = train(config(model_dir, steps=3), tmp_path, device="cpu")

    assert (first["base_eval_accuracy"], first["final_eval_accuracy"]) == (0.0, 0.3)
    assert (again["base_eval_accuracy"], again["final_eval_accuracy"]) == (0.0, 0.3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_grpo_preset_trains_without_a_teacher(model_dir, tmp_path):
    summary = train(config(model_dir, "grpo", steps=2), tmp_path, device="cpu")
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert summary["algorithm"] == "grpo"
    assert all("grpo_loss" in r and "distill_loss" not in r for r in records[1:])
    assert (checkpoint_path(tmp_path, 2) / "config.json").is_file()


def test_a_missing_model_directory_fails_at_once_with_a_clear_error(tmp_path):
    from trainer.model import ModelNotFound, resolve_model

    with pytest.raises(ModelNotFound, match="config.json missing"):
        resolve_model(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelNotFound, match="config.json missing"):
        resolve_model(str(tmp_path))  # a directory, but not a model


def test_every_trained_step_records_the_run_health_metrics(model_dir, tmp_path):
    train(config(model_dir, steps=2), tmp_path, device="cpu")
    for r in read_metrics(tmp_path)[1:]:
        assert {"teacher_gap", "entropy", "teacher_signal_frac", "truncated_frac"} <= r.keys()
        assert r["entropy"] > 0 and r["teacher_gap"] >= 0


def test_a_guard_on_held_out_accuracy_ends_the_run_early_and_names_its_best_checkpoint(
    model_dir, tmp_path, monkeypatch
):
    # Scripted evaluation: accuracy rises to step 2, then falls 0.3 by step 4.
    scripted = {0: 0.3, 2: 0.6, 4: 0.3, 6: 0.9}
    monkeypatch.setattr(RunPolicy, "evaluate", lambda self: scripted[self.learner.steps_done])
    cfg = config(model_dir, steps=6, guard={"eval_drop": 0.2})
    summary = train(cfg, tmp_path, device="cpu")

    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4]
    assert summary["stopped"]["step"] == 4
    assert summary["stopped"]["guard"] == "eval_drop"
    assert "0.300 below its best, 0.600 at step 2" in summary["stopped"]["reason"]
    assert (summary["steps"], summary["samples_seen"]) == (4, 4 * SAMPLES_PER_STEP)
    assert (summary["best_step"], summary["best_eval_accuracy"]) == (2, 0.6)
    assert summary["best_checkpoint"] == str(checkpoint_path(tmp_path, 2))
    assert (checkpoint_path(tmp_path, 2) / "config.json").is_file()
    assert summary["checkpoint"] == str(checkpoint_path(tmp_path, 4))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_an_entropy_guard_stops_after_its_patience_and_a_completed_run_has_no_stop(
    model_dir, tmp_path
):
    cfg = config(model_dir, steps=4, guard={"entropy_min": 100.0, "patience": 2})
    summary = train(cfg, tmp_path / "guarded", device="cpu")
    assert summary["stopped"]["step"] == 2 and summary["stopped"]["guard"] == "entropy_min"
    assert checkpoint_path(tmp_path / "guarded", 2).is_dir()

    summary = train(config(model_dir, steps=2), tmp_path / "free", device="cpu")
    assert summary["stopped"] is None and summary["steps"] == 2
