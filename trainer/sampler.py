"""Samplers: generate responses with the current policy and report their log-probs.

A sampler takes tokenised prompts and returns, per prompt, `n` responses with the
log-prob of every sampled token under the policy at the sampling temperature
(before top-p / top-k truncation, which only restricts what can be drawn). The
trainer recomputes the same quantity for importance weights and the GRPO ratio, so
on-policy ratios are exactly 1.

Randomness: given a `generator`, every draw comes from it, so a call is a pure function
of the weights, the prompts and the generator's seed (`sampling_seed(run seed, step)`
makes a step sampled again after a restart draw the same responses). Without one,
draws come from torch's global RNG, which other threads share and a restart resets.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from trainer.config import SamplingConfig
from trainer.distributed import is_sharded


@dataclass
class Completion:
    """One sampled response: token ids (ending with EOS unless truncated) and their log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    truncated: bool


class Sampler(Protocol):
    def sample(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingConfig,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order; random draws from `generator`
        (on the model's device) when given."""
        ...

    def sync(self, policy: torch.nn.Module) -> None:
        """Sample with `policy`'s current weights from now on."""
        ...

    def close(self) -> None:
        """Release what the sampler holds (an inference engine)."""
        ...


def sampling_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s sampling in a run seeded `seed`: a function of the two
    only, not of what was sampled before."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class SeededDraw(LogitsProcessor):
    """Draws each next token with `generator` from the distribution sampling would use
    (temperature, then top-k, then top-p: the order of transformers' own warpers) and
    leaves only that token possible, so that `generate`'s draw, which uses the global
    RNG, has one choice. The warpers `generate` applies afterwards keep that one token."""

    def __init__(self, params: SamplingConfig, generator: torch.Generator) -> None:
        warpers = []
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        self.warp, self.generator = LogitsProcessorList(warpers), generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = self.warp(input_ids, scores).softmax(-1)  # [B, V]
        drawn = torch.multinomial(probs, 1, generator=self.generator)  # [B, 1]
        return torch.full_like(scores, -math.inf).scatter_(-1, drawn, 0.0)


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

    @functools.cached_property
    def sharded(self) -> bool:
        """Whether the policy is sharded across processes (asked once it samples: the
        learner shards it after this sampler was made)."""
        return is_sharded(self.model)

    def sync(self, policy: torch.nn.Module) -> None:
        """Nothing to push: this sampler generates with the policy itself."""

    def close(self) -> None:
        """Nothing to release."""

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingConfig,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[list[Completion]]:
        rows = [p for p in prompts for _ in range(n)]
        draw = None if greedy or generator is None else SeededDraw(params, generator)
        flat: list[Completion] = []
        for start in range(0, len(rows), self.max_batch):
            flat.extend(self._generate(rows[start : start + self.max_batch], params, greedy, draw))
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate(
        self, rows: list[list[int]], params: SamplingConfig, greedy: bool, draw: SeededDraw | None
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
                logits_processor=LogitsProcessorList([draw]) if draw is not None else None,
                # a sharded model: every process runs each forward pass until all are done
                **({"synced_gpus": True} if self.sharded else {}),
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
