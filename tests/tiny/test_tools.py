"""The tool-use corpus of `tiny-tools` and the shipped model it trains.

Self-distillation needs room on the `lookup` task: the model must usually fail alone on
held-out names (it answers a made-up code without calling the tool) and nearly always
succeed with a successful sibling or the feedback on a failure in its context.
"""

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.tools.calls import CLOSE
from envs.tools.lookup import CONSONANTS, VOWELS, LookupConfig, LookupEnv
from tiny.pretrain import build_tokenizer
from tiny.tools import (
    EPISODE_TOKENS,
    HELD_OUT_DOCUMENTS,
    IGNORE,
    ToolCorpus,
    ToolCorpusConfig,
    correct_episode,
    encode_episode,
    hinted_context,
    made_up_code,
    misspell,
)
from trainer.config import ContextConfig
from trainer.context import TeacherContextBuilder
from trainer.episodes import greedy_episode_accuracy
from trainer.model import TINY_TOOLS_MODEL_DIR, resolve_model
from trainer.sampler import TransformersSampler


@pytest.fixture(scope="module")
def corpus():
    return ToolCorpus(ToolCorpusConfig(documents=2048))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_the_corpus_leaves_out_every_name_a_run_can_train_or_evaluate_on(corpus):
    names = {t.data["name"] for t in corpus.tasks}
    run_names = set(LookupEnv(LookupConfig(documents=HELD_OUT_DOCUMENTS)).codes)
    default_run = {t.data["name"] for s in ("train", "eval") for t in LookupEnv().dataset(s)}
    assert len(names) > 1000
    assert not names & run_names
    assert default_run <= run_names


def test_a_correct_episode_is_judged_ok_and_a_made_up_code_is_not(corpus):
    task = corpus.tasks[0]
    played = correct_episode(corpus.env, task)
    assert played.score.verdict == "ok"
    assert played.transcript.endswith(task.reference)
    assert f"<tool_response>{task.data['name']}: {task.reference}</tool_response>" in (
        played.transcript
    )
    assert made_up_code(task.data["name"]) == made_up_code(task.data["name"])  # one per name
    assert corpus.document("plain", random.Random(0), build_tokenizer())  # plays without error


def test_misspell_replaces_one_letter_by_one_of_the_same_kind():
    rng = random.Random(0)
    for name in ["kibo", "zatunu", "bad"]:
        wrong = misspell(name, rng)
        diff = [(a, b) for a, b in zip(name, wrong, strict=True) if a != b]
        assert len(diff) == 1
        (a, b), kinds = diff[0], (VOWELS, CONSONANTS)
        assert any(a in kind and b in kind for kind in kinds)


def test_observations_are_masked_and_a_turn_that_calls_is_taught_to_stop(corpus, tokenizer):
    task = corpus.tasks[1]
    played = correct_episode(corpus.env, task)
    ids, labels = encode_episode(tokenizer, corpus.env.prompt(task), played)
    assert len(ids) == len(labels)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == corpus.env.prompt(task) + played.transcript
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    eos = tokenizer.eos_token_id
    # the trained text: the call, an EOS where the observation starts, the answer, an EOS
    pieces, run = [], []
    for i in trained:
        if labels[i] == eos:
            pieces.append(tokenizer.decode(run))
            run = []
        else:
            run.append(labels[i])
    call, answer = pieces
    assert call.endswith(CLOSE) and call.startswith("<tool_call>")
    assert answer == task.reference
    assert ids[trained[-1]] == eos  # the episode ends with EOS
    observation_start = trained[len(tokenizer(call, add_special_tokens=False)["input_ids"])]
    assert ids[observation_start] != eos  # there the input is the observation, the label EOS
    assert tokenizer.decode(ids[observation_start:]).startswith("\n<tool_response>")


def test_plain_documents_follow_the_policy_of_their_name(corpus):
    rng = random.Random(0)
    handled = [t for t in corpus.tasks if corpus.handled(t)]
    unhandled = [t for t in corpus.tasks if not corpus.handled(t)]
    assert 0.15 < len(handled) / len(corpus.tasks) < 0.35

    def success(tasks):
        picks = [rng.choice(tasks) for _ in range(400)]
        return sum(corpus.plain_episode(t, rng).score.verdict == "ok" for t in picks) / 400

    assert success(handled) > 0.7
    assert success(unhandled) < 0.2


@pytest.fixture(scope="module")
def shipped():
    path = resolve_model("tiny-tools")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_tiny_tools_is_weak_alone_and_strong_with_a_sibling_or_feedback(shipped):
    model, tokenizer = shipped
    env = LookupEnv()
    tasks = list(env.dataset("eval"))
    rng = random.Random(0)
    builder = TeacherContextBuilder(tokenizer, ContextConfig())

    def success(contexts=None):
        return greedy_episode_accuracy(
            env,
            tasks,
            sampler=TransformersSampler(model, tokenizer),
            tokenizer=tokenizer,
            builder=builder,
            max_new_tokens=EPISODE_TOKENS,
            prompts=None if contexts is None else [builder.encode(c) for c in contexts],
        )

    alone = success()
    sibling = [hinted_context(env, t, rng, sibling=True) for t in tasks]
    feedback = [hinted_context(env, t, rng, sibling=False) for t in tasks]
    assert 0.10 <= alone <= 0.35, alone
    assert success(sibling) >= 0.90
    assert success(feedback) >= 0.90
    assert TINY_TOOLS_MODEL_DIR.is_dir()
