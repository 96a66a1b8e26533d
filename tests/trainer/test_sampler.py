"""TransformersSampler: n completions per prompt, EOS/truncation, and honest log-probs.

Plumbing tests on a randomly initialised tiny Llama with the character tokenizer of
tiny.pretrain (100 ids); its lm_head gets a bias towards EOS so that some completions
end with EOS and others run into the token budget.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from tiny.pretrain import build_tokenizer
from trainer.config import SamplingConfig
from trainer.sampler import TransformersSampler, left_pad, sampling_seed

MAX_NEW = 6
EOS_BIAS = 4.0


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def build_model(tokenizer, eos_bias: float) -> LlamaForCausalLM:
    """A random tiny Llama whose logits vary enough to tell prompts apart, with `eos_bias`
    added to the EOS logit."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 20)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = eos_bias
    model.lm_head = head
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    """Emits EOS often enough that both EOS-ended and truncated completions occur."""
    return build_model(tokenizer, eos_bias=EOS_BIAS)


@pytest.fixture(scope="module")
def plain_model(tokenizer):
    return build_model(tokenizer, eos_bias=0.0)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    texts = ["12+34=", "7+8=", "Say abc: "]  # different lengths: the batch is left-padded
    return [
        [tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]]
        for t in texts
    ]


PARAMS = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=MAX_NEW)


@torch.no_grad()
def manual_logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log softmax of an unpadded forward, at the sampled tokens.  [T]"""
    logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0]  # [L, V]
    logp = logits[len(prompt) - 1 : -1].float().log_softmax(-1)  # [T, V]
    return logp.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


@pytest.fixture(scope="module")
def sampled(model, tokenizer, prompts):
    torch.manual_seed(1)
    return TransformersSampler(model, tokenizer).sample(prompts, 8, PARAMS)


def test_left_pad_right_aligns_rows_and_masks_the_padding():
    ids, mask = left_pad([[5, 6], [7], []], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7], [0, 0]]
    assert mask.tolist() == [[1, 1], [0, 1], [0, 0]]


def test_sample_returns_n_completions_per_prompt_in_prompt_order(plain_model, tokenizer, prompts):
    # Greedy completions depend only on the prompt: each group must match its own prompt's.
    sampler = TransformersSampler(plain_model, tokenizer, max_batch=4)  # several generate calls
    groups = sampler.sample(prompts, 3, PARAMS, greedy=True)
    assert [len(g) for g in groups] == [3, 3, 3]
    for prompt, group in zip(prompts, groups, strict=True):
        alone = sampler.sample([prompt], 1, PARAMS, greedy=True)[0][0]
        assert all(c.token_ids == alone.token_ids for c in group)
    assert len({tuple(g[0].token_ids) for g in groups}) > 1  # the prompts do lead apart


def test_completions_end_with_eos_unless_truncated_at_max_new_tokens(sampled, tokenizer):
    eos = tokenizer.eos_token_id
    flat = [c for group in sampled for c in group]
    assert [len(g) for g in sampled] == [8, 8, 8]
    for c in flat:
        assert 1 <= len(c.token_ids) <= MAX_NEW
        assert len(c.logprobs) == len(c.token_ids)
        if c.truncated:
            assert len(c.token_ids) == MAX_NEW and eos not in c.token_ids
        else:
            assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            assert tokenizer.pad_token_id not in c.token_ids
    # the EOS bias makes both outcomes common; seeded, so this does not flake
    assert any(c.truncated for c in flat)
    assert any(not c.truncated for c in flat)


def test_logprobs_are_those_of_the_model_at_the_sampled_tokens(sampled, model, prompts):
    for prompt, group in zip(prompts, sampled, strict=True):
        for c in group:
            logprobs = torch.tensor(c.logprobs)
            assert (logprobs <= 0).all()
            expected = manual_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=0)


def test_logprobs_follow_the_sampling_temperature(model, tokenizer, prompts):
    params = SamplingConfig(temperature=2.0, max_new_tokens=MAX_NEW)
    torch.manual_seed(2)
    groups = TransformersSampler(model, tokenizer).sample(prompts[:1], 4, params)
    for c in groups[0]:
        raw = manual_logprobs(model, prompts[0], c.token_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompts[0] + c.token_ids])).logits[0]
        scaled = (logits[len(prompts[0]) - 1 : -1] / 2.0).log_softmax(-1)
        expected = scaled.gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)
        assert not torch.allclose(torch.tensor(c.logprobs), raw, atol=1e-3)


def test_greedy_sampling_is_deterministic_and_picks_the_argmax(model, tokenizer, prompts):
    sampler = TransformersSampler(model, tokenizer)
    torch.manual_seed(3)
    first = sampler.sample(prompts, 2, PARAMS, greedy=True)
    torch.manual_seed(4)
    second = sampler.sample(prompts, 2, PARAMS, greedy=True)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in second]
    for prompt, group in zip(prompts, first, strict=True):
        c = group[0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + c.token_ids])).logits[0]
        argmax = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        assert c.token_ids == argmax


def test_sampling_leaves_the_model_in_its_training_mode(model, tokenizer, prompts):
    sampler = TransformersSampler(model, tokenizer)
    model.train()
    try:
        sampler.sample(prompts[:1], 1, PARAMS)
        assert model.training
    finally:
        model.eval()


def test_logprobs_ignore_top_p_and_top_k_truncation(model, tokenizer, prompts):
    """Truncation only restricts what is drawn; the reported log-prob is the policy's at T."""
    params = SamplingConfig(temperature=1.0, top_p=0.5, top_k=3, max_new_tokens=MAX_NEW)
    torch.manual_seed(5)
    groups = TransformersSampler(model, tokenizer).sample(prompts[:2], 3, params)
    for prompt, group in zip(prompts[:2], groups, strict=True):
        for c in group:
            expected = manual_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def token_ids(groups) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in groups]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_with_a_generator_the_samples_depend_on_its_seed_not_on_the_global_rng(
    model, tokenizer, prompts
):
    sampler = TransformersSampler(model, tokenizer)
    torch.manual_seed(6)
    first = sampler.sample(prompts, 4, PARAMS, generator=seeded(11))
    torch.manual_seed(7)  # as after a restart, or another thread drawing in between
    again = sampler.sample(prompts, 4, PARAMS, generator=seeded(11))
    torch.manual_seed(6)
    other = sampler.sample(prompts, 4, PARAMS, generator=seeded(12))
    assert token_ids(first) == token_ids(again) != token_ids(other)
    for prompt, group in zip(prompts, first, strict=True):
        for c in group:
            expected = manual_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_a_generator_draws_within_top_k_and_top_k_1_is_greedy(model, tokenizer, prompts):
    sampler = TransformersSampler(model, tokenizer)
    one = SamplingConfig(temperature=1.5, top_k=1, max_new_tokens=MAX_NEW)
    greedy = sampler.sample(prompts, 1, PARAMS, greedy=True)
    assert token_ids(sampler.sample(prompts, 3, one, generator=seeded(1))) == [
        group * 3 for group in token_ids(greedy)
    ]
    three = SamplingConfig(temperature=3.0, top_k=3, max_new_tokens=MAX_NEW)
    groups = sampler.sample(prompts, 8, three, generator=seeded(2))
    for prompt, group in zip(prompts, groups, strict=True):
        for c in group:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + c.token_ids])).logits[0]
            allowed = logits[len(prompt) - 1 : -1].topk(3, dim=-1).indices  # [T, 3]
            assert all(t in row for t, row in zip(c.token_ids, allowed.tolist(), strict=True))


def test_each_step_of_a_run_has_a_seed_of_its_own():
    seeds = {sampling_seed(seed, step) for seed in (0, 1) for step in range(1, 100)}
    assert len(seeds) == 2 * 99 and sampling_seed(0, 5) == sampling_seed(0, 5)
