"""What one optimiser step trains on, and how it becomes tensors.

A `Batch` holds P groups of G samples each (group-contiguous). Each sample keeps the
student prompt, the sampled response with the sampler's log-probs, and the teacher
prompt built from feedback (None: no teacher signal).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    sampler_logprobs: list[float]
    reward: float
    truncated: bool = False
    teacher_prompt_ids: list[int] | None = None
    response_mask: list[int] | None = None  # 1 = model token, 0 = environment token; None = all 1

    def __post_init__(self) -> None:
        if len(self.sampler_logprobs) != len(self.response_ids):
            raise ValueError("sampler_logprobs must have one entry per response token")
        if self.response_mask is not None and len(self.response_mask) != len(self.response_ids):
            raise ValueError("response_mask must have one entry per response token")


@dataclass
class Batch:
    samples: list[Sample]
    group_size: int
    policy_version: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if not self.samples or len(self.samples) % self.group_size:
            raise ValueError(f"{len(self.samples)} samples do not form groups of {self.group_size}")

    @property
    def needs_teacher(self) -> bool:
        return any(s.teacher_prompt_ids is not None for s in self.samples)

    def split(self, parts: int) -> list[Batch]:
        """Micro-batches of whole groups (for gradient accumulation)."""
        groups = len(self.samples) // self.group_size
        parts = max(1, min(parts, groups))
        bounds = [round(i * groups / parts) * self.group_size for i in range(parts + 1)]
        return [
            Batch(self.samples[a:b], self.group_size, self.policy_version, self.id)
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]


@dataclass
class Sequences:
    """Prompt (left-padded) + response (right-padded) rows; responses start at `prompt_width`."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    prompt_width: int
    response_width: int

    def response_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits that predict the response tokens.  [B, P+T, V] -> [B, T, V]"""
        start = self.prompt_width - 1
        return logits[:, start : start + self.response_width]

    def to(self, device: torch.device) -> Sequences:
        return Sequences(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.prompt_width,
            self.response_width,
        )


def build_sequences(
    prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
) -> Sequences:
    """Lay prompts and responses out so that every response starts at the same column."""
    prompt_width = max(len(p) for p in prompts)
    response_width = max(max(len(r) for r in responses), 1)
    rows = len(prompts)
    input_ids = torch.full((rows, prompt_width + response_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        start = prompt_width - len(prompt)
        row = prompt + response
        input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Sequences(input_ids, attention_mask, position_ids, prompt_width, response_width)


def response_tensors(samples: Sequence[Sample], width: int) -> dict[str, torch.Tensor]:
    """Right-padded response ids, mask and sampler log-probs, each [B, T]."""
    rows = len(samples)
    ids = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width))
    logp = torch.zeros((rows, width))
    for i, s in enumerate(samples):
        n = len(s.response_ids)
        ids[i, :n] = torch.tensor(s.response_ids, dtype=torch.long)
        mask[i, :n] = torch.tensor(s.response_mask if s.response_mask is not None else [1] * n)
        logp[i, :n] = torch.tensor(s.sampler_logprobs)
    return {"response_ids": ids, "response_mask": mask, "sampler_logp": logp}
