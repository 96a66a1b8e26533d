"""Teacher weights (docs/algorithm.md "Teacher weights") on a tiny Llama, full fine-tuning and LoRA."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.config import TeacherConfig
from trainer.teacher import EMA_ADAPTER, Teacher, TeacherStateError

FINETUNING = ["full", "lora"]
LORA_Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
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
    return LlamaForCausalLM(config)


def make_policy(finetuning: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy in train mode, an untouched copy of its initial network)."""
    model = tiny_llama(seed)
    initial = copy.deepcopy(model).eval()
    if finetuning == "lora":
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1)
        model = peft.get_peft_model(model, lora)
    return model.train(), initial


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 32, (2, 8), generator=generator)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "position_ids": torch.arange(8).expand(2, 8),
    }


def lm_loss(policy: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return policy(**inputs, labels=inputs["input_ids"]).loss


def optimiser(policy: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)


def train(policy, optimizer, teacher: Teacher, steps: int) -> None:
    for step in range(steps):
        lm_loss(policy, batch(seed=100 + step)).backward()
        optimizer.step()
        optimizer.zero_grad()
        teacher.update()


def teacher_logits(teacher: Teacher, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's logits `[B, L, V]` for `inputs` (for `trust_region`: log-probs)."""
    return teacher.score(lambda model: model(**inputs).logits)


def eval_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    model.train(was_training)
    return logits


def trainable(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("finetuning", FINETUNING)
def test_frozen_teacher_scores_with_initial_weights_after_optimiser_steps(finetuning):
    policy, initial = make_policy(finetuning)
    teacher = Teacher(policy, TeacherConfig(weights="frozen"))
    before = trainable(policy)
    train(policy, optimiser(policy), teacher, steps=3)

    inputs = batch()
    assert not torch.allclose(eval_logits(policy, inputs), eval_logits(initial, inputs))
    assert torch.equal(teacher_logits(teacher, inputs), eval_logits(initial, inputs))
    assert any(not torch.equal(before[n], p) for n, p in trainable(policy).items())


def test_live_teacher_equals_current_policy():
    policy, _ = make_policy("lora")
    teacher = Teacher(policy, TeacherConfig(weights="live"))
    train(policy, optimiser(policy), teacher, steps=2)
    inputs = batch()
    # the policy is in train mode with dropout: equality also shows the pass ran in eval mode
    assert torch.equal(teacher_logits(teacher, inputs), eval_logits(policy, inputs))


def ema_as_policy_weights(teacher: Teacher, finetuning: str) -> dict[str, torch.Tensor]:
    """The EMA teacher's tensors, named like the policy parameters they follow."""
    ema = teacher.state_dict()["ema"]
    if finetuning == "full":
        return ema
    return {n.replace(f".{EMA_ADAPTER}.", ".default."): t for n, t in ema.items()}


@pytest.mark.parametrize("finetuning", FINETUNING)
def test_ema_teacher_update_follows_formula_and_scores_with_ema_weights(finetuning):
    policy, _ = make_policy(finetuning)
    rate = 0.3
    teacher = Teacher(policy, TeacherConfig(weights="ema", rate=rate))
    initial = ema_as_policy_weights(teacher, finetuning)
    assert all(torch.equal(initial[n], p) for n, p in trainable(policy).items())  # starts at theta
    optimizer = optimiser(policy)
    train(policy, optimizer, teacher, steps=2)

    ema_before = {n: t.clone() for n, t in ema_as_policy_weights(teacher, finetuning).items()}
    train(policy, optimizer, teacher, steps=1)
    ema_after = ema_as_policy_weights(teacher, finetuning)
    params = dict(policy.named_parameters())
    assert ema_after.keys() >= trainable(policy).keys()
    name = {
        "full": "model.layers.0.self_attn.q_proj.weight",
        "lora": f"{LORA_Q_PROJ}.lora_B.default.weight",
    }[finetuning]
    expected = (1 - rate) * ema_before[name] + rate * params[name].detach()
    torch.testing.assert_close(ema_after[name], expected, rtol=0, atol=1e-7)
    assert not torch.allclose(ema_after[name], params[name])
    assert not torch.allclose(ema_after[name], ema_before[name])

    # scoring uses exactly those weights
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in ema_after:
                p.copy_(ema_after[n])
    inputs = batch()
    assert torch.equal(teacher_logits(teacher, inputs), eval_logits(reference, inputs))


def test_lora_ema_teacher_costs_one_adapter_of_parameters():
    policy, _ = make_policy("lora")
    count_before = sum(p.numel() for p in policy.parameters())
    trainable_before = trainable(policy)
    Teacher(policy, TeacherConfig(weights="ema"))

    adapter_size = sum(t.numel() for t in trainable_before.values())
    assert sum(p.numel() for p in policy.parameters()) - count_before == adapter_size
    assert trainable(policy).keys() == trainable_before.keys()
    assert all(".default." in n for n in trainable_before)


@pytest.mark.parametrize("finetuning", FINETUNING)
def test_trust_region_teacher_is_normalised_log_space_interpolation(finetuning):
    policy, initial = make_policy(finetuning)
    rate = 0.25
    teacher = Teacher(policy, TeacherConfig(weights="trust_region", rate=rate))
    train(policy, optimiser(policy), teacher, steps=2)

    inputs = batch()
    logp_frozen = torch.log_softmax(eval_logits(initial, inputs), dim=-1)
    logp_live = torch.log_softmax(eval_logits(policy, inputs), dim=-1)
    mixed = (1 - rate) * logp_frozen + rate * logp_live
    expected = mixed - torch.logsumexp(mixed, dim=-1, keepdim=True)
    logp_teacher = teacher_logits(teacher, inputs)  # [B, L, V]
    torch.testing.assert_close(logp_teacher, expected)
    torch.testing.assert_close(torch.logsumexp(logp_teacher, dim=-1), torch.zeros(2, 8))
    assert not torch.allclose(logp_teacher, logp_frozen, atol=1e-3)
    assert not torch.allclose(logp_teacher, logp_live, atol=1e-3)


# full fine-tuning frozen / ema teachers run a separate copy and never touch the policy
CASES = [("full", "live"), ("full", "trust_region")]
CASES += [("lora", w) for w in ("frozen", "ema", "trust_region")]


@pytest.mark.parametrize(("finetuning", "weights"), CASES)
def test_teacher_scoring_leaves_gradients_trainable_params_and_modes_unchanged(finetuning, weights):
    policy, _ = make_policy(finetuning)
    teacher = Teacher(policy, TeacherConfig(weights=weights))
    optimizer = optimiser(policy)
    train(policy, optimizer, teacher, steps=1)
    policy.get_submodule("lm_head" if finetuning == "full" else "base_model.model.lm_head").eval()
    if finetuning == "lora":  # a partly frozen adapter must stay partly frozen
        policy.get_parameter(f"{LORA_Q_PROJ}.lora_A.default.weight").requires_grad_(False)
    modes = [m.training for m in policy.modules()]
    requires_grad = [p.requires_grad for p in policy.parameters()]
    inputs = batch(seed=7)

    torch.manual_seed(3)
    lm_loss(policy, inputs).backward()
    grads_reference = {
        n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None
    }
    optimizer.zero_grad()

    torch.manual_seed(3)
    loss = lm_loss(policy, inputs)  # graph built before the teacher pass
    teacher_logits(teacher, inputs)
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}

    assert [m.training for m in policy.modules()] == modes
    assert [p.requires_grad for p in policy.parameters()] == requires_grad
    assert grads.keys() == grads_reference.keys() == trainable(policy).keys()
    assert all(torch.equal(grads[n], grads_reference[n]) for n in grads)
    if finetuning == "lora":
        assert policy.active_adapter == "default"
        assert all(".default." in n for n in grads)


def test_frozen_teacher_rejects_state_saved_from_other_initial_weights():
    policy, _ = make_policy("full", seed=0)
    saved = Teacher(policy, TeacherConfig(weights="frozen")).state_dict()
    other, _ = make_policy("full", seed=1)
    Teacher(policy, TeacherConfig(weights="frozen")).load_state_dict(saved)
    with pytest.raises(TeacherStateError):
        Teacher(other, TeacherConfig(weights="frozen")).load_state_dict(saved)
    with pytest.raises(TeacherStateError):
        Teacher(policy, TeacherConfig(weights="live")).load_state_dict(saved)
