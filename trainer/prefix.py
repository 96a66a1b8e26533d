"""Score many responses under few distinct prompts, encoding each prompt once.

Within a group, teacher prompts repeat: every failed attempt is shown the same
successful sibling, and environments often give identical feedback. Encoding each
distinct prompt once is what prefix caching does in inference servers; here it makes
the teacher pass cost about one prompt per group instead of one per sample.

Two ways, same result:
- `packed_prefix_logits`: one row per distinct prompt, holding the prompt followed by
  all its responses, with a block attention mask (each response sees the prompt and
  itself). One forward pass, nothing copied. Needs an attention implementation that
  takes a 4D mask (`sdpa`, `eager`).
- `cached_prefix_logits`: encode the distinct prompts, copy their key/value cache to
  every response row, then run the responses. Works with any attention kernel.
`shared_prefix_logits` picks the first where it can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.compat import cache_kwargs, output_cache
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

    Equal to running every prompt + response row through the model (responses
    right-padded to T; positions past a response's end hold filler the loss masks),
    but each distinct prompt is encoded once.
    """
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attention in ("sdpa", "eager"):
        return packed_prefix_logits(model, prompts, responses, pad_id)
    return cached_prefix_logits(model, prompts, responses, pad_id)


def packed_prefix_logits(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """One row per distinct prompt: `prompt, response_1[:-1], response_2[:-1], ...`.  -> [B, T, V]

    A response's last token is never an input (nothing is predicted after it). Each
    response segment restarts its positions after the prompt and attends to the prompt
    and causally to itself only, so its logits equal those of its own unpacked row.
    """
    device = next(model.parameters()).device
    unique, index = dedupe(prompts)
    tokens: list[list[int]] = [list(p) for p in unique]
    positions: list[list[int]] = [list(range(len(p))) for p in unique]
    segments: list[list[int]] = [[0] * len(p) for p in unique]  # 0 = prompt, k = k-th response
    row_of = index.tolist()
    predictors: list[list[int]] = []  # per sample: the column whose logits predict token t
    for i, response in enumerate(responses):
        row = row_of[i]
        prompt_len = len(unique[row])
        start = len(tokens[row])
        body = response[:-1]
        tokens[row] += body
        positions[row] += range(prompt_len, prompt_len + len(body))
        segments[row] += [i + 1] * len(body)
        predictors.append([prompt_len - 1] + list(range(start, start + len(body))))

    width = max(len(t) for t in tokens)
    rows = len(tokens)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # -1 = padding
    for r in range(rows):
        n = len(tokens[r])
        input_ids[r, :n] = torch.tensor(tokens[r], dtype=torch.long)
        position_ids[r, :n] = torch.tensor(positions[r], dtype=torch.long)
        segment[r, :n] = torch.tensor(segments[r], dtype=torch.long)
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)  # [U, L, 1], [U, 1, L]
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [L, L]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))  # [U, L, L]
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=allowed.unsqueeze(1).to(device),  # [U, 1, L, L]
        position_ids=position_ids.to(device),
    ).logits  # [U, L, V]

    steps = max(len(p) for p in predictors)
    row_index = index.unsqueeze(1).expand(-1, steps)  # [B, T]
    col_index = torch.zeros((len(responses), steps), dtype=torch.long)
    for i, cols in enumerate(predictors):
        col_index[i, : len(cols)] = torch.tensor(cols, dtype=torch.long)
    return logits[
        row_index.to(device), col_index.to(device)
    ]  # [B, T, V]; past a response's end: filler


def cached_prefix_logits(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Distinct prompts encoded once, their key/value cache copied to each response row.  -> [B, T, V]"""
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
    cache = output_cache(encoded)
    cache.batch_select_indices(index)  # [U, ...] -> [B, ...]
    lengths = prompt_mask.sum(-1)[index]  # [B]
    response_pos = lengths.unsqueeze(-1) + torch.arange(width, device=device)  # [B, T]
    attention = torch.cat([prompt_mask[index], response_mask], dim=-1)  # [B, P + T]
    continued = model(
        input_ids=response_ids[:, :-1],
        attention_mask=attention[:, :-1],
        position_ids=response_pos[:, :-1],
        **cache_kwargs(cache),
        use_cache=False,
    )
    return torch.cat([first_logits, continued.logits], dim=1)  # [B, T, V]
