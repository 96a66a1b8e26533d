"""Tests of trainer/health.py against hand computations (docs/algorithm.md "Run health")."""

import math

import pytest
import torch

from trainer.health import batch_health, masked_mean, teacher_gap, token_entropy
from trainer.losses import LossInputs

S = [0.5, 0.3, 0.2]  # student distribution at one position
T = [0.2, 0.5, 0.3]  # teacher distribution at one position


def _logits(*rows: list[float]) -> torch.Tensor:
    """One position per row, each row a distribution: [len(rows), 1, V] logits."""
    return torch.tensor(rows, dtype=torch.float64).log().unsqueeze(1)


def _entropy(p: list[float]) -> float:
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def _reverse_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _inputs(mask: list[list[int]], signal: list[bool], temperature: float = 1.0) -> LossInputs:
    shape = (len(mask), len(mask[0]))
    return LossInputs(
        response_ids=torch.zeros(shape, dtype=torch.long),
        response_mask=torch.tensor(mask),
        sampler_logp=torch.zeros(shape),
        rewards=torch.zeros(shape[0]),
        group_size=shape[0],
        has_teacher_signal=torch.tensor(signal),
        truncated=torch.zeros(shape[0], dtype=torch.bool),
        sampling_temperature=temperature,
    )


def test_token_entropy_is_minus_sum_p_log_p_and_log_v_for_a_uniform_distribution():
    logp = _logits(S, [1 / 3] * 3)  # [2, 1, 3]
    assert token_entropy(logp).squeeze(-1).tolist() == pytest.approx([_entropy(S), math.log(3)])


def test_token_entropy_of_a_certain_token_is_zero_also_with_minus_inf_log_probs():
    logp = torch.tensor([[[0.0, -math.inf, -math.inf]]])  # [1, 1, 3]
    assert token_entropy(logp).item() == 0.0


def test_teacher_gap_is_the_reverse_kl_from_student_to_teacher():
    gap = teacher_gap(_logits(S), _logits(T), torch.ones(1, 1), torch.tensor([True]))
    assert gap == pytest.approx(_reverse_kl(S, T))


def test_teacher_gap_is_zero_when_the_teacher_agrees_with_the_student():
    assert teacher_gap(_logits(S), _logits(S), torch.ones(1, 1), torch.tensor([True])) == 0.0


def test_teacher_gap_averages_only_model_tokens_of_samples_with_a_teacher_signal():
    """Three samples of one token each: the second has no teacher signal, the third's token
    is padding; only the first counts, however far the others' teachers are."""
    student = _logits(S, S, S)  # [3, 1, 3]
    teacher = _logits(T, [0.98, 0.01, 0.01], [0.01, 0.01, 0.98])
    mask = torch.tensor([[1], [1], [0]])
    signal = torch.tensor([True, False, True])
    assert teacher_gap(student, teacher, mask, signal) == pytest.approx(_reverse_kl(S, T))


def test_teacher_gap_is_none_when_no_sample_has_a_teacher_signal():
    assert teacher_gap(_logits(S), _logits(T), torch.ones(1, 1), torch.tensor([False])) is None


def test_masked_mean_of_an_empty_mask_is_none():
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)) is None


def test_batch_health_entropy_is_of_the_sampling_distribution_at_the_sampling_temperature():
    logits = _logits(S).float()  # [1, 1, 3]
    found = batch_health(logits, None, _inputs([[1]], [True], temperature=2.0))
    at_two = (logits / 2.0).softmax(-1).flatten().tolist()
    assert found == {"entropy": pytest.approx(_entropy(at_two), rel=1e-5)}


def test_batch_health_gap_is_at_temperature_one_whatever_the_sampling_temperature():
    found = batch_health(_logits(S), _logits(T), _inputs([[1]], [True], temperature=2.0))
    assert found["teacher_gap"] == pytest.approx(_reverse_kl(S, T))


def test_batch_health_leaves_out_the_gap_when_no_sample_has_a_teacher_signal():
    found = batch_health(_logits(S), _logits(T), _inputs([[1]], [False]))
    assert set(found) == {"entropy"}


def test_measures_taken_a_few_rows_at_a_time_equal_those_of_the_whole_batch(monkeypatch):
    import trainer.health as health

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, 7, generator=gen), torch.randn(5, 3, 7, generator=gen)
    inputs = _inputs([[1, 1, 0]] * 5, [True, False, True, True, False], temperature=0.7)
    whole = batch_health(student, teacher, inputs)
    monkeypatch.setattr(health, "CHUNK_ELEMENTS", 2 * 3 * 7)  # two rows per chunk
    assert batch_health(student, teacher, inputs) == pytest.approx(whole, rel=1e-6)
