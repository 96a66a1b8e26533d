"""The gap probe (trainer/probe.py) on the real tiny model and the arithmetic environment:
it measures what step 1 of a run would train on, before any training."""

import json

import pytest

from trainer.loop import train
from trainer.presets import preset
from trainer.probe import probe, probe_config

CONFIG = {"seed": 3, "samples_per_prompt": 4, "env_config": {"eval_size": 8}}


def test_the_probe_measures_the_gap_step_one_of_the_run_trains_on(tmp_path):
    """Same tasks, same token draws, same initial weights: the probe's numbers are the
    step-1 metrics of `opsd train` with that many prompts per step."""
    cfg = preset("sdpo", CONFIG)
    report = probe(cfg, groups=3, device="cpu")

    assert (report.env, report.model, report.groups, report.samples_per_prompt) == (
        "arithmetic",
        "tiny",
        3,
        4,
    )
    assert report.teacher_gap > 0 and report.entropy > 0
    assert 0 < report.teacher_signal_frac <= 1
    assert 0 <= report.reward_mean <= 1

    run = preset("sdpo", {**CONFIG, "steps": 1, "prompts_per_step": 3, "eval": {"size": 8}})
    train(run, tmp_path, device="cpu")
    step_one = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()][1]
    assert report.teacher_gap == pytest.approx(step_one["teacher_gap"], rel=1e-5)
    assert report.entropy == pytest.approx(step_one["entropy"], rel=1e-5)
    assert report.teacher_signal_frac == pytest.approx(step_one["teacher_signal_frac"])
    assert report.reward_mean == step_one["reward_mean"]
    assert report.truncated_frac == step_one["truncated_frac"]


def test_a_grpo_config_is_probed_with_a_teacher_all_the_same():
    grpo = probe(preset("grpo", CONFIG), groups=2, device="cpu")
    sdpo = probe(preset("sdpo", CONFIG), groups=2, device="cpu")
    assert grpo.teacher_gap == pytest.approx(sdpo.teacher_gap, rel=1e-5)


def test_the_probe_config_is_one_step_of_the_groups_scored_by_the_initial_policy():
    cfg = probe_config(preset("grpo", {**CONFIG, "teacher": {"weights": "ema"}}), 5)
    assert (cfg.steps, cfg.prompts_per_step, cfg.samples_per_prompt) == (1, 5, 4)
    assert (cfg.loss.distill_weight, cfg.teacher.weights) == (1.0, "live")


def test_a_number_of_groups_out_of_bounds_is_refused_before_anything_loads():
    with pytest.raises(ValueError, match="groups must be between 1 and 64"):
        probe(preset("sdpo", {"model": "no-such-model"}), groups=0)
