"""Checkpoints: loadable Hugging Face directories that resume training exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import peft
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from trainer.checkpoint import (
    ADAPTER_DIR,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from trainer.config import TeacherConfig
from trainer.teacher import Teacher


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz0123"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")


def build(finetuning: str, weights: str = "ema"):
    """Policy, optimiser, scheduler and teacher, constructed the usual way from seed 0."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.1,
    )
    policy = LlamaForCausalLM(config)
    if finetuning == "lora":
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1)
        policy = peft.get_peft_model(policy, lora)
    policy.train()
    teacher = Teacher(policy, TeacherConfig(weights=weights, rate=0.3))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    return policy, optimizer, scheduler, teacher


def train(policy, optimizer, scheduler, teacher, steps: int) -> None:
    """Steps whose batches come from python's RNG and whose dropout draws from torch's."""
    for _ in range(steps):
        input_ids = torch.tensor([[random.randrange(32) for _ in range(8)] for _ in range(2)])
        policy(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        teacher.update()


def eval_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(input_ids=input_ids).logits
    model.train(was_training)
    return logits


INPUT_IDS = torch.arange(16).reshape(2, 8)


def save(path, policy, optimizer, scheduler, teacher, state=None, tokenizer=None):
    return save_checkpoint(
        path,
        policy=policy,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        teacher=teacher,
        state=state if state is not None else {"step": 0},
    )


def test_full_finetuning_checkpoint_loads_with_from_pretrained_with_identical_logits(tmp_path):
    policy, optimizer, scheduler, teacher = build("full")
    train(policy, optimizer, scheduler, teacher, steps=2)
    tokenizer = tiny_tokenizer()
    path = save(
        tmp_path / "step-000002", policy, optimizer, scheduler, teacher, tokenizer=tokenizer
    )

    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(eval_logits(loaded, INPUT_IDS), eval_logits(policy, INPUT_IDS))
    assert AutoTokenizer.from_pretrained(path)("abc").input_ids == tokenizer("abc").input_ids
    assert json.loads((path / "state.json").read_text()) == {"step": 0}


def test_lora_checkpoint_loads_as_plain_model_with_merged_adapter(tmp_path):
    policy, optimizer, scheduler, teacher = build("lora")
    train(policy, optimizer, scheduler, teacher, steps=2)
    path = save(tmp_path / "step-000002", policy, optimizer, scheduler, teacher)

    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(loaded) is LlamaForCausalLM
    assert loaded.state_dict().keys() == LlamaForCausalLM(loaded.config).state_dict().keys()
    logits_policy = eval_logits(policy, INPUT_IDS)
    with policy.disable_adapter():
        logits_base = eval_logits(policy, INPUT_IDS)
    assert not torch.allclose(logits_policy, logits_base, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(eval_logits(loaded, INPUT_IDS), logits_policy, rtol=0, atol=1e-5)
    assert (path / ADAPTER_DIR / "adapter_config.json").is_file()
    assert policy.active_adapter == "default"


def state_tensors(policy, optimizer, teacher) -> dict[str, torch.Tensor]:
    """Every tensor an exact resume must reproduce: weights, Adam moments, EMA teacher."""
    tensors = {f"param/{n}": p for n, p in policy.named_parameters()}
    names = {id(p): n for n, p in policy.named_parameters()}
    for param, moments in optimizer.state.items():
        tensors |= {f"adam/{names[id(param)]}/{k}": v for k, v in moments.items()}
    tensors |= {f"teacher/{n}": t for n, t in teacher.state_dict()["ema"].items()}
    return {n: t.detach().clone() for n, t in tensors.items()}


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_resume_from_checkpoint_continues_training_exactly(tmp_path, finetuning):
    random.seed(0)
    policy, optimizer, scheduler, teacher = build(finetuning)
    train(policy, optimizer, scheduler, teacher, steps=2)
    state = {"step": 2, "batch_ids": ["b0", "b1"]}
    path = save(tmp_path / "step-000002", policy, optimizer, scheduler, teacher, state)
    train(policy, optimizer, scheduler, teacher, steps=2)
    expected = state_tensors(policy, optimizer, teacher)

    random.seed(123)  # load_checkpoint must restore the RNGs
    resumed = build(finetuning)
    loaded_state = load_checkpoint(
        path, policy=resumed[0], optimizer=resumed[1], scheduler=resumed[2], teacher=resumed[3]
    )
    train(*resumed, steps=2)
    actual = state_tensors(resumed[0], resumed[1], resumed[3])

    assert loaded_state == state
    assert resumed[2].get_last_lr() == scheduler.get_last_lr()
    assert actual.keys() == expected.keys()
    assert any(n.endswith("exp_avg_sq") for n in actual) and any("teacher/" in n for n in actual)
    assert [n for n in expected if not torch.equal(actual[n], expected[n])] == []


def test_checkpoint_restores_python_numpy_and_torch_rng(tmp_path):
    policy, optimizer, scheduler, teacher = build("full", weights="live")
    path = save(tmp_path / "step-000000", policy, optimizer, scheduler, teacher)

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    first = draws()
    load_checkpoint(path, policy=policy, optimizer=optimizer, scheduler=scheduler, teacher=teacher)
    assert draws() == first


def test_saving_over_a_checkpoint_replaces_it_and_a_failed_save_keeps_it(tmp_path):
    policy, optimizer, scheduler, teacher = build("full", weights="live")
    path = tmp_path / "step-000001"
    save(path, policy, optimizer, scheduler, teacher, {"step": 1})
    save(path, policy, optimizer, scheduler, teacher, {"step": 2})
    assert json.loads((path / "state.json").read_text()) == {"step": 2}

    with pytest.raises(TypeError):  # not JSON-serialisable
        save(path, policy, optimizer, scheduler, teacher, {"step": object()})
    assert json.loads((path / "state.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 9):
        checkpoint_path(tmp_path, step).mkdir()
        (checkpoint_path(tmp_path, step) / "state.json").write_text("{}")
    checkpoint_path(tmp_path, 11).mkdir()  # incomplete: no state.json
    (tmp_path / ".step-000012.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000010"
