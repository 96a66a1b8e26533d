"""How healthy a batch looks to the trainer: pure functions of tensors (docs/algorithm.md
"Run health").

Computed from the logits of the loss pass, before the optimiser step and without gradient:
`teacher_gap`, the per-token divergence the teacher could still close, and `entropy`, how
spread the student's sampling distribution still is. `trainer.step.Learner` adds them to
each step's metrics; `trainer.probe` measures them on a model before any training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.losses import LossInputs, divergence


def token_entropy(logp: Tensor) -> Tensor:
    """H_t = -sum_v p log p of a normalised log-distribution (docs/algorithm.md "Run health").

    -inf entries (masked vocabulary) contribute 0.

    logp     # [B, T, V]
    returns  # [B, T]
    """
    p_logp = torch.where(logp.isfinite(), logp.exp() * logp, 0.0)  # [B, T, V]
    return -p_logp.sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> float | None:
    """Mean of `values` where `mask` is set; None when the mask is empty.  [B, T], [B, T]"""
    chosen = values[mask.bool()]
    return chosen.mean().item() if chosen.numel() else None


# Vocabulary-sized float32 copies are made a few rows at a time: the loss pass's own copies
# are still alive (kept for the backward pass), and these must not double its memory.
CHUNK_ELEMENTS = 1 << 26  # logits entries per chunk of rows (256 MiB in float32)


def _row_chunks(*logits: Tensor) -> zip:
    """The logits split along the batch into chunks of about CHUNK_ELEMENTS entries."""
    per_row = max(1, logits[0][0].numel()) if logits[0].shape[0] else 1
    rows = max(1, CHUNK_ELEMENTS // per_row)
    return zip(*(x.detach().split(rows) for x in logits), strict=True)


@torch.no_grad()
def sampling_entropy(
    student_logits: Tensor, temperature: float, response_mask: Tensor
) -> float | None:
    """`entropy`: the mean per-token entropy of the student's sampling distribution (the
    logits at the sampling temperature, before top-p / top-k) over the response tokens the
    model produced (docs/algorithm.md "Run health"); None without any.

    student_logits  # [B, T, V]
    response_mask   # [B, T] 1 for model tokens
    """
    entropy = torch.cat(  # [B, T]
        [
            token_entropy((chunk.float() / temperature).log_softmax(-1))
            for (chunk,) in _row_chunks(student_logits)
        ]
    )
    return masked_mean(entropy, response_mask)


@torch.no_grad()
def teacher_gap(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_mask: Tensor,
    has_teacher_signal: Tensor,
) -> float | None:
    """`teacher_gap`: the mean per-token reverse KL(pi || q) over the whole vocabulary, at
    temperature 1, over the response tokens of the samples with a teacher signal
    (docs/algorithm.md "Run health"); None when no sample has one. Whatever the run's loss,
    the same measure, so runs and probes compare.

    student_logits      # [B, T, V]
    teacher_logits      # [B, T, V]
    response_mask       # [B, T] 1 for model tokens
    has_teacher_signal  # [B] bool
    """
    kl = torch.cat(  # [B, T]
        [
            divergence(student.float().log_softmax(-1), teacher.float().log_softmax(-1), 1.0)
            for student, teacher in _row_chunks(student_logits, teacher_logits)
        ]
    )
    mask = response_mask.float() * has_teacher_signal.float().unsqueeze(-1)  # [B, T]
    return masked_mean(kl, mask)


@torch.no_grad()
def batch_health(
    student_logits: Tensor, teacher_logits: Tensor | None, batch: LossInputs
) -> dict[str, float]:
    """The step metrics `entropy` and, when there are teacher logits, `teacher_gap`; a
    measure with no token to average over is left out.

    student_logits  # [B, T, V]
    teacher_logits  # [B, T, V] or None
    """
    found = {
        "entropy": sampling_entropy(student_logits, batch.sampling_temperature, batch.response_mask)
    }
    if teacher_logits is not None:
        found["teacher_gap"] = teacher_gap(
            student_logits, teacher_logits, batch.response_mask, batch.has_teacher_signal
        )
    return {name: value for name, value in found.items() if value is not None}
