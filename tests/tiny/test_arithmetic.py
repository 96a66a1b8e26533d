"""The shipped tiny model: a real Hugging Face model with in-context ability.

Self-distillation needs a teacher that can use the context: on held-out arithmetic the
tiny model must be weak alone (<= 30%) and strong with the answer in its context (>= 95%).
"""

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.arithmetic import ArithmeticEnv
from tiny.arithmetic import hinted_context
from trainer.config import ContextConfig
from trainer.context import TeacherContextBuilder
from trainer.loop import RunPolicy
from trainer.model import TINY_MODEL_DIR
from trainer.presets import preset
from trainer.rollout import greedy_accuracy


@pytest.fixture(scope="module")
def session():
    return RunPolicy.open(preset("sdpo", {"model": "tiny"}))


def test_tiny_model_loads_with_plain_transformers():
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert model.config.model_type == "llama"
    assert tokenizer.decode(tokenizer("12+34=")["input_ids"], skip_special_tokens=True) == "12+34="
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_tiny_model_is_weak_alone_and_strong_with_the_answer_in_context(session):
    tasks = list(ArithmeticEnv().dataset("eval"))
    common = {
        "sampler": session.sampler,
        "tokenizer": session.tokenizer,
        "builder": session.builder,
        "max_new_tokens": 6,
    }
    alone = greedy_accuracy(session.env, tasks, **common)
    rng = random.Random(0)
    builder = TeacherContextBuilder(session.tokenizer, ContextConfig())
    hinted_prompts = [builder.encode(hinted_context(t, rng, ContextConfig())) for t in tasks]
    helped = greedy_accuracy(session.env, tasks, prompts=hinted_prompts, **common)
    assert len(tasks) >= 256
    assert alone <= 0.30, alone
    assert helped >= 0.95, helped
