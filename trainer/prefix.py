"""Score many responses under few distinct prompts, encoding each prompt once.

Within a group, teacher prompts repeat: every failed attempt is shown the same
successful sibling, and environments often give identical feedback. Encoding each
distinct prompt once and reusing its key/value cache for all the responses that
follow it is what prefix caching does in inference servers; here it makes the
teacher pass cost about one prompt per group instead of one per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.sampler import left_pad


def dedupe(prompts: Sequence[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Distinct prompts (first-seen order) and, per input row, the index of its prompt."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(p), len(first)) for p in prompts]
    return [list(p) for p in first], torch.tensor(index, dtype=torch.long)


def shared_prefix_logits(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Logits predicting each response token after its prompt.  -> [B, T, V]

    Equal to running every prompt + response row through the model, but each distinct
    prompt is encoded once. Prompts are left-padded, responses right-padded to T.
    """
    device = next(model.parameters()).device
    unique, index = dedupe(prompts)
    prompt_ids, prompt_mask = left_pad(unique, pad_id)  # [U, P]
    prompt_ids, prompt_mask, index = prompt_ids.to(device), prompt_mask.to(device), index.to(device)
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    encoded = model(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True
    )
    first_logits = encoded.logits[:, -1:][index]  # [B, 1, V] predicts response token 0

    width = max(len(r) for r in responses)
    if width <= 1:
        return first_logits[:, :width]
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long, device=device)
    response_mask = torch.zeros_like(response_ids)
    for i, r in enumerate(responses):
        response_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, : len(r)] = 1
    cache = encoded.cache
    cache.batch_select_indices(index)  # [U, ...] -> [B, ...]
    lengths = prompt_mask.sum(-1)[index]  # [B]
    response_pos = lengths.unsqueeze(-1) + torch.arange(width, device=device)  # [B, T]
    attention = torch.cat([prompt_mask[index], response_mask], dim=-1)  # [B, P + T]
    continued = model(
        input_ids=response_ids[:, :-1],
        attention_mask=attention[:, :-1],
        position_ids=response_pos[:, :-1],
        cache=cache,
        use_cache=False,
    )
    return torch.cat([first_logits, continued.logits], dim=1)  # [B, T, V]
