"""Batches become aligned tensors, and `Learner.step` takes one optimiser step over them.

Plumbing tests: the models are randomly initialised tiny Llamas and the batches are
made-up token ids with rewards chosen by hand (log-probs come from the model itself, so
the GRPO ratio starts at 1). Learning itself is tested with the real model elsewhere.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.batch import Batch, Sample, build_sequences, response_tensors
from trainer.config import OptimConfig
from trainer.presets import preset
from trainer.step import Learner, lr_multiplier

VOCAB = 32
PAD = 0


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def random_ids(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=gen).tolist()


@torch.no_grad()
def own_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """log pi(y_t) of each response token under `model`, from an unpadded forward."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0]  # [L, V]
    logp = logits[len(prompt) - 1 : -1].log_softmax(-1)  # [T, V]
    return logp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1).tolist()


def make_batch(
    model,
    rewards: list[float],
    group_size: int,
    prompt_lens: list[int],
    response_lens: list[int],
    *,
    seed: int = 0,
) -> Batch:
    """One sample per reward; every sample has a teacher prompt (its prompt plus a hint)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for reward, p_len, r_len in zip(rewards, prompt_lens, response_lens, strict=True):
        prompt, response = random_ids(gen, p_len), random_ids(gen, r_len)
        samples.append(
            Sample(
                prompt_ids=prompt,
                response_ids=response,
                sampler_logprobs=own_logprobs(model, prompt, response),
                reward=reward,
                teacher_prompt_ids=prompt + random_ids(gen, 3),
            )
        )
    return Batch(samples, group_size)


def run_config(algorithm: str, **optim):
    return preset(
        algorithm,
        {
            "steps": 10,
            "optim": {"lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, **optim},
        },
    )


# --- build_sequences -------------------------------------------------------------------

PROMPTS = [[5, 6, 7], [8], [9, 10]]
RESPONSES = [[11, 12], [13, 14, 15, 16], [17]]


def test_build_sequences_left_pads_prompts_and_starts_every_response_in_one_column():
    seqs = build_sequences(PROMPTS, RESPONSES, PAD)
    width_p, width_r = 3, 4
    assert (seqs.prompt_width, seqs.response_width) == (width_p, width_r)
    assert seqs.input_ids.shape == seqs.attention_mask.shape == (3, width_p + width_r)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ids, mask = seqs.input_ids[row].tolist(), seqs.attention_mask[row].tolist()
        assert ids[width_p - len(prompt) : width_p] == prompt
        assert ids[width_p : width_p + len(response)] == response
        real = range(width_p - len(prompt), width_p + len(response))
        assert mask == [int(i in real) for i in range(width_p + width_r)]
        assert all(ids[i] == PAD for i in range(width_p + width_r) if i not in real)


def test_build_sequences_positions_count_from_the_first_real_token():
    seqs = build_sequences(PROMPTS, RESPONSES, PAD)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        start = seqs.prompt_width - len(prompt)
        positions = seqs.position_ids[row, start : start + len(prompt) + len(response)]
        assert positions.tolist() == list(range(len(prompt) + len(response)))


def test_build_sequences_keeps_a_column_for_all_empty_responses():
    seqs = build_sequences([[1, 2]], [[]], PAD)
    assert seqs.response_width == 1
    assert seqs.attention_mask.tolist() == [[1, 1, 0]]


@torch.no_grad()
def test_response_logits_of_the_padded_batch_equal_each_row_run_unpadded():
    model = tiny_llama()
    seqs = build_sequences(PROMPTS, RESPONSES, PAD)
    logits = model(
        input_ids=seqs.input_ids,
        attention_mask=seqs.attention_mask,
        position_ids=seqs.position_ids,
    ).logits
    picked = seqs.response_logits(logits)  # [B, T, V]
    assert picked.shape == (3, seqs.response_width, VOCAB)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        alone = model(input_ids=torch.tensor([prompt + response])).logits[0]  # [L, V]
        predicting = alone[len(prompt) - 1 : len(prompt) - 1 + len(response)]  # [T_i, V]
        torch.testing.assert_close(picked[row, : len(response)], predicting, atol=1e-5, rtol=0)


def test_response_tensors_right_pad_ids_mask_and_logprobs():
    samples = [
        Sample([1], [4, 5], [-0.1, -0.2], 1.0, response_mask=[1, 0]),
        Sample([1], [6], [-0.3], 0.0),
    ]
    t = response_tensors(samples, width=3)
    assert t["response_ids"].tolist() == [[4, 5, 0], [6, 0, 0]]
    assert t["response_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    torch.testing.assert_close(t["sampler_logp"], torch.tensor([[-0.1, -0.2, 0], [-0.3, 0, 0]]))


# --- Batch and Sample ------------------------------------------------------------------


def numbered_batch(groups: int, group_size: int) -> Batch:
    samples = [Sample([1], [2], [-1.0], reward=float(i)) for i in range(groups * group_size)]
    return Batch(samples, group_size, policy_version=7)


@pytest.mark.parametrize(
    ("groups", "parts", "expected_parts"), [(3, 2, 2), (4, 4, 4), (2, 5, 2), (3, 1, 1)]
)
def test_batch_split_keeps_whole_groups_in_order(groups, parts, expected_parts):
    batch = numbered_batch(groups, group_size=3)
    micro = batch.split(parts)
    assert len(micro) == expected_parts
    assert [s for m in micro for s in m.samples] == batch.samples
    for m in micro:
        assert m.samples and len(m.samples) % 3 == 0
        first_rewards = [s.reward for s in m.samples[::3]]
        assert all(r % 3 == 0 for r in first_rewards)  # each group starts at a multiple of G
        assert (m.group_size, m.policy_version, m.id) == (3, 7, batch.id)
    sizes = [len(m.samples) for m in micro]
    assert max(sizes) - min(sizes) <= 3  # as even as whole groups allow


def test_sample_rejects_logprobs_or_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="sampler_logprobs"):
        Sample([1], [2, 3], [-1.0], reward=0.0)
    with pytest.raises(ValueError, match="response_mask"):
        Sample([1], [2, 3], [-1.0, -1.0], reward=0.0, response_mask=[1])


def test_batch_rejects_samples_that_do_not_form_whole_groups():
    sample = Sample([1], [2], [-1.0], reward=0.0)
    with pytest.raises(ValueError):
        Batch([sample] * 3, group_size=2)
    with pytest.raises(ValueError):
        Batch([], group_size=2)


def test_batch_needs_teacher_only_when_some_sample_has_a_teacher_prompt():
    plain = Sample([1], [2], [-1.0], reward=0.0)
    hinted = Sample([1], [2], [-1.0], reward=0.0, teacher_prompt_ids=[1, 3])
    assert not Batch([plain, plain], 2).needs_teacher
    assert Batch([plain, hinted], 2).needs_teacher


# --- learning-rate schedule ------------------------------------------------------------


def test_lr_multiplier_warms_up_linearly_then_stays_constant():
    cfg = OptimConfig(warmup_steps=4, schedule="constant")
    assert [lr_multiplier(s, cfg, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_multiplier(50, cfg, 10) == 1.0


def test_lr_multiplier_without_warmup_starts_at_full_rate():
    assert lr_multiplier(0, OptimConfig(warmup_steps=0), 10) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_multiplier_decays_from_one_after_warmup_to_zero_at_the_last_step(schedule):
    cfg = OptimConfig(warmup_steps=2, schedule=schedule)
    total = 12  # 10 decay steps after warmup
    values = [lr_multiplier(s, cfg, total) for s in range(total + 3)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0
    assert values[7] == pytest.approx(0.5)  # halfway through the decay, both schedules
    assert values[total] == pytest.approx(0.0)
    assert values[total + 1 :] == [values[total]] * 2  # clamped past the end
    decay = values[2 : total + 1]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))


def test_lr_multiplier_cosine_and_linear_follow_their_formulas():
    total, warm = 20, 0
    for step in range(total):
        progress = step / total
        cos = lr_multiplier(step, OptimConfig(warmup_steps=warm, schedule="cosine"), total)
        lin = lr_multiplier(step, OptimConfig(warmup_steps=warm, schedule="linear"), total)
        assert cos == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)))
        assert lin == pytest.approx(1 - progress)


# --- Learner.step ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sdpo", "grpo"])
def test_learner_step_changes_the_trainable_parameters_and_returns_finite_metrics(algorithm):
    model = tiny_llama()
    cfg = run_config(algorithm)
    learner = Learner(model, PAD, cfg)
    assert (learner.teacher is None) == (algorithm == "grpo")
    batch = make_batch(model, [1.0, 0.0, 0.0, 1.0], 2, [3, 2, 4, 3], [2, 3, 1, 4])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = learner.step(batch)

    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # weight decay is off: every change is a gradient step
    assert model.training  # the learner trains in train mode
    expected = {"loss", "lr", "grad_norm", "teacher_signal_frac", "entropy"}
    expected |= (
        {"distill_loss", "log_ratio_mean", "teacher_gap"} if algorithm == "sdpo" else {"grpo_loss"}
    )
    assert expected <= result.metrics.keys()
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["grad_norm"] > 0
    assert result.metrics["lr"] == cfg.optim.lr
    assert [len(r) for r in result.log_ratios] == [len(s.response_ids) for s in batch.samples]
    assert learner.steps_done == 1
    assert all(p.grad is None for p in model.parameters())  # gradients cleared for the next step


def test_step_health_is_measured_before_the_update_and_measure_does_not_train():
    """The step's `teacher_gap` and `entropy` are those of the weights it starts from:
    `Learner.measure` on the same batch before the step gives the same numbers (the model
    has no dropout, so train and eval mode agree) and changes nothing."""
    model = tiny_llama()
    learner = Learner(model, PAD, run_config("sdpo", lr=0.5))
    batch = make_batch(model, [1.0, 0.0, 0.0, 1.0], 2, [3, 2, 4, 3], [2, 3, 1, 4])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    measured = learner.measure(batch)

    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert learner.steps_done == 0
    assert measured["teacher_gap"] > 0 and measured["entropy"] > 0
    metrics = learner.step(batch).metrics
    assert metrics["teacher_gap"] == pytest.approx(measured["teacher_gap"], rel=1e-5)
    assert metrics["entropy"] == pytest.approx(measured["entropy"], rel=1e-5)
    assert learner.measure(batch)["teacher_gap"] != pytest.approx(measured["teacher_gap"])
    # the sdpo preset's loss is this very measure: reverse KL, full logits, token mean
    assert metrics["distill_loss"] == pytest.approx(metrics["teacher_gap"], rel=1e-5)


def gradients_of_one_step(model, cfg, batch) -> tuple[list[torch.Tensor], dict[str, float]]:
    """The gradients the optimiser steps with (captured by a pre-step hook) and the metrics."""
    learner = Learner(model, PAD, cfg)
    captured: list[torch.Tensor] = []
    learner.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: captured.extend(
            p.grad.detach().clone() for group in opt.param_groups for p in group["params"]
        )
    )
    metrics = learner.step(batch).metrics
    return captured, metrics


def assert_accumulation_matches(algorithm: str, batch: Batch, model, aggregation: str) -> None:
    cfg_one = preset(
        algorithm, {"loss": {"aggregation": aggregation}, "optim": {"grad_clip": None}}
    )
    cfg_two = preset(
        algorithm,
        {
            "loss": {"aggregation": aggregation},
            "optim": {"grad_clip": None, "grad_accumulation": 2},
        },
    )
    grads_one, metrics_one = gradients_of_one_step(copy.deepcopy(model), cfg_one, batch)
    grads_two, metrics_two = gradients_of_one_step(copy.deepcopy(model), cfg_two, batch)
    assert len(grads_one) == len(grads_two) > 0
    assert any(g.abs().max() > 0 for g in grads_one)
    for g1, g2 in zip(grads_one, grads_two, strict=True):
        torch.testing.assert_close(g2, g1, atol=1e-6, rtol=1e-4)
    assert metrics_two["loss"] == pytest.approx(metrics_one["loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("algorithm", ["sdpo", "grpo"])
def test_two_micro_batches_give_the_full_batch_gradient_when_they_hold_equal_token_counts(
    algorithm,
):
    """token_mean: each micro-batch's mean is weighted by its share of *samples*, which is
    its share of tokens only when the micro-batches hold the same number of tokens."""
    model = tiny_llama()
    batch = make_batch(model, [1.0, 0.0, 0.0, 1.0], 2, [3, 2, 4, 1], [3, 3, 3, 3])
    assert [len(m.samples) for m in batch.split(2)] == [2, 2]
    assert_accumulation_matches(algorithm, batch, model, "token_mean")


@pytest.mark.parametrize("algorithm", ["sdpo", "grpo"])
def test_two_micro_batches_give_the_full_batch_gradient_under_sequence_mean_for_any_lengths(
    algorithm,
):
    model = tiny_llama()
    batch = make_batch(model, [1.0, 0.0, 0.0, 1.0], 2, [3, 2, 4, 1], [1, 2, 4, 5])
    assert_accumulation_matches(algorithm, batch, model, "sequence_mean")


def test_grpo_ratio_is_one_on_policy_at_any_sampling_temperature():
    """The surrogate recomputes log-probs at the sampler's temperature, so ratio = 1."""
    from trainer.losses import LossInputs, policy_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 7, requires_grad=True)  # [B, T, V]
    ids = torch.randint(0, 7, (4, 3))
    sampler_logp = (logits.detach() / 0.7).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    inputs = LossInputs(
        response_ids=ids,
        response_mask=torch.ones(4, 3),
        sampler_logp=sampler_logp,
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        group_size=2,
        has_teacher_signal=torch.ones(4, dtype=torch.bool),
        truncated=torch.zeros(4, dtype=torch.bool),
        sampling_temperature=0.7,
    )
    cfg = preset("grpo").loss
    loss, _, _ = policy_loss(logits, None, inputs, cfg)
    # With ratio 1 the surrogate is -mean(A), and the two groups' advantages cancel exactly;
    # a ratio other than 1 (log-probs at another temperature) would weight them unevenly.
    assert abs(loss.item()) < 1e-6
    loss.backward()
    assert logits.grad.abs().sum() > 0
