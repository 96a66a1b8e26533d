"""Samplers: generate responses with the current policy and report their log-probs.

A sampler takes tokenised prompts and returns, per prompt, `n` responses with the
log-prob of every sampled token under the policy at the sampling temperature
(before top-p / top-k truncation, which only restricts what can be drawn). The
trainer recomputes the same quantity for importance weights and the GRPO ratio, so
on-policy ratios are exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from trainer.config import SamplingConfig


@dataclass
class Completion:
    """One sampled response: token ids (ending with EOS unless truncated) and their log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    truncated: bool


class Sampler(Protocol):
    def sample(
        self, prompts: Sequence[list[int]], n: int, params: SamplingConfig, *, greedy: bool = False
    ) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order."""
        ...


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, L] and attention mask [B, L]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


class TransformersSampler:
    """Batched `generate` on a transformers model (the policy itself, no copy)."""

    def __init__(self, model, tokenizer, *, max_batch: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @torch.no_grad()
    def sample(
        self, prompts: Sequence[list[int]], n: int, params: SamplingConfig, *, greedy: bool = False
    ) -> list[list[Completion]]:
        rows = [p for p in prompts for _ in range(n)]
        flat: list[Completion] = []
        for start in range(0, len(rows), self.max_batch):
            flat.extend(self._generate(rows[start : start + self.max_batch], params, greedy))
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate(
        self, rows: list[list[int]], params: SamplingConfig, greedy: bool
    ) -> list[Completion]:
        device = next(self.model.parameters()).device
        ids, mask = left_pad(rows, self.pad_id)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None if greedy else (params.top_k or None),
                max_new_tokens=params.max_new_tokens,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        finally:
            self.model.train(was_training)
        new_tokens = out.sequences[:, ids.shape[1] :]  # [B, T]
        temperature = 1.0 if greedy else params.temperature
        logits = torch.stack(out.logits, dim=1).float() / temperature  # [B, T, V], raw logits
        logprobs = logits.log_softmax(-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for tokens, lps in zip(new_tokens.tolist(), logprobs.tolist(), strict=True):
            if self.eos_id in tokens:
                end = tokens.index(self.eos_id) + 1
                completions.append(Completion(tokens[:end], lps[:end], truncated=False))
            else:
                completions.append(Completion(tokens, lps, truncated=True))
        return completions
