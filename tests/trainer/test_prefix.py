"""Teacher scoring with shared prompts equals scoring every row on its own."""

import pytest
import torch

from trainer.batch import build_sequences
from trainer.prefix import cached_prefix_logits, dedupe, packed_prefix_logits, shared_prefix_logits

PROMPTS = [[1, 5, 6, 7], [1, 5, 6, 7], [1, 9, 9], [1, 5, 6, 7, 8, 9, 10], [1, 9, 9], [1, 5, 6, 7]]
RESPONSES = [[20, 21, 2], [22, 2], [23, 24, 25, 26], [2], [30, 31], [27, 28, 29, 2]]


def unpacked_logits(model, prompts, responses):
    """The reference: each prompt + response row through the model, one row at a time."""
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        seqs = build_sequences([prompt], [response], pad_id=0)
        logits = model(input_ids=seqs.input_ids, position_ids=seqs.position_ids).logits
        rows.append(seqs.response_logits(logits)[0])
    return rows


@pytest.mark.parametrize(
    "score", [packed_prefix_logits, cached_prefix_logits, shared_prefix_logits]
)
def test_shared_prompt_scoring_equals_row_by_row_scoring(make_tiny_llama, score):
    model = make_tiny_llama(seed=1, vocab_size=40).eval()
    with torch.no_grad():
        expected = unpacked_logits(model, PROMPTS, RESPONSES)
        got = score(model, PROMPTS, RESPONSES, 0)
    assert got.shape[:2] == (len(RESPONSES), max(len(r) for r in RESPONSES))
    for i, response in enumerate(RESPONSES):
        torch.testing.assert_close(got[i, : len(response)], expected[i], atol=1e-5, rtol=0)


def test_packing_keeps_responses_of_one_prompt_from_seeing_each_other(make_tiny_llama):
    """Changing one response must not change the logits of a sibling under the same prompt."""
    model = make_tiny_llama(seed=2, vocab_size=40).eval()
    changed = [list(r) for r in RESPONSES]
    changed[0] = [33, 34, 35, 2]
    with torch.no_grad():
        before = packed_prefix_logits(model, PROMPTS, RESPONSES, 0)
        after = packed_prefix_logits(model, PROMPTS, changed, 0)
    torch.testing.assert_close(before[1, :2], after[1, :2])  # sibling under the same prompt


def test_dedupe_maps_rows_to_distinct_prompts_in_first_seen_order():
    unique, index = dedupe(PROMPTS)
    assert unique == [[1, 5, 6, 7], [1, 9, 9], [1, 5, 6, 7, 8, 9, 10]]
    assert index.tolist() == [0, 0, 1, 2, 1, 0]
