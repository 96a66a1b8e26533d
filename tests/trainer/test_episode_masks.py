"""Environment tokens are masked out of the loss, for the student and the teacher pass.

Environment (tool-output) tokens stay in the sequence: later model tokens condition on
them, in the student's context and in the teacher's. What must hold is that no loss
term, metric or recorded log-ratio reads a prediction *of* an environment token:
- on random logits, for every loss form: the gradient w.r.t. the student's logits at
  masked positions is exactly zero, and changing anything at masked positions (student
  or teacher logits, sampler log-probs, the environment token ids) changes nothing;
- on the real tiny model and real episodes: a `Learner` step's gradient at the logits
  that predict environment tokens is exactly zero, its log-ratios there are None, and
  the teacher scores the very same episode tokens (tool outputs included) after the
  teacher prompt.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.batch import build_sequences
from trainer.config import ContextConfig, LossConfig, SamplingConfig
from trainer.context import TeacherContextBuilder
from trainer.episodes import collect_episodes
from trainer.losses import LossInputs, policy_loss
from trainer.model import load_policy
from trainer.presets import preset
from trainer.sampler import TransformersSampler
from trainer.step import Learner

from .episode_envs import TASKS, Nudging

B, T, V = 4, 10, 12
LOSS_FORMS = {
    "reverse_kl_full": {},
    "jsd_topk_tail": {"distill": {"alpha": 0.5, "support": "topk_logits", "topk": 4}},
    "forward_kl_topk_renormalised": {
        "distill": {"alpha": 0.0, "support": "topk_logits", "topk": 4, "topk_tail": False}
    },
    "sampled_token_clipped": {
        "distill": {"support": "sampled_token", "is_clip": 2.0, "token_clip": 0.5}
    },
    "grpo": {"distill_weight": 0.0},
    "mixed_sequence_mean": {"distill_weight": 0.5, "aggregation": "sequence_mean"},
    "advantage_mix": {"advantage_mix": 0.9, "distill": {"support": "sampled_token"}},
}


def inputs(gen: torch.Generator) -> LossInputs:
    """Row 0: model, env, model tokens; row 1: env tokens first; row 2: no teacher signal;
    row 3: padding after its end."""
    mask = torch.ones(B, T)
    mask[0, 3:6] = 0
    mask[1, :2] = 0
    mask[2, 4:7] = 0
    mask[3, 6:] = 0
    return LossInputs(
        response_ids=torch.randint(0, V, (B, T), generator=gen),
        response_mask=mask,
        sampler_logp=-torch.rand(B, T, generator=gen) * mask,
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        group_size=2,
        has_teacher_signal=torch.tensor([True, True, False, True]),
        truncated=torch.zeros(B, dtype=torch.bool),
        sampling_temperature=0.8,
    )


def run(student: torch.Tensor, teacher: torch.Tensor, batch: LossInputs, cfg: LossConfig):
    student = student.clone().requires_grad_(True)
    loss, metrics, log_ratio = policy_loss(student, teacher, batch, cfg)
    loss.backward()
    return loss, metrics, log_ratio, student.grad


@pytest.mark.parametrize("form", LOSS_FORMS)
def test_no_loss_form_reads_a_prediction_of_an_environment_token(form):
    cfg = LossConfig.model_validate(LOSS_FORMS[form])
    gen = torch.Generator().manual_seed(0)
    batch = inputs(gen)
    student, teacher = torch.randn(B, T, V, generator=gen), torch.randn(B, T, V, generator=gen)
    loss, metrics, log_ratio, grad = run(student, teacher, batch, cfg)
    masked = batch.response_mask == 0  # [B, T]
    assert grad[masked].abs().max() == 0  # exactly zero, every vocabulary entry
    assert grad[~masked].abs().sum() > 0

    # anything at masked positions may change: the result does not
    changed = copy.copy(batch)
    changed.response_ids = torch.where(masked, (batch.response_ids + 1) % V, batch.response_ids)
    changed.sampler_logp = torch.where(masked, -5.0, batch.sampler_logp)
    noise = 50 * torch.randn(B, T, V, generator=gen)
    student2 = torch.where(masked.unsqueeze(-1), noise, student)
    teacher2 = torch.where(masked.unsqueeze(-1), -noise, teacher)
    teacher2[2] = torch.randn(T, V, generator=gen)  # row 2 has no teacher signal at all
    loss2, metrics2, log_ratio2, grad2 = run(student2, teacher2, changed, cfg)
    assert loss2.item() == loss.item()
    assert metrics2 == metrics
    assert torch.equal(grad2[~masked], grad[~masked]) and grad2[masked].abs().max() == 0
    signal = ~masked & batch.has_teacher_signal.unsqueeze(-1)
    assert torch.equal(log_ratio2[signal], log_ratio[signal])


# --- a Learner step on real episodes of the tiny model --------------------------------------


@pytest.fixture(scope="module")
def episode_batch():
    model, tok = load_policy("tiny", device=torch.device("cpu"))
    torch.manual_seed(0)
    batch, _ = collect_episodes(
        Nudging(nudges=1),
        TASKS,
        sampler=TransformersSampler(model, tok),
        tokenizer=tok,
        builder=TeacherContextBuilder(tok, ContextConfig()),
        group_size=2,
        sampling=SamplingConfig(max_new_tokens=128),
    )
    assert any(0 in s.response_mask for s in batch.samples)
    assert all(s.teacher_prompt_ids is not None for s in batch.samples)  # feedback for all
    for i, sample in enumerate(batch.samples):  # the tiny model fails: give GRPO some signal
        sample.reward = float(i % 2)
    return batch


def learner(algorithm: str = "sdpo") -> tuple[Learner, torch.nn.Module]:
    cfg = preset(algorithm, {"sampling": {"max_new_tokens": 128}})
    model, tok = load_policy("tiny", device=torch.device("cpu"))
    return Learner(model, tok.pad_token_id, cfg), model


@pytest.mark.parametrize("algorithm", ["sdpo", "grpo"])
def test_a_learner_step_gets_no_gradient_from_predictions_of_environment_tokens(
    episode_batch, algorithm
):
    trainer, model = learner(algorithm)
    grads: list[torch.Tensor] = []

    def keep_grad(module, args, output):  # the student pass only: the teacher's has no grad
        if output.requires_grad:
            output.register_hook(grads.append)

    model.lm_head.register_forward_hook(keep_grad)
    result = trainer.step(episode_batch)
    assert len(grads) == 1 and all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    samples = episode_batch.samples
    width = build_sequences([s.prompt_ids for s in samples], [[0]] * len(samples), 0).prompt_width
    grad = grads[0]  # [B, P + T, V]: column width - 1 + t predicts response token t
    for i, (sample, ratios) in enumerate(zip(samples, result.log_ratios, strict=True)):
        for t, is_model in enumerate(sample.response_mask):
            row = grad[i, width - 1 + t]
            assert (row.abs().sum() > 0) if is_model else (row.abs().max() == 0)
            assert (ratios[t] is None) == (not is_model)


def test_the_teacher_scores_the_same_episode_tokens_after_the_teacher_prompt(
    episode_batch, monkeypatch
):
    trainer, _ = learner("sdpo")
    seen = {}
    import trainer.step as step_module

    real = step_module.shared_prefix_logits

    def spy(model, prompts, responses, pad_id):
        seen.update(prompts=[list(p) for p in prompts], responses=[list(r) for r in responses])
        return real(model, prompts, responses, pad_id)

    monkeypatch.setattr(step_module, "shared_prefix_logits", spy)
    samples = episode_batch.samples
    width = max(len(s.response_ids) for s in samples)
    teacher_logits = trainer._teacher_logits(episode_batch, width)  # [B, T, V]
    assert seen["responses"] == [s.response_ids for s in samples]  # tool outputs included
    assert seen["prompts"] == [s.teacher_prompt_ids for s in samples]
    for i, s in enumerate(samples):  # no step yet: the frozen teacher has the policy's weights
        with torch.no_grad():
            row = trainer.policy(
                input_ids=torch.tensor([s.teacher_prompt_ids + s.response_ids])
            ).logits
        expected = row[0, len(s.teacher_prompt_ids) - 1 : -1]  # [T_i, V]
        n = len(s.response_ids)
        torch.testing.assert_close(teacher_logits[i, :n], expected, atol=1e-4, rtol=1e-4)
