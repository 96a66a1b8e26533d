"""Self-distillation and GRPO losses as pure functions of tensors (docs/algorithm.md).

Shapes: B samples, T response positions, V vocabulary, K gathered ids (top-k), N = B rewards
laid out group-contiguous (P prompts x G samples). Log-probabilities are natural logs.
Everything here is stateless; `policy_loss` is the one entry point the training step calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trainer.config import DistillConfig, LossConfig

# Upper clamp on the log of the gathered top-k mass before taking log(1 - mass): when the k ids
# hold (numerically) all of the mass, the tail bucket gets ~1e-7 instead of log(0) = -inf.
TAIL_LOGSUMEXP_MAX = -1e-7


@dataclass
class LossInputs:
    """Per-batch tensors `policy_loss` needs besides the logits."""

    response_ids: Tensor  # [B, T] long, the student's sampled tokens y_t
    response_mask: Tensor  # [B, T] 1 for model tokens, 0 for padding and environment/tool tokens
    sampler_logp: Tensor  # [B, T] log pi_sampler(y_t), recorded when the response was sampled
    rewards: Tensor  # [B] one scalar per sample, group-contiguous
    group_size: int  # G samples per prompt
    has_teacher_signal: Tensor  # [B] bool, False when there was no feedback and no sibling
    truncated: Tensor  # [B] bool, response cut off by the token budget
    sampling_temperature: float = 1.0  # temperature of sampler_logp; the surrogate uses it too

    def select(self, rows: slice, width: int) -> LossInputs:
        """The inputs of `rows` only, cut to `width` response positions."""
        return LossInputs(
            response_ids=self.response_ids[rows, :width],
            response_mask=self.response_mask[rows, :width],
            sampler_logp=self.sampler_logp[rows, :width],
            rewards=self.rewards[rows],
            group_size=self.group_size,
            has_teacher_signal=self.has_teacher_signal[rows],
            truncated=self.truncated[rows],
            sampling_temperature=self.sampling_temperature,
        )


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(P || Q) = sum_v P (log P - log Q) over the last dim.  [..., V] -> [...]

    -inf entries (masked vocabulary) are clamped to the dtype's min so that 0 * log 0 = 0.
    """
    floor = torch.finfo(logp.dtype).min
    logp, logq = logp.clamp(min=floor), logq.clamp(min=floor)
    return (logp.exp() * (logp - logq)).sum(-1)


def divergence(logp_student: Tensor, logp_teacher: Tensor, alpha: float) -> Tensor:
    """Per-position D(S, T) of two normalised log-distributions (docs/algorithm.md "Divergences").

    alpha = 0: forward KL(T || S); alpha = 1: reverse KL(S || T); in between the generalised
    JSD with M = (1-alpha) S + alpha T: D = (1-alpha) KL(S || M) + alpha KL(T || M). Note that
    JSD(alpha) ~ alpha * KL(T || S) as alpha -> 0 and ~ (1-alpha) * KL(S || T) as alpha -> 1.
    The caller passes the teacher detached; gradients flow into whatever is not.

    logp_student  # [..., V]
    logp_teacher  # [..., V]
    returns       # [...]  (e.g. [B, T])
    """
    if alpha == 0.0:
        return _kl(logp_teacher, logp_student)
    if alpha == 1.0:
        return _kl(logp_student, logp_teacher)
    logp_mixture = torch.logaddexp(  # [..., V]  log M = logsumexp of the two weighted terms
        logp_student + math.log1p(-alpha), logp_teacher + math.log(alpha)
    )
    return (1 - alpha) * _kl(logp_student, logp_mixture) + alpha * _kl(logp_teacher, logp_mixture)


def topk_support(
    logp_student: Tensor, logp_teacher: Tensor, k: int, tail: bool
) -> tuple[Tensor, Tensor]:
    """Both distributions restricted to the student's top-k ids (docs/algorithm.md "Supports").

    The ids come from the detached student. tail=True appends one bucket per distribution with
    the leftover mass log(1 - sum exp(logp_topk)) = log(-expm1(logsumexp(logp_topk))), the
    logsumexp clamped at TAIL_LOGSUMEXP_MAX so the bucket stays finite; tail=False renormalises
    over the k ids. k larger than V is taken as V.

    logp_student  # [B, T, V]
    logp_teacher  # [B, T, V]
    returns       # ([B, T, K+1], [B, T, K+1]) with tail, else ([B, T, K], [B, T, K])
    """
    k = min(k, logp_student.shape[-1])
    topk_ids = logp_student.detach().topk(k, dim=-1).indices  # [B, T, K]
    logp_student_topk = logp_student.gather(-1, topk_ids)  # [B, T, K]
    logp_teacher_topk = logp_teacher.gather(-1, topk_ids)  # [B, T, K]
    if not tail:
        return logp_student_topk.log_softmax(-1), logp_teacher_topk.log_softmax(-1)

    def with_tail(logp_topk: Tensor) -> Tensor:  # [B, T, K] -> [B, T, K+1]
        log_mass = logp_topk.logsumexp(-1, keepdim=True).clamp(max=TAIL_LOGSUMEXP_MAX)
        log_tail = torch.log(-torch.expm1(log_mass))  # [B, T, 1]
        return torch.cat([logp_topk, log_tail], dim=-1)

    return with_tail(logp_student_topk), with_tail(logp_teacher_topk)


def sampled_token_advantage(logp_student_token: Tensor, logp_teacher_token: Tensor) -> Tensor:
    """A_t = sg[log q(y_t) - log pi(y_t)] (docs/algorithm.md "Supports").  [B, T]"""
    return (logp_teacher_token - logp_student_token).detach()


def sampling_token_logp(student_logits: Tensor, batch: LossInputs) -> Tensor:
    """log pi(y_t) at the sampling temperature, the scale of batch.sampler_logp.  -> [B, T]"""
    logits_at_sampling = student_logits.float() / batch.sampling_temperature
    return _token_logp(logits_at_sampling.log_softmax(-1), batch.response_ids)


@torch.no_grad()
def sampler_gap(
    trainer_logp: Tensor, batch: LossInputs, whole_tokens: Tensor | None = None
) -> dict[str, float]:
    """How far the sampler's log-probs of the sampled tokens are from the trainer's
    (`trainer_logp`, sampling_token_logp), before this step's update: the two engines'
    numerics when the batch is on-policy (another sampler, vLLM, computes them its own
    way), plus the policy's drift since sampling when it is not. Mean and max over
    response tokens; with `whole_tokens` (the response tokens of the whole batch these
    rows belong to) the mean is these rows' share of the whole batch's."""
    gap = (trainer_logp.detach() - batch.sampler_logp).abs()[batch.response_mask.bool()]
    if gap.numel() == 0:
        gap = torch.zeros(1)
    mean = gap.mean() if whole_tokens is None else gap.sum() / whole_tokens.clamp(min=1)
    return {
        "sampler_logprob_gap_mean": mean.item(),
        "sampler_logprob_gap_max": gap.max().item(),
    }


def _token_logp(logp: Tensor, token_ids: Tensor) -> Tensor:
    """log p(y_t) gathered at the sampled ids.  [B, T, V], [B, T] -> [B, T]"""
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def distill_token_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_ids: Tensor,
    cfg: DistillConfig,
    sampler_logp: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token self-distillation loss (docs/algorithm.md "Supports", "Stabilisers").

    Both logits are divided by cfg.temperature and log-softmaxed in float32; the teacher is
    detached here. Supports:
    - full_logits: D over the whole vocabulary;
    - topk_logits: D over the student's top-k ids (+ tail bucket when cfg.topk_tail);
    - sampled_token: the reverse-KL estimator -A_t * log pi(y_t) (cfg.alpha is not used).
    cfg.token_clip clamps each token's D at c (a clamped token then gets no gradient); for
    sampled_token, where the per-token estimate has no sign, it clamps the advantage to [-c, c].
    cfg.is_clip with sampler_logp: the loss is multiplied by
    rho = sg[exp(log pi(y_t) - sampler_logp)] clamped at is_clip. log pi(y_t) here is at
    cfg.temperature, so sampler_logp must be on the same scale.

    student_logits  # [B, T, V]
    teacher_logits  # [B, T, V]
    response_ids    # [B, T] long
    sampler_logp    # [B, T] or None
    returns (loss_per_token [B, T], log_ratio [B, T] = sg[log q(y_t) - log pi(y_t)])
    """
    logp_student = (student_logits.float() / cfg.temperature).log_softmax(-1)  # [B, T, V]
    logp_teacher = (teacher_logits.detach().float() / cfg.temperature).log_softmax(-1)  # [B, T, V]
    logp_student_token = _token_logp(logp_student, response_ids)  # [B, T]
    logp_teacher_token = _token_logp(logp_teacher, response_ids)  # [B, T]
    log_ratio = sampled_token_advantage(logp_student_token, logp_teacher_token)  # [B, T]

    if cfg.support == "sampled_token":
        advantage = log_ratio  # [B, T]
        if cfg.token_clip is not None:
            advantage = advantage.clamp(-cfg.token_clip, cfg.token_clip)
        loss_per_token = -advantage * logp_student_token  # [B, T]
    else:
        if cfg.support == "topk_logits":
            logp_student, logp_teacher = topk_support(
                logp_student, logp_teacher, cfg.topk, cfg.topk_tail
            )  # [B, T, K(+1)]
        loss_per_token = divergence(logp_student, logp_teacher, cfg.alpha)  # [B, T]
        if cfg.token_clip is not None:
            loss_per_token = loss_per_token.clamp(max=cfg.token_clip)

    if cfg.is_clip is not None and sampler_logp is not None:
        is_ratio = (logp_student_token - sampler_logp).exp().detach().clamp(max=cfg.is_clip)
        loss_per_token = loss_per_token * is_ratio  # [B, T]
    return loss_per_token, log_ratio


def grpo_advantages(
    rewards: Tensor, group_size: int, scaling: Literal["group", "batch", "none"], eps: float
) -> Tensor:
    """A = (r - mean_group(r)) / (std + eps) per sample (docs/algorithm.md "GRPO").

    std is the unbiased group std ("group"), the unbiased std of all N rewards ("batch"), or
    no division ("none"). A group (or batch) of one sample has std 0 and advantage 0.

    rewards  # [N] group-contiguous, N = P * G
    returns  # [N]
    """
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    rewards_per_group = rewards.float().view(-1, group_size)  # [P, G]
    centered = rewards_per_group - rewards_per_group.mean(dim=1, keepdim=True)  # [P, G]
    if scaling == "none":
        return centered.flatten()
    if scaling == "group":
        std = _std(rewards_per_group, dim=1)  # [P, 1]
    elif scaling == "batch":
        std = _std(rewards_per_group.flatten(), dim=0)  # [1]
    else:
        raise ValueError(f"unknown advantage scaling {scaling!r}")
    return (centered / (std + eps)).flatten()


def _std(x: Tensor, dim: int) -> Tensor:
    """Unbiased std along dim (keepdim), 0 where there is a single element."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.narrow(dim, 0, 1))
    return x.std(dim=dim, keepdim=True)


def clipped_surrogate(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, epsilon: float, epsilon_high: float | None
) -> Tensor:
    """Per-token PPO/GRPO loss -min(r A, clip(r, 1-eps, 1+eps_high) A) (docs/algorithm.md "GRPO").

    logp        # [B, T] log pi_theta(y_t), with grad
    logp_old    # [B, T] log-probs of the policy that sampled (detached here)
    advantages  # [B, T]
    returns     # [B, T]
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio = (logp - logp_old.detach()).exp()  # [B, T]
    pg_loss_unclipped = ratio * advantages
    pg_loss_clipped = ratio.clamp(1 - epsilon, 1 + epsilon_high) * advantages
    return -torch.min(pg_loss_unclipped, pg_loss_clipped)


def aggregate(
    loss_per_token: Tensor,
    mask: Tensor,
    how: Literal["token_mean", "sequence_mean"],
    whole_mask: Tensor | None = None,
) -> Tensor:
    """Masked mean of a per-token loss (docs/algorithm.md "Aggregation and masks").  -> scalar

    token_mean: over all unmasked tokens of the batch. sequence_mean: per-sequence mean, then
    the mean over sequences with at least one unmasked token. An all-zero mask gives 0 with the
    graph intact; masked positions never leak (not even inf/NaN ones). With `whole_mask`, the
    mask of the whole batch these rows are part of, the mean's denominator is the whole
    batch's: the shares of all its parts add up to its mean (docs/algorithm.md "Several
    processes").

    loss_per_token  # [B, T]
    mask            # [B, T] 0/1
    whole_mask      # [B', T'] 0/1, or None
    """
    mask = mask.to(loss_per_token.dtype)
    whole = mask if whole_mask is None else whole_mask.to(loss_per_token.dtype)
    masked_loss = torch.where(mask > 0, loss_per_token * mask, 0.0)  # [B, T]
    if how == "token_mean":
        return masked_loss.sum() / whole.sum().clamp(min=1)
    if how == "sequence_mean":
        tokens_per_seq = mask.sum(-1)  # [B]
        loss_per_seq = masked_loss.sum(-1) / tokens_per_seq.clamp(min=1)  # [B]
        n_seqs = (whole.sum(-1) > 0).sum().clamp(min=1)
        return loss_per_seq.sum() / n_seqs
    raise ValueError(f"unknown aggregation {how!r}")


def loss_mask(
    response_mask: Tensor,
    has_teacher_signal: Tensor,
    truncated: Tensor,
    mask_truncated: bool,
    for_distill: bool,
) -> Tensor:
    """Which tokens a loss term sees (docs/algorithm.md "Aggregation and masks").  -> [B, T] float

    Response model tokens only (response_mask is 0 on padding and environment/tool tokens);
    for the distillation term, minus samples without teacher signal; minus truncated samples
    when mask_truncated.

    response_mask       # [B, T]
    has_teacher_signal  # [B] bool
    truncated           # [B] bool
    """
    mask = response_mask.float()  # [B, T]
    if for_distill:
        mask = mask * has_teacher_signal.float().unsqueeze(-1)
    if mask_truncated:
        mask = mask * (~truncated.bool()).float().unsqueeze(-1)
    return mask


def policy_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    batch: LossInputs,
    cfg: LossConfig,
    rows: slice | None = None,
) -> tuple[Tensor, dict[str, float], Tensor]:
    """The training loss: GRPO and self-distillation mixed (docs/algorithm.md "Mixing").

    Loss mix: L = (1-w) L_grpo + w L_distill, w = cfg.distill_weight; a term with weight 0 is
    not computed and teacher_logits may be None when w = 0. Advantage mix (cfg.advantage_mix =
    lambda, sampled_token only): A_t = lambda A_grpo + (1-lambda) A_sd,t in one clipped
    surrogate, which replaces both terms; samples without teacher signal get A_sd = 0.
    The surrogate's log pi(y_t) comes from the student logits at batch.sampling_temperature against
    logp_old = batch.sampler_logp; A_sd and the distillation term use cfg.distill.temperature.

    `rows`: the rows of `batch` the logits hold, when this process trains a part of the
    batch (docs/algorithm.md "Several processes"). The GRPO advantages and the denominator
    of every mean are then the whole batch's, so the loss and the mean metrics are this
    part's shares, which add up over the parts to the whole batch's; the logits may be
    narrower than the batch (the part's own response width).

    student_logits  # [B, T, V] with grad, aligned with batch.response_ids (or its `rows`)
    teacher_logits  # [B, T, V] or None
    returns (loss scalar, metrics, log_ratio [B, T]; zeros when the teacher is not used)
    """
    w, mix = cfg.distill_weight, cfg.advantage_mix
    needs_teacher = w > 0 or mix is not None
    if needs_teacher and teacher_logits is None:
        raise ValueError(
            "teacher_logits are required when distill_weight > 0 or advantage_mix is set"
        )
    whole = batch
    if rows is not None:
        batch = whole.select(rows, student_logits.shape[1])
    grpo_mask, distill_mask = (  # [B, T]
        loss_mask(
            batch.response_mask, batch.has_teacher_signal, batch.truncated, cfg.mask_truncated, d
        )
        for d in (False, True)
    )
    grpo_whole = distill_whole = None  # the whole batch's masks, when these are some of its rows
    if rows is not None:
        grpo_whole, distill_whole = (
            loss_mask(
                whole.response_mask,
                whole.has_teacher_signal,
                whole.truncated,
                cfg.mask_truncated,
                d,
            )
            for d in (False, True)
        )
    log_ratio = torch.zeros_like(batch.sampler_logp, dtype=torch.float32)  # [B, T]
    use_grpo = mix is not None or w < 1
    distill_loss = grpo_loss = None

    if (
        use_grpo
    ):  # per-sample GRPO advantage on every token, log pi(y_t) at the sampling temperature
        adv_grpo = grpo_advantages(  # [B]
            whole.rewards, whole.group_size, cfg.grpo.scaling, cfg.grpo.eps_std
        )
        if rows is not None:
            adv_grpo = adv_grpo[rows]
        logp_token = sampling_token_logp(student_logits, batch)  # [B, T]
        advantages = adv_grpo.unsqueeze(-1).expand_as(logp_token)  # [B, T]
    else:  # only the sampler gap needs it
        with torch.no_grad():
            logp_token = sampling_token_logp(student_logits, batch)  # [B, T]

    if mix is not None:  # advantage mix: one surrogate with A = lambda A_grpo + (1-lambda) A_sd
        logp_student = (student_logits.float() / cfg.distill.temperature).log_softmax(-1)
        logp_teacher = (teacher_logits.detach().float() / cfg.distill.temperature).log_softmax(-1)
        log_ratio = sampled_token_advantage(  # [B, T]
            _token_logp(logp_student, batch.response_ids),
            _token_logp(logp_teacher, batch.response_ids),
        )
        adv_sd = log_ratio * batch.has_teacher_signal.float().unsqueeze(-1)  # [B, T]
        if cfg.distill.token_clip is not None:
            adv_sd = adv_sd.clamp(-cfg.distill.token_clip, cfg.distill.token_clip)
        advantages = mix * advantages + (1 - mix) * adv_sd  # [B, T]
        pg_loss = clipped_surrogate(
            logp_token, batch.sampler_logp, advantages, cfg.grpo.epsilon, cfg.grpo.epsilon_high
        )  # [B, T]
        loss = aggregate(pg_loss, grpo_mask, cfg.aggregation, grpo_whole)
    else:  # loss mix; at least one of the two terms has a nonzero weight
        loss = 0.0
        if w < 1:
            pg_loss = clipped_surrogate(
                logp_token, batch.sampler_logp, advantages, cfg.grpo.epsilon, cfg.grpo.epsilon_high
            )  # [B, T]
            grpo_loss = aggregate(pg_loss, grpo_mask, cfg.aggregation, grpo_whole)
            loss = loss + (1 - w) * grpo_loss
        if w > 0:
            distill_per_token, log_ratio = distill_token_loss(  # [B, T], [B, T]
                student_logits, teacher_logits, batch.response_ids, cfg.distill, batch.sampler_logp
            )
            distill_loss = aggregate(
                distill_per_token, distill_mask, cfg.aggregation, distill_whole
            )
            loss = loss + w * distill_loss

    whole_tokens = None if rows is None else whole.response_mask.sum()
    metrics = {"loss": loss.item(), **sampler_gap(logp_token, batch, whole_tokens)}
    if distill_loss is not None:
        metrics["distill_loss"] = distill_loss.item()
    if grpo_loss is not None:
        metrics["grpo_loss"] = grpo_loss.item()
    if needs_teacher:
        metrics["log_ratio_mean"] = aggregate(
            log_ratio, distill_mask, "token_mean", distill_whole
        ).item()
    signal = batch.has_teacher_signal.float()
    metrics["teacher_signal_frac"] = (
        signal.mean() if rows is None else signal.sum() / len(whole.rewards)
    ).item()
    if use_grpo:
        metrics["advantage_abs_mean"] = aggregate(
            advantages.abs(), grpo_mask, "token_mean", grpo_whole
        ).item()
    return loss, metrics, log_ratio
