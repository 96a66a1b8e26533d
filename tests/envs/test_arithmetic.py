"""The arithmetic environment: splits, scoring and configuration."""

from __future__ import annotations

import asyncio

import pytest

from envs.arithmetic import ArithmeticConfig, ArithmeticEnv, make_task, parse_answer
from envs.base import Environment, Verdict


def small_env(**overrides) -> ArithmeticEnv:
    config = {"low": 1, "high": 9, "eval_size": 20, "reversed_digits": False, **overrides}
    return ArithmeticEnv(ArithmeticConfig(**config))


def score(env: ArithmeticEnv, a: int, b: int, response: str):
    task = make_task(a, b, env.config.reversed_digits)
    return asyncio.run(env.score(task, response))


def test_arithmetic_env_satisfies_the_environment_protocol():
    assert isinstance(ArithmeticEnv(), Environment)


def test_eval_and_train_splits_are_disjoint_and_cover_every_pair_once():
    env = small_env()
    eval_ids = [t.id for t in env.dataset("eval")]
    train_ids = [t.id for t in env.dataset("train")]
    assert len(eval_ids) == 20
    assert len(train_ids) == 9 * 9 - 20
    assert not set(eval_ids) & set(train_ids)
    all_pairs = {f"{a}+{b}" for a in range(1, 10) for b in range(1, 10)}
    assert set(eval_ids) | set(train_ids) == all_pairs
    assert len(set(eval_ids + train_ids)) == len(eval_ids) + len(train_ids)


def test_default_config_holds_out_eval_size_problems():
    env = ArithmeticEnv()
    c = env.config
    pairs = (c.high - c.low + 1) ** 2
    assert len(env.dataset("eval")) == c.eval_size
    assert len(env.dataset("train")) == pairs - c.eval_size


def test_splits_are_deterministic_for_a_split_seed_and_change_with_it():
    first = [t.id for t in small_env(split_seed=3).dataset("eval")]
    again = [t.id for t in small_env(split_seed=3).dataset("eval")]
    other = [t.id for t in small_env(split_seed=4).dataset("eval")]
    assert first == again
    assert first != other


def test_tasks_carry_prompt_reference_and_operands():
    for task in small_env().dataset("train"):
        a, b = task.data["a"], task.data["b"]
        assert task.prompt == f"{a}+{b}="
        assert task.reference == str(a + b)
        assert 1 <= a <= 9 and 1 <= b <= 9


def test_correct_sum_scores_reward_one_and_verdict_ok():
    result = score(small_env(), 12, 34, "46")
    assert result.reward == 1.0
    assert result.verdict is Verdict.ok
    assert result.feedback is None


def test_reversed_digits_write_operands_and_answer_least_significant_digit_first():
    env = small_env(low=10, high=49, eval_size=100, reversed_digits=True)
    task = make_task(12, 38, reversed_digits=True)
    assert task.prompt == "21+83=" and task.reference == "05"
    assert score(env, 12, 38, "05").verdict is Verdict.ok
    assert score(env, 12, 38, "50").verdict is Verdict.wrong_answer
    assert score(env, 12, 38, "5").verdict is Verdict.wrong_answer  # the leading zero is a digit
    assert all(
        t.prompt == f"{t.data['a']}"[::-1] + "+" + f"{t.data['b']}"[::-1] + "="
        for t in env.dataset("eval")
    )


def test_correct_sum_with_surrounding_text_is_still_ok():
    assert score(small_env(), 7, 8, " 15 and done").verdict is Verdict.ok


def test_wrong_sum_is_wrong_answer_with_the_correct_answer_in_the_feedback():
    result = score(small_env(), 12, 34, "45")
    assert result.reward == 0.0
    assert result.verdict is Verdict.wrong_answer
    assert "46" in result.feedback


def test_response_without_a_number_is_a_format_error_with_the_answer_in_the_feedback():
    result = score(small_env(), 5, 6, "eleven")
    assert result.reward == 0.0
    assert result.verdict is Verdict.format_error
    assert "11" in result.feedback


def test_empty_response_is_a_format_error():
    assert score(small_env(), 5, 6, "").verdict is Verdict.format_error


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("46", "46"),
        ("  46\n", "46"),
        ("x=46 or 47", "46"),
        ("-3", "-3"),
        ("007", "007"),
        ("", None),
        ("ab", None),
    ],
)
def test_parse_answer_returns_the_first_number_as_written_or_none(response, expected):
    assert parse_answer(response) == expected


@pytest.mark.parametrize(
    "config",
    [
        {"low": 50, "high": 10},  # high < low
        {"low": 1, "high": 3, "eval_size": 9},  # eval_size = all 9 problems, train would be empty
        {"low": 1, "high": 3, "eval_size": 100},  # eval_size above the number of problems
        {"low": -1},  # negative operand
        {"eval_size": 0},
        {"nope": 1},  # unknown field
    ],
)
def test_invalid_config_is_rejected(config):
    with pytest.raises(ValueError):
        ArithmeticConfig(**config)


def test_largest_valid_eval_size_leaves_one_training_problem():
    env = ArithmeticEnv(ArithmeticConfig(low=1, high=3, eval_size=8))
    assert len(env.dataset("train")) == 1
