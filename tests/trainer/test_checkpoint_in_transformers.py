"""A run's final checkpoint works in plain transformers as any Hugging Face model does.

A short run of the shipped tiny model; its final checkpoint is then loaded with
`AutoTokenizer` / `AutoModelForCausalLM` only, through the README's own snippet, and its
greedy answers to held-out prompts must be the ones the project's evaluation gets from
the same checkpoint (and score to the accuracy the run recorded).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from trainer.config import SamplingConfig
from trainer.loop import RunPolicy, train
from trainer.model import TINY_MODEL_DIR
from trainer.presets import preset
from trainer.rollout import run_async, score_all

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Loading a checkpoint with plain transformers"
EVAL_SIZE = 32


def readme_snippet() -> str:
    """The Python block of the README's section on loading a checkpoint."""
    section = README.read_text().split(SECTION, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {SECTION!r}"
    return match.group(1)


def run_readme_snippet(checkpoint: Path, prompts: list[str]) -> list[str]:
    """The README's snippet, on `checkpoint` and `prompts` instead of its examples."""
    code = readme_snippet()
    for name, value in (("checkpoint", str(checkpoint)), ("prompts", prompts)):
        code, found = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert found == 1, f"the snippet assigns `{name}` once"
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace["answers"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = preset(
        "sdpo",
        {
            "model": "tiny",
            "steps": 2,
            "prompts_per_step": 2,
            "samples_per_prompt": 4,
            "eval": {"every": 2, "size": EVAL_SIZE},
            "env_config": {"eval_size": EVAL_SIZE},
        },
    )
    summary = train(cfg, tmp_path_factory.mktemp("run"), device="cpu")
    return cfg, summary, Path(summary["checkpoint"])


@pytest.fixture(scope="module")
def held_out():
    return list(ArithmeticEnv(ArithmeticConfig(eval_size=EVAL_SIZE)).dataset("eval"))


def test_greedy_answers_in_plain_transformers_are_the_projects_evaluation(run, held_out):
    cfg, summary, checkpoint = run
    answers = run_readme_snippet(checkpoint, [t.prompt for t in held_out])

    evaluated = cfg.model_copy(update={"model": str(checkpoint)})
    with RunPolicy.open(evaluated, device="cpu", train=False) as session:
        prompts = [session.builder.student_prompt_ids(t.prompt) for t in held_out]
        params = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens or 16)
        completions = session.sampler.sample(prompts, 1, params, greedy=True)
        expected = [
            session.tokenizer.decode(group[0].token_ids, skip_special_tokens=True)
            for group in completions
        ]
    assert answers == expected

    env = ArithmeticEnv(ArithmeticConfig(eval_size=EVAL_SIZE))
    scores = run_async(score_all(env, held_out, answers))
    accuracy = sum(s.verdict == "ok" for s in scores) / len(held_out)
    assert accuracy == summary["final_eval_accuracy"]


def test_the_checkpoint_tokenizer_encodes_a_prompt_as_training_did(run, held_out):
    _, _, checkpoint = run
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with RunPolicy.open(preset("sdpo", {"model": str(checkpoint)}), device="cpu") as session:
        for task in held_out[:4]:
            ids = tokenizer(task.prompt)["input_ids"]
            assert ids == session.builder.student_prompt_ids(task.prompt)
            assert ids[0] == tokenizer.bos_token_id
            assert ids.count(tokenizer.bos_token_id) == 1


def test_the_checkpoint_carries_the_tokenizer_and_generation_settings_of_its_model(run):
    _, _, checkpoint = run

    def read(directory: Path, name: str) -> dict:
        return json.loads((directory / name).read_text())

    assert read(checkpoint, "tokenizer.json") == read(TINY_MODEL_DIR, "tokenizer.json")
    shipped = read(TINY_MODEL_DIR, "tokenizer_config.json")  # saving adds loading flags
    saved = read(checkpoint, "tokenizer_config.json")
    assert {key: saved.get(key) for key in shipped} == shipped
    generation = GenerationConfig.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert generation.bos_token_id == tokenizer.bos_token_id
    assert generation.eos_token_id == tokenizer.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert generation.do_sample is False
    assert generation.max_new_tokens >= 4  # a whole answer and its <eos>
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model.generation_config.max_new_tokens == generation.max_new_tokens
