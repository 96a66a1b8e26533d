"""Tests of trainer/losses.py against hand computations (docs/algorithm.md)."""

import math

import pytest
import torch

from trainer.config import DistillConfig, GRPOConfig, LossConfig
from trainer.losses import (
    LossInputs,
    aggregate,
    clipped_surrogate,
    distill_token_loss,
    divergence,
    grpo_advantages,
    loss_mask,
    policy_loss,
    sampled_token_advantage,
    topk_support,
)

S = [0.5, 0.3, 0.2]  # student distribution at one position
T = [0.2, 0.5, 0.3]  # teacher distribution at one position


def _logp(p: list[float]) -> torch.Tensor:
    return torch.tensor(p, dtype=torch.float64).log().view(1, 1, -1)  # [1, 1, 3]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _random_logits(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _close(a, b, tol: float = 1e-6) -> bool:
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), atol=tol)


# --- divergences -------------------------------------------------------------------------------


def test_alpha_zero_is_forward_kl_teacher_to_student():
    expected = 0.2 * math.log(0.2 / 0.5) + 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.2)
    assert _close(divergence(_logp(S), _logp(T), 0.0), [[expected]])


def test_alpha_one_is_reverse_kl_student_to_teacher():
    expected = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    assert _close(divergence(_logp(S), _logp(T), 1.0), [[expected]])


def test_intermediate_alpha_is_generalised_jsd_with_weighted_mixture():
    alpha = 0.3
    mixture = [(1 - alpha) * s + alpha * t for s, t in zip(S, T, strict=True)]
    expected = (1 - alpha) * _kl(S, mixture) + alpha * _kl(T, mixture)
    assert mixture[0] == pytest.approx(0.41)
    assert _close(divergence(_logp(S), _logp(T), alpha), [[expected]])


def test_jsd_half_is_symmetric():
    assert _close(divergence(_logp(S), _logp(T), 0.5), divergence(_logp(T), _logp(S), 0.5))
    assert not _close(divergence(_logp(S), _logp(T), 0.3), divergence(_logp(T), _logp(S), 0.3))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_divergence_is_zero_for_identical_distributions(alpha):
    assert _close(divergence(_logp(S), _logp(S), alpha), [[0.0]], tol=1e-12)
    assert divergence(_logp(S), _logp(T), alpha).item() > 1e-3


def test_jsd_over_alpha_tends_to_forward_kl_and_over_one_minus_alpha_to_reverse_kl():
    small = 1e-5
    forward, reverse = _kl(T, S), _kl(S, T)
    assert divergence(_logp(S), _logp(T), small).item() / small == pytest.approx(forward, rel=1e-3)
    assert divergence(_logp(S), _logp(T), 1 - small).item() / small == pytest.approx(
        reverse, rel=1e-3
    )


def test_divergence_treats_masked_vocabulary_entries_as_zero_mass():
    logp_student = torch.tensor([[[math.log(0.5), math.log(0.5), -math.inf]]])
    logp_teacher = torch.tensor([[[math.log(0.8), math.log(0.2), -math.inf]]])
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    for alpha in (0.0, 0.5, 1.0):
        assert torch.isfinite(divergence(logp_student, logp_teacher, alpha)).all()
    assert _close(divergence(logp_student, logp_teacher, 1.0), [[expected]], tol=1e-5)


# --- top-k support -------------------------------------------------------------------------------


def test_topk_with_whole_vocabulary_and_tail_equals_full_logits():
    student, teacher = _random_logits(2, 3, 7, seed=1), _random_logits(2, 3, 7, seed=2)
    for alpha in (0.0, 0.5, 1.0):
        full = distill_token_loss(
            student, teacher, torch.zeros(2, 3, dtype=torch.long), DistillConfig(alpha=alpha), None
        )[0]
        topk = distill_token_loss(
            student,
            teacher,
            torch.zeros(2, 3, dtype=torch.long),
            DistillConfig(alpha=alpha, support="topk_logits", topk=7),
            None,
        )[0]
        assert _close(topk, full, tol=1e-5)


def test_topk_gathers_at_the_students_top_ids_and_tail_makes_each_sum_to_one():
    logp_student = _random_logits(2, 3, 10, seed=3).log_softmax(-1)
    logp_teacher = _random_logits(2, 3, 10, seed=4).log_softmax(-1)
    student_k, teacher_k = topk_support(logp_student, logp_teacher, k=4, tail=True)
    assert student_k.shape == teacher_k.shape == (2, 3, 5)
    assert _close(student_k[..., :4], logp_student.topk(4, dim=-1).values)
    assert _close(student_k.exp().sum(-1), torch.ones(2, 3), tol=1e-6)
    assert _close(teacher_k.exp().sum(-1), torch.ones(2, 3), tol=1e-6)


def test_topk_tail_stays_finite_when_the_k_ids_hold_all_the_mass():
    logits = torch.tensor([[[60.0, 0.0, 0.0]]])  # top-1 holds 1 - 1e-26 of the mass
    student_k, teacher_k = topk_support(logits.log_softmax(-1), logits.log_softmax(-1), 1, True)
    assert torch.isfinite(student_k).all() and torch.isfinite(teacher_k).all()
    assert student_k[0, 0, 1].item() == pytest.approx(math.log(1e-7), abs=0.1)


def test_topk_without_tail_renormalises_over_the_k_ids():
    logp_student = _random_logits(2, 3, 10, seed=5).log_softmax(-1)
    logp_teacher = _random_logits(2, 3, 10, seed=6).log_softmax(-1)
    student_k, teacher_k = topk_support(logp_student, logp_teacher, k=4, tail=False)
    assert student_k.shape == (2, 3, 4)
    assert _close(student_k.exp().sum(-1), torch.ones(2, 3))
    assert _close(teacher_k.exp().sum(-1), torch.ones(2, 3))
    top_ids = logp_student.topk(4, dim=-1).indices
    assert _close(teacher_k, logp_teacher.gather(-1, top_ids).log_softmax(-1))


# --- sampled token -------------------------------------------------------------------------------


def test_sampled_token_advantage_is_detached_teacher_minus_student_logp():
    logp_student_token = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    advantage = sampled_token_advantage(logp_student_token, torch.tensor([[-0.5, -3.0]]))
    assert _close(advantage, [[0.5, -1.0]]) and not advantage.requires_grad


def _reverse_kl_grad(student_leaf: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Autograd of the full-vocabulary reverse KL at one position."""
    logp_student = student_leaf.log_softmax(-1)
    (grad,) = torch.autograd.grad(
        divergence(logp_student, teacher.log_softmax(-1), 1.0).sum(), student_leaf
    )
    return grad


def test_sampled_token_gradient_in_exact_expectation_equals_reverse_kl_gradient():
    vocab = 6
    student_leaf = _random_logits(vocab, seed=7).double().requires_grad_()
    teacher = _random_logits(vocab, seed=8).double()
    # One position per vocabulary entry y, each scored with y as the sampled token.
    loss_per_token, _ = distill_token_loss(
        student_leaf.expand(1, vocab, vocab),
        teacher.expand(1, vocab, vocab),
        torch.arange(vocab).view(1, vocab),
        DistillConfig(support="sampled_token"),
        None,
    )
    prob_student = student_leaf.detach().softmax(-1)  # E_y~pi as a weighted sum
    (expected_grad,) = torch.autograd.grad((prob_student * loss_per_token[0]).sum(), student_leaf)
    assert _close(expected_grad, _reverse_kl_grad(student_leaf, teacher), tol=1e-10)


def test_sampled_token_gradient_averaged_over_student_samples_points_along_reverse_kl_gradient():
    vocab, n_samples = 8, 4000
    student_leaf = _random_logits(vocab, seed=9).requires_grad_()
    teacher = _random_logits(vocab, seed=10)
    generator = torch.Generator().manual_seed(11)
    sampled = torch.multinomial(
        student_leaf.detach().softmax(-1), n_samples, True, generator=generator
    )
    loss_per_token, _ = distill_token_loss(
        student_leaf.expand(1, n_samples, vocab),
        teacher.expand(1, n_samples, vocab),
        sampled.view(1, n_samples),
        DistillConfig(support="sampled_token"),
        None,
    )
    (mc_grad,) = torch.autograd.grad(loss_per_token.mean(), student_leaf)
    cosine = torch.cosine_similarity(mc_grad, _reverse_kl_grad(student_leaf, teacher), dim=0)
    assert cosine.item() > 0.9


# --- stabilisers ---------------------------------------------------------------------------------


def test_token_clip_caps_each_tokens_divergence_and_keeps_smaller_ones():
    student, teacher = _random_logits(2, 5, 6, seed=12), _random_logits(2, 5, 6, seed=13)
    ids = torch.zeros(2, 5, dtype=torch.long)
    unclipped, _ = distill_token_loss(student, teacher, ids, DistillConfig(), None)
    clip = unclipped.median().item()
    clipped, _ = distill_token_loss(student, teacher, ids, DistillConfig(token_clip=clip), None)
    assert clipped.max().item() == pytest.approx(clip)
    below = unclipped <= clip
    assert _close(clipped[below], unclipped[below]) and (unclipped > clip).any()


def test_token_clip_caps_the_sampled_token_advantage_magnitude():
    student = torch.zeros(1, 2, 2)  # pi = [0.5, 0.5]
    teacher = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log().view(1, 2, 2)
    ids = torch.tensor([[0, 0]])  # advantages log(1.8) = 0.59 and log(0.2) = -1.61
    cfg = DistillConfig(support="sampled_token", token_clip=0.5)
    loss_per_token, log_ratio = distill_token_loss(student, teacher, ids, cfg, None)
    assert _close(log_ratio, [[math.log(1.8), math.log(0.2)]])
    assert _close(loss_per_token, [[-0.5 * math.log(0.5), 0.5 * math.log(0.5)]])


def test_is_clip_multiplies_the_loss_by_the_clamped_importance_ratio():
    student, teacher = _random_logits(1, 3, 5, seed=14), _random_logits(1, 3, 5, seed=15)
    ids = torch.tensor([[1, 2, 3]])
    base, _ = distill_token_loss(student, teacher, ids, DistillConfig(), None)
    logp_token = student.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    sampler_logp = logp_token - torch.tensor([[math.log(3.0), math.log(0.5), 0.0]])
    weighted, _ = distill_token_loss(
        student, teacher, ids, DistillConfig(is_clip=2.0), sampler_logp
    )
    assert _close(weighted, base * torch.tensor([[2.0, 0.5, 1.0]]), tol=1e-5)
    without_sampler, _ = distill_token_loss(student, teacher, ids, DistillConfig(is_clip=2.0), None)
    assert _close(without_sampler, base)


def test_temperature_divides_both_logits_before_the_softmax():
    student, teacher = _random_logits(2, 3, 5, seed=16), _random_logits(2, 3, 5, seed=17)
    ids = torch.zeros(2, 3, dtype=torch.long)
    for support in ("full_logits", "sampled_token"):
        hot, hot_ratio = distill_token_loss(
            student, teacher, ids, DistillConfig(support=support, temperature=2.0), None
        )
        scaled, scaled_ratio = distill_token_loss(
            student / 2, teacher / 2, ids, DistillConfig(support=support), None
        )
        plain, _ = distill_token_loss(student, teacher, ids, DistillConfig(support=support), None)
        assert _close(hot, scaled) and _close(hot_ratio, scaled_ratio)
        assert not _close(hot, plain, tol=1e-3)


def test_distill_loss_sends_no_gradient_to_the_teacher_and_returns_detached_log_ratio():
    student = _random_logits(1, 2, 4, seed=18).requires_grad_()
    teacher = _random_logits(1, 2, 4, seed=19).requires_grad_()
    ids = torch.tensor([[1, 3]])
    loss_per_token, log_ratio = distill_token_loss(
        student, teacher, ids, DistillConfig(alpha=0.5), None
    )
    loss_per_token.sum().backward()
    assert teacher.grad is None and student.grad is not None and not log_ratio.requires_grad
    expected = (teacher.log_softmax(-1) - student.log_softmax(-1)).gather(-1, ids.unsqueeze(-1))
    assert _close(log_ratio, expected.squeeze(-1).detach())


# --- GRPO --------------------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # two groups of 4


def test_grpo_group_scaling_divides_by_the_unbiased_group_std():
    advantages = grpo_advantages(REWARDS, 4, "group", 0.0)
    std_first, std_second = (
        math.sqrt(1 / 3),
        math.sqrt(0.25),
    )  # (4 * 0.25) / 3, (3 * 0.0625 + 0.5625) / 3
    expected = [0.5 / std_first, -0.5 / std_first, -0.5 / std_first, 0.5 / std_first]
    expected += [0.25 / std_second] * 3 + [-0.75 / std_second]
    assert _close(advantages, expected)


def test_grpo_batch_scaling_divides_group_centered_rewards_by_the_batch_std():
    batch_std = math.sqrt((5 * 0.375**2 + 3 * 0.625**2) / 7)  # mean 0.625
    expected = [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]
    assert _close(grpo_advantages(REWARDS, 4, "batch", 0.0), [a / batch_std for a in expected])


def test_grpo_none_scaling_only_centers_within_each_group():
    expected = [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]
    assert _close(grpo_advantages(REWARDS, 4, "none", 1e-6), expected)


def test_grpo_advantages_are_zero_for_uniform_groups_and_single_sample_groups():
    assert _close(grpo_advantages(torch.ones(4), 2, "group", 1e-6), torch.zeros(4))
    assert _close(grpo_advantages(torch.tensor([1.0, 0.0]), 1, "group", 1e-6), torch.zeros(2))
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(5), 2, "group", 1e-6)


def test_clipped_surrogate_clips_the_ratio_on_the_side_that_would_over_update():
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]])
    logp = ratio.log().requires_grad_()
    loss = clipped_surrogate(logp, torch.zeros(1, 5), advantages, 0.2, None)
    assert _close(loss, [[-1.2, 1.5, -0.5, 0.8, -1.1]])
    loss.sum().backward()
    assert _close(logp.grad, [[0.0, 1.5, -0.5, 0.0, -1.1]])  # clipped tokens get no gradient
    asymmetric = clipped_surrogate(ratio.log(), torch.zeros(1, 5), advantages, 0.2, 0.3)
    assert _close(asymmetric, [[-1.3, 1.5, -0.5, 0.8, -1.1]])


# --- aggregation and masks -------------------------------------------------------------------------


def test_token_mean_and_sequence_mean_on_a_hand_example():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "sequence_mean").item() == pytest.approx((2 + 4) / 2)


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean"])
def test_aggregate_of_an_all_masked_batch_is_zero_with_a_gradient_graph(how):
    logits = torch.tensor([[1.0, math.inf]], requires_grad=True)
    result = aggregate(logits * 2, torch.zeros(1, 2), how)
    assert result.item() == 0.0 and result.requires_grad
    result.backward()
    assert _close(logits.grad, torch.zeros(1, 2))


def test_loss_mask_keeps_model_tokens_and_drops_padding_and_environment_tokens():
    response_mask = torch.tensor(
        [[1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]]
    )  # row 0: tool output, pad
    no_flags = torch.zeros(2, dtype=torch.bool)
    mask = loss_mask(response_mask, ~no_flags, no_flags, mask_truncated=True, for_distill=True)
    assert mask.dtype == torch.float32
    assert _close(mask, response_mask.float())


def test_loss_mask_drops_samples_without_teacher_signal_from_distill_only():
    response_mask = torch.ones(3, 2)
    has_signal = torch.tensor([True, False, True])
    truncated = torch.zeros(3, dtype=torch.bool)
    distill = loss_mask(response_mask, has_signal, truncated, False, for_distill=True)
    grpo = loss_mask(response_mask, has_signal, truncated, False, for_distill=False)
    assert _close(distill, [[1, 1], [0, 0], [1, 1]]) and _close(grpo, torch.ones(3, 2))


def test_loss_mask_drops_truncated_samples_only_when_asked():
    response_mask, has_signal = torch.ones(2, 2), torch.ones(2, dtype=torch.bool)
    truncated = torch.tensor([False, True])
    for for_distill in (True, False):
        assert _close(
            loss_mask(response_mask, has_signal, truncated, True, for_distill), [[1, 1], [0, 0]]
        )
        assert _close(
            loss_mask(response_mask, has_signal, truncated, False, for_distill), torch.ones(2, 2)
        )


# --- policy_loss ---------------------------------------------------------------------------------------


def _batch(seed: int = 20) -> tuple[torch.Tensor, torch.Tensor, LossInputs]:
    student = _random_logits(4, 3, 5, seed=seed).requires_grad_()
    teacher = _random_logits(4, 3, 5, seed=seed + 1)
    ids = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 1], [2, 3, 4]])
    sampler_logp = student.detach().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) - 0.1
    batch = LossInputs(
        response_ids=ids,
        response_mask=torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 1, 0]]),
        sampler_logp=sampler_logp,
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        group_size=2,
        has_teacher_signal=torch.tensor([True, True, False, True]),
        truncated=torch.zeros(4, dtype=torch.bool),
    )
    return student, teacher, batch


def _terms(student, teacher, batch, cfg):
    masks = [
        loss_mask(batch.response_mask, batch.has_teacher_signal, batch.truncated, False, d)
        for d in (False, True)
    ]
    advantages = grpo_advantages(batch.rewards, 2, "group", 1e-6).view(-1, 1).expand(4, 3)
    logp = student.log_softmax(-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    pg_loss = clipped_surrogate(logp, batch.sampler_logp, advantages, 0.2, None)
    distill_per_token, _ = distill_token_loss(
        student, teacher, batch.response_ids, cfg.distill, batch.sampler_logp
    )
    return aggregate(pg_loss, masks[0], "token_mean"), aggregate(
        distill_per_token, masks[1], "token_mean"
    )


def test_policy_loss_with_zero_distill_weight_is_grpo_and_needs_no_teacher():
    student, teacher, batch = _batch()
    cfg = LossConfig(distill_weight=0.0)
    loss, metrics, log_ratio = policy_loss(student, None, batch, cfg)
    grpo_loss, _ = _terms(student, teacher, batch, cfg)
    assert _close(loss, grpo_loss) and "distill_loss" not in metrics
    assert metrics["grpo_loss"] == pytest.approx(grpo_loss.item())
    assert _close(log_ratio, torch.zeros(4, 3))
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_policy_loss_with_unit_distill_weight_is_the_distillation_term():
    student, teacher, batch = _batch()
    cfg = LossConfig(distill=DistillConfig(alpha=0.5), distill_weight=1.0)
    loss, metrics, log_ratio = policy_loss(student, teacher, batch, cfg)
    _, distill_loss = _terms(student, teacher, batch, cfg)
    assert _close(loss, distill_loss) and "grpo_loss" not in metrics
    assert metrics["teacher_signal_frac"] == pytest.approx(0.75)
    expected_ratio = distill_token_loss(student, teacher, batch.response_ids, cfg.distill, None)[1]
    assert _close(log_ratio, expected_ratio)
    with pytest.raises(ValueError):
        policy_loss(student, None, batch, cfg)


def test_policy_loss_with_half_weight_averages_the_two_terms():
    student, teacher, batch = _batch()
    cfg = LossConfig(distill_weight=0.5, grpo=GRPOConfig(epsilon=0.2))
    loss, metrics, _ = policy_loss(student, teacher, batch, cfg)
    grpo_loss, distill_loss = _terms(student, teacher, batch, cfg)
    assert _close(loss, (grpo_loss + distill_loss) / 2)
    assert metrics["loss"] == pytest.approx(((grpo_loss + distill_loss) / 2).item(), rel=1e-5)
    assert {"log_ratio_mean", "advantage_abs_mean", "distill_loss", "grpo_loss"} <= metrics.keys()


def test_policy_loss_advantage_mix_gives_the_hand_computed_surrogate():
    # pi = [0.5, 0.5] everywhere, on-policy sampler so every ratio is 1 and the loss is -mean(A).
    student = torch.zeros(2, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[0.8, 0.2]], [[0.8, 0.2]]]).log()
    batch = LossInputs(
        response_ids=torch.tensor([[0], [1]]),
        response_mask=torch.ones(2, 1),
        sampler_logp=torch.full((2, 1), math.log(0.5)),
        rewards=torch.tensor([1.0, 0.0]),
        group_size=2,
        has_teacher_signal=torch.tensor([True, True]),
        truncated=torch.zeros(2, dtype=torch.bool),
    )
    cfg = LossConfig(
        distill=DistillConfig(support="sampled_token"),
        advantage_mix=0.9,
        grpo=GRPOConfig(scaling="none"),
    )
    loss, metrics, log_ratio = policy_loss(student, teacher, batch, cfg)
    # A_grpo = [0.5, -0.5], A_sd = [log 1.6, log 0.4]; the GRPO parts cancel in the mean.
    assert loss.item() == pytest.approx(-0.1 * (math.log(1.6) + math.log(0.4)) / 2, rel=1e-5)
    assert _close(log_ratio, [[math.log(1.6)], [math.log(0.4)]])
    mixed = [0.9 * 0.5 + 0.1 * math.log(1.6), -0.9 * 0.5 + 0.1 * math.log(0.4)]
    assert metrics["advantage_abs_mean"] == pytest.approx(sum(map(abs, mixed)) / 2, rel=1e-5)
    batch.has_teacher_signal = torch.tensor([True, False])  # no signal: A_sd = 0 for sample 1
    loss_without_signal, _, _ = policy_loss(student, teacher, batch, cfg)
    assert loss_without_signal.item() == pytest.approx(-0.1 * math.log(1.6) / 2, rel=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(
            distill_weight=0.5, aggregation="sequence_mean", grpo=GRPOConfig(scaling="batch")
        ),
        LossConfig(
            distill_weight=0.0, advantage_mix=0.5, distill=DistillConfig(support="sampled_token")
        ),
    ],
    ids=["sdpo", "mixed-sequence-mean-batch-scaling", "advantage-mix"],
)
def test_the_shares_of_a_batchs_parts_add_up_to_its_loss_gradient_and_mean_metrics(cfg):
    """Several processes (docs/algorithm.md "Several processes"): each part of whole groups,
    its logits cut to the part's own response width, gives its share of the batch's."""
    student, teacher, batch = _batch()
    parts = [slice(0, 2), slice(2, 4)]
    widths = [3, 2]  # the second part's responses end before the last column
    batch.response_mask[2:, 2] = 0
    loss, metrics, log_ratio = policy_loss(student, teacher, batch, cfg)
    (grad,) = torch.autograd.grad(loss, student)
    shares = []
    for rows, width in zip(parts, widths, strict=True):
        leaf = student.detach()[rows, :width].clone().requires_grad_()
        share, part_metrics, part_log_ratio = policy_loss(
            leaf, teacher[rows, :width], batch, cfg, rows
        )
        (part_grad,) = torch.autograd.grad(share, leaf)
        assert _close(part_grad, grad[rows, :width])
        assert _close(part_log_ratio, log_ratio[rows, :width])
        shares.append((share, part_metrics))
    assert _close(sum(share for share, _ in shares), loss)
    for name, value in metrics.items():
        values = [part_metrics[name] for _, part_metrics in shares]
        combined = max(values) if name.endswith("_max") else sum(values)
        assert combined == pytest.approx(value, abs=1e-6), name
