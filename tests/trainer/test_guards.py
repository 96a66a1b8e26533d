"""Tests of trainer/guards.py: when a run stops itself, and which milestone is its best."""

import pytest
from pydantic import ValidationError

from trainer.config import GuardConfig
from trainer.guards import best_evaluation, check

HEALTHY = {"entropy": 1.0, "response_tokens_mean": 3.0}


def test_no_guard_is_set_by_default_and_nothing_stops():
    history = [{"entropy": 0.0, "response_tokens_mean": 1e4}] * 5
    assert check(GuardConfig(), 5, history, {0: 0.9, 5: 0.0}) is None


def test_eval_drop_stops_at_the_evaluation_that_falls_that_far_below_the_best():
    cfg = GuardConfig(eval_drop=0.2)
    evaluations = {0: 0.3, 50: 0.54, 100: 0.40, 150: 0.30}
    assert check(cfg, 100, [HEALTHY], evaluations) is None  # 0.14 below the best
    stop = check(cfg, 150, [HEALTHY], evaluations)
    assert (stop.step, stop.guard) == (150, "eval_drop")
    assert "0.540 at step 50" in stop.reason and "0.240 below" in stop.reason


def test_eval_drop_reads_only_evaluations_up_to_the_step_and_only_at_a_milestone():
    cfg = GuardConfig(eval_drop=0.2)
    evaluations = {0: 0.5, 50: 0.1}
    assert check(cfg, 49, [HEALTHY], evaluations) is None  # step 50 is not evaluated yet
    assert check(cfg, 51, [HEALTHY], evaluations) is None  # asked after a later step
    assert check(cfg, 50, [HEALTHY], evaluations).guard == "eval_drop"


def test_eval_drop_of_exactly_the_set_amount_stops():
    assert check(GuardConfig(eval_drop=0.25), 2, [HEALTHY], {0: 0.75, 2: 0.5}) is not None


def test_entropy_guard_stops_only_after_patience_steps_below_the_floor():
    cfg = GuardConfig(entropy_min=0.1, patience=3)
    low = {"entropy": 0.05}
    assert check(cfg, 3, [HEALTHY, low, low], {}) is None
    assert check(cfg, 2, [low, low], {}) is None  # fewer steps than the patience
    stop = check(cfg, 4, [HEALTHY, low, low, low], {})
    assert (stop.step, stop.guard) == (4, "entropy_min")
    assert "below 0.1 for 3 steps" in stop.reason


def test_a_step_without_the_metric_does_not_count_towards_the_guard():
    cfg = GuardConfig(entropy_min=0.1, patience=2)
    assert check(cfg, 2, [{"entropy": 0.0}, {}], {}) is None


def test_length_guard_stops_after_patience_steps_above_the_limit():
    cfg = GuardConfig(response_tokens_max=10, patience=2)
    long = {"response_tokens_mean": 12.0}
    assert check(cfg, 2, [HEALTHY, long], {}) is None
    stop = check(cfg, 3, [HEALTHY, long, long], {})
    assert (stop.step, stop.guard) == (3, "response_tokens_max")


def test_guard_values_are_validated():
    with pytest.raises(ValidationError):
        GuardConfig(eval_drop=0)
    with pytest.raises(ValidationError):
        GuardConfig(patience=0)


def test_best_evaluation_is_the_highest_accuracy_and_the_earliest_step_on_a_tie():
    assert best_evaluation({0: 0.3, 50: 0.5, 100: 0.5, 150: 0.1}) == (50, 0.5)
    assert best_evaluation({}) is None
