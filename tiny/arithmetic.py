"""`tiny`'s corpus: arithmetic problems, most of them with a teacher context (built by the
project's own context builder from the default templates) that holds the answer, so that
the model can read hints in context but cannot yet add well on its own: exactly the gap
self-distillation closes.
"""

from __future__ import annotations

import logging
import random

from transformers import LlamaForCausalLM

from envs.arithmetic import ArithmeticEnv, feedback_for
from envs.base import Task
from tiny.pretrain import IGNORE, Corpus, Example, PretrainConfig
from trainer.config import ContextConfig
from trainer.context import Attempt, encode_prompt, render_teacher_texts

log = logging.getLogger(__name__)


def hinted_context(task: Task, rng: random.Random, cfg: ContextConfig) -> str:
    """A teacher context for `task`, from a successful sibling or from wrong-answer feedback."""
    wrong = str(int(task.reference[::-1]) + rng.choice([-11, -10, -2, -1, 1, 2, 10, 11]))[::-1]
    _, feedback = feedback_for(wrong, task)
    failed = Attempt(response=wrong, reward=0.0, feedback=feedback)
    if rng.random() < 0.5:
        attempts = [failed, Attempt(response=task.reference, reward=1.0, feedback=None)]
    else:
        attempts = [failed]
    text = render_teacher_texts(task.prompt, attempts, cfg)[0]
    assert text is not None
    return text


def make_example(task: Task, rng: random.Random, plain_fraction: float, tokenizer) -> Example:
    """Token ids (bos + context + answer + eos), with the loss on the answer."""
    context = (
        task.prompt if rng.random() < plain_fraction else hinted_context(task, rng, ContextConfig())
    )
    ctx_ids = encode_prompt(tokenizer, context)
    answer_ids = tokenizer(task.reference, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    return ctx_ids + answer_ids, [IGNORE] * len(ctx_ids) + answer_ids


def plain_accuracy(model: LlamaForCausalLM, tokenizer, tasks: list[Task]) -> float:
    """Greedy exact-match accuracy on plain prompts (no hint)."""
    from trainer.config import SamplingConfig
    from trainer.sampler import TransformersSampler

    prompts = [encode_prompt(tokenizer, t.prompt) for t in tasks]
    out = TransformersSampler(model, tokenizer).sample(
        prompts, 1, SamplingConfig(max_new_tokens=6), greedy=True
    )
    answers = [tokenizer.decode(c[0].token_ids, skip_special_tokens=True) for c in out]
    return sum(a.strip() == t.reference for a, t in zip(answers, tasks, strict=True)) / len(tasks)


def arithmetic_corpus(cfg: PretrainConfig) -> Corpus:
    """Plain and hinted arithmetic problems; stops at `stop_at_plain_accuracy` on
    training problems."""
    tasks = ArithmeticEnv().dataset("train")
    probe = list(tasks[:256])

    def example(rng: random.Random, tokenizer, step: int) -> Example:
        return make_example(rng.choice(tasks), rng, cfg.plain_fraction, tokenizer)

    def done(model: LlamaForCausalLM, tokenizer) -> bool:
        accuracy = plain_accuracy(model, tokenizer, probe)
        log.info("plain accuracy on training problems %.3f", accuracy)
        return accuracy >= cfg.stop_at_plain_accuracy

    return Corpus(example, done if cfg.stop_at_plain_accuracy is not None else None)
