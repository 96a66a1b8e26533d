"""Multi-turn episodes become batches: turns, cuts, masks, budgets, metrics, teacher prompts.

Two kinds of test. Plumbing tests play scripted turns (`ScriptSampler`, made-up
log-probs) against `Scripted`, a small `ToolEnvironment` with one `lookup` tool, with
the tiny model's character tokenizer, so every token can be predicted. Tests on the
real tiny model check what scripted turns cannot: that the log-probs kept for model
tokens are the policy's own after observations, and that a whole session collects
episodes. The tiny model does not call tools by itself, so `Nudging` answers its first
turns with an observation anyway, making its episodes multi-turn (plumbing, on purpose).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import torch

from envs.tools.calls import format_call, observation
from envs.tools.lookup import LookupEnv, correct_episode
from tiny.pretrain import build_tokenizer
from trainer.config import ContextConfig, SamplingConfig
from trainer.context import Attempt, TeacherContextBuilder
from trainer.episodes import (
    collect_episodes,
    cut_turn,
    episode_prompt,
    greedy_episode_accuracy,
    shortest_prefix,
)
from trainer.loop import RunPolicy, train
from trainer.model import load_policy
from trainer.presets import preset
from trainer.rollout import Rollout, budget_warning, episode_stats, run_async
from trainer.sampler import Completion, TransformersSampler

from .episode_envs import CALL, EOS, OBS, TASKS, Nudging, Scripted, ScriptSampler


def lookup_then_answer(answer: str = "The code is 4821.") -> Callable[[str, int], str]:
    return lambda context, row: answer + EOS if "<tool_response>" in context else CALL + EOS


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def play(tokenizer, script, *, env=None, tasks=TASKS[:1], group_size=1, budget=200, **kwargs):
    sampler = ScriptSampler(tokenizer, script)
    batch, rollouts = collect_episodes(
        env or Scripted(),
        tasks,
        sampler=sampler,
        tokenizer=tokenizer,
        builder=TeacherContextBuilder(tokenizer, ContextConfig()),
        group_size=group_size,
        sampling=SamplingConfig(max_new_tokens=budget),
        **kwargs,
    )
    return batch, rollouts, sampler


def test_an_episode_alternates_model_turns_and_masked_observations(tokenizer):
    final = "The code is 4821."
    batch, rollouts, sampler = play(tokenizer, lookup_then_answer(final), group_size=2)
    call, obs, answer = ids(tokenizer, CALL), ids(tokenizer, OBS), ids(tokenizer, final)
    eos = tokenizer.eos_token_id
    made_up = [-0.01 * (i + 1) for i in range(len(answer) + 1)]
    for sample, rollout in zip(batch.samples, rollouts, strict=True):
        assert sample.response_ids == call + obs + answer + [eos]  # final turn keeps its EOS
        assert sample.response_mask == [1] * len(call) + [0] * len(obs) + [1] * len(made_up)
        assert sample.sampler_logprobs[len(call) : len(call) + len(obs)] == [0.0] * len(obs)
        assert sample.sampler_logprobs[len(call) + len(obs) :] == made_up
        assert sample.prompt_ids == [tokenizer.bos_token_id, *ids(tokenizer, TASKS[0].prompt)]
        assert (sample.reward, sample.truncated) == (1.0, False)
        assert rollout.response == CALL + OBS + final
        assert (rollout.verdict, rollout.prompt) == ("ok", TASKS[0].prompt)
        assert rollout.metrics == {
            "turns": 2,
            "tool_calls": 1,
            "tool_errors": 0,
            "per_turn": [
                {"tokens": len(call), "tool": "lookup", "ran": True, "error": None},
                {"tokens": len(made_up), "tool": None, "ran": False, "error": None},
            ],
        }
    # one sampler call per turn over both episodes, each prompted with its response so far
    assert [len(c["prompts"]) for c in sampler.calls] == [2, 2]
    second = sampler.calls[1]
    assert second["prompts"][0] == batch.samples[0].prompt_ids + call + obs
    assert second["params"].max_new_tokens == 200 - len(call) - len(obs)


def test_a_turn_is_cut_after_its_first_call_without_eos_and_keeps_its_logprobs(tokenizer):
    eos = tokenizer.eos_token_id
    tokens = ids(tokenizer, CALL + " then more</tool_call>") + [eos]
    logprobs = [-0.5 - i for i in range(len(tokens))]
    turn = cut_turn(Completion(tokens, logprobs, truncated=False), len(tokens), tokenizer)
    n = len(ids(tokenizer, CALL))
    assert (turn.token_ids, turn.logprobs) == (tokens[:n], logprobs[:n])
    assert (turn.text, turn.called, turn.hit_budget) == (CALL, True, False)

    at_end = cut_turn(Completion(tokens[:n] + [eos], logprobs[: n + 1], False), 99, tokenizer)
    assert at_end.token_ids == tokens[:n]  # the call's EOS is dropped too

    answer = ids(tokenizer, "4821") + [eos]
    final = cut_turn(Completion(answer, [-1.0] * 5, False), 99, tokenizer)
    assert (final.token_ids, final.called, final.hit_budget) == (answer, False, False)
    short = cut_turn(Completion(answer, [-1.0] * 5, False), 3, tokenizer)  # 3 tokens left
    assert (short.token_ids, short.text, short.hit_budget) == (answer[:3], "482", True)


class MergingTokenizer:
    """Tokens of several characters, the way BPE merges `>` with the newline after it."""

    eos_token_id = 0
    pieces = ["<eos>", "<tool", "_call>", '{"name": "f"}', "</tool_call>\n", "x"]

    def decode(self, token_ids, skip_special_tokens=True):
        return "".join(self.pieces[t] for t in token_ids if t or not skip_special_tokens)


def test_the_cut_keeps_the_shortest_token_prefix_holding_the_call_with_merged_tokens():
    tok = MergingTokenizer()
    tokens = [1, 2, 3, 4, 5, 0]
    assert shortest_prefix(tokens, '<tool_call>{"name": "f"}</tool_call>', tok) == 4
    turn = cut_turn(Completion(tokens, [-0.1] * 6, truncated=False), 6, tok)
    assert turn.token_ids == [1, 2, 3, 4]  # the merged "\n" stays with its token
    assert turn.text == '<tool_call>{"name": "f"}</tool_call>'


def test_a_turn_that_runs_into_the_budget_truncates_the_episode(tokenizer):
    call, obs = ids(tokenizer, CALL), ids(tokenizer, OBS)
    budget = len(call) + len(obs) + 3
    batch, rollouts, sampler = play(tokenizer, lookup_then_answer("4821"), budget=budget)
    sample = batch.samples[0]
    assert len(sample.response_ids) == budget and sample.truncated and rollouts[0].truncated
    assert sample.response_ids[-3:] == ids(tokenizer, "482")
    assert sample.response_mask[-3:] == [1, 1, 1]
    assert sampler.calls[1]["params"].max_new_tokens == 3
    assert rollouts[0].verdict == "wrong_answer"  # the env judged the truncated answer "482"


def test_an_observation_that_leaves_no_room_is_dropped_and_truncates(tokenizer):
    call, obs = ids(tokenizer, CALL), ids(tokenizer, OBS)
    batch, rollouts, sampler = play(tokenizer, lookup_then_answer(), budget=len(call) + len(obs))
    sample = batch.samples[0]
    assert sample.response_ids == call and sample.response_mask == [1] * len(call)
    assert sample.truncated and len(sampler.calls) == 1
    assert rollouts[0].verdict == "format_error"  # no final answer
    assert counts(rollouts[0]) == {"turns": 1, "tool_calls": 1, "tool_errors": 0}
    assert rollouts[0].metrics["per_turn"] == [
        {"tokens": len(call), "tool": "lookup", "ran": True, "error": None}
    ]


def test_episodes_end_at_the_env_configs_max_turns_or_a_given_one(tokenizer):
    def always_call(context, row):
        return CALL + EOS

    call, obs = ids(tokenizer, CALL), ids(tokenizer, OBS)
    batch, rollouts, sampler = play(tokenizer, always_call, env=Scripted(max_turns=3), budget=600)
    # the env's last turn: its call is not executed, so no observation follows it
    assert batch.samples[0].response_ids == (call + obs) * 2 + call
    assert len(sampler.calls) == 3 and not batch.samples[0].truncated
    assert counts(rollouts[0]) == {"turns": 3, "tool_calls": 2, "tool_errors": 0}
    # the last turn's call is logged but did not run
    assert [t["ran"] for t in rollouts[0].metrics["per_turn"]] == [True, True, False]
    assert rollouts[0].verdict == "format_error"

    batch, rollouts, sampler = play(tokenizer, always_call, max_turns=2)
    assert batch.samples[0].response_ids == call + obs + call
    assert batch.samples[0].response_mask[-len(call) :] == [1] * len(call)
    assert len(sampler.calls) == 2


def counts(rollout) -> dict[str, int]:
    return {k: v for k, v in rollout.metrics.items() if k != "per_turn"}


def siblings(context: str, row: int) -> str:
    """Rows 0 and 2 (first episode of each task) look the code up; rows 1 and 3 guess."""
    if "<tool_response>" in context:
        return context.rsplit(": ", 1)[1].split("<")[0] + EOS  # the code the tool returned
    return (
        CALL.replace("kibo", context.split()[-1].rstrip("?")) + EOS if row % 2 == 0 else "0000<eos>"
    )


def test_only_active_episodes_are_sampled_and_a_failure_is_taught_by_its_siblings_transcript(
    tokenizer,
):
    batch, rollouts, sampler = play(tokenizer, siblings, tasks=TASKS, group_size=2)
    assert [len(c["prompts"]) for c in sampler.calls] == [4, 2]
    assert [r.reward for r in rollouts] == [1.0, 0.0, 1.0, 0.0]
    for g, task in enumerate(TASKS):
        winner, loser = rollouts[2 * g], rollouts[2 * g + 1]
        assert observation(f"{task.id[5:]}: {task.reference}") in winner.response
        assert winner.teacher_context is None  # its own success is not its teacher context
        assert batch.samples[2 * g].teacher_prompt_ids is None
        assert loser.teacher_context.startswith(task.prompt)
        assert winner.response in loser.teacher_context  # the whole transcript, tool output too
        assert batch.samples[2 * g + 1].teacher_prompt_ids[0] == tokenizer.bos_token_id


def test_tool_errors_are_counted_and_fed_back(tokenizer):
    def bad_call_then_guess(context, row):
        return "0000" + EOS if "<tool_response>" in context else "<tool_call>{oops</tool_call>"

    batch, rollouts, _ = play(tokenizer, bad_call_then_guess)
    rollout = rollouts[0]
    assert counts(rollout) == {"turns": 2, "tool_calls": 1, "tool_errors": 1}
    first = rollout.metrics["per_turn"][0]
    assert (first["tool"], first["ran"]) == (None, True)  # malformed: no tool name
    assert first["error"].startswith("malformed JSON")
    assert "<tool_response>error: malformed JSON" in rollout.response
    assert "Tool errors:" in rollout.feedback
    assert episode_stats(rollouts) == {
        "turns_mean": 2.0,
        "tool_calls_mean": 1.0,
        "tool_errors_mean": 1.0,
    }


def test_episode_stats_average_the_metrics_and_are_empty_for_single_turn_rollouts():
    def rollout(metrics):
        return Rollout("t", "p", "r", 0.0, "ok", None, None, False, metrics)

    made = [rollout({"turns": 1, "tool_calls": 0, "tool_errors": 0})]
    made.append(rollout({"turns": 3, "tool_calls": 2, "tool_errors": 1}))
    assert episode_stats(made) == {
        "turns_mean": 2.0,
        "tool_calls_mean": 1.0,
        "tool_errors_mean": 0.5,
    }
    assert episode_stats([rollout(None)]) == {}


def test_greedy_episode_accuracy_plays_greedy_episodes(tokenizer):
    sampler = ScriptSampler(tokenizer, siblings)
    accuracy = greedy_episode_accuracy(
        Scripted(),
        TASKS * 2,
        sampler=sampler,
        tokenizer=tokenizer,
        builder=TeacherContextBuilder(tokenizer, ContextConfig()),
        max_new_tokens=200,
    )
    assert accuracy == 0.5  # rows 0 and 2 look the code up
    assert all(c["greedy"] for c in sampler.calls)


def test_a_chat_template_renders_the_tool_schemas_for_student_and_teacher(tokenizer):
    chat = build_tokenizer()
    chat.chat_template = (
        "{{ bos_token }}{% if tools %}[tools]{% for t in tools %}{{ t.function.name }}: "
        "{{ t.function.description }}\n{% endfor %}{% endif %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    env, task = Scripted(), TASKS[0]
    text, builder = episode_prompt(env, task, TeacherContextBuilder(chat, ContextConfig()))
    student = chat.decode(builder.student_prompt_ids(text))
    assert student == env.chat_prompt(task, chat)
    assert "[tools]lookup: Find the document about a name." in student
    teacher = builder.teacher_prompt_ids(text, [Attempt("wrong", 0.0, "The answer is wrong.")])
    assert "[tools]lookup" in chat.decode(teacher[0])
    # without a chat template: the env's plain prompt, as for single-turn tasks
    text, plain = episode_prompt(env, task, TeacherContextBuilder(tokenizer, ContextConfig()))
    assert text == env.prompt(task) and plain.tools is None


# --- the real tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    model, tok = load_policy("tiny", device=torch.device("cpu"))
    return model.eval(), tok


def test_kept_logprobs_are_the_policys_own_at_model_tokens_after_observations(policy):
    model, tok = policy
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=160)
    torch.manual_seed(0)
    batch, rollouts = collect_episodes(
        Nudging(nudges=2),
        TASKS,
        sampler=TransformersSampler(model, tok),
        tokenizer=tok,
        builder=TeacherContextBuilder(tok, ContextConfig()),
        group_size=3,
        sampling=sampling,
    )
    nudge = ids(tok, observation("error: call lookup"))
    after_observation = 0
    for sample, rollout in zip(batch.samples, rollouts, strict=True):
        n = len(sample.response_ids)
        assert n == len(sample.response_mask) == len(sample.sampler_logprobs) <= 160
        mask = torch.tensor(sample.response_mask, dtype=torch.bool)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([sample.prompt_ids + sample.response_ids])).logits
        logp = (logits[0, len(sample.prompt_ids) - 1 : -1] / 0.7).log_softmax(-1)  # [T, V]
        expected = logp.gather(-1, torch.tensor(sample.response_ids).unsqueeze(-1)).squeeze(-1)
        kept = torch.tensor(sample.sampler_logprobs)
        torch.testing.assert_close(kept[mask], expected[mask], atol=1e-4, rtol=0)
        assert (kept[~mask] == 0).all()
        env_ids = [
            t for t, m in zip(sample.response_ids, sample.response_mask, strict=True) if not m
        ]
        assert env_ids in ([], nudge, nudge * 2)
        after_observation += int(bool(env_ids) and sample.response_mask[-1] == 1)
        assert rollout.metrics["turns"] >= 1
    assert after_observation > 0  # model tokens conditioned on observations were checked


def test_a_session_on_a_multi_turn_env_collects_and_evaluates_episodes(policy):
    model, tok = policy
    cfg = preset(
        "sdpo",
        {"prompts_per_step": 2, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 128}},
    )
    env = Nudging(nudges=1)
    session = RunPolicy(
        cfg=cfg,
        policy=model,
        tokenizer=tok,
        env=env,
        builder=TeacherContextBuilder(tok, cfg.context),
        sampler=TransformersSampler(model, tok),
        learner=None,
    )
    batch, rollouts = session.rollout(TASKS, policy_version=3)
    assert batch.policy_version == 3 and len(rollouts) == 4
    assert all(r.metrics and r.metrics["turns"] >= 1 for r in rollouts)
    assert any(0 in s.response_mask for s in batch.samples)
    assert 0.0 <= session.evaluate() <= 1.0


# --- the real `lookup` environment --------------------------------------------------------


def test_scripted_lookup_episodes_score_like_the_envs_replay_of_their_transcript(tokenizer):
    env = LookupEnv()
    tasks = list(env.dataset("train"))[:2]

    def script(context: str, row: int) -> str:
        if "<tool_response>" in context:
            return context.rsplit(": ", 1)[1].split("<")[0] + EOS
        name = context.split("code of ")[1].split("?")[0]
        return format_call("lookup", {"query": name}) + EOS if row % 2 == 0 else "1000" + EOS

    batch, rollouts, _ = play(tokenizer, script, env=env, tasks=tasks, group_size=2)
    for g, task in enumerate(tasks):
        winner, loser = rollouts[2 * g], rollouts[2 * g + 1]
        assert winner.response == correct_episode(task.data["name"], task.reference)
        assert (winner.reward, winner.metrics["tool_calls"]) == (1.0, 1)
        assert loser.feedback == "The answer 1000 is wrong."
        assert winner.response in loser.teacher_context
    for task, rollout in zip([t for t in tasks for _ in range(2)], rollouts, strict=True):
        replayed = run_async(env.score(task, rollout.response))
        assert (replayed.reward, str(replayed.verdict)) == (rollout.reward, rollout.verdict)


def test_the_tiny_model_plays_real_lookup_episodes(policy):
    model, tok = policy
    env = LookupEnv()
    tasks = list(env.dataset("train"))[:3]
    torch.manual_seed(0)
    batch, rollouts = collect_episodes(
        env,
        tasks,
        sampler=TransformersSampler(model, tok),
        tokenizer=tok,
        builder=TeacherContextBuilder(tok, ContextConfig()),
        group_size=2,
        sampling=SamplingConfig(max_new_tokens=96),
    )
    assert len(batch.samples) == len(rollouts) == 6
    flat_tasks = [t for t in tasks for _ in range(2)]
    for sample, rollout, task in zip(batch.samples, rollouts, flat_tasks, strict=True):
        assert len(sample.response_ids) == len(sample.response_mask) <= 96
        assert sample.prompt_ids == [tok.bos_token_id, *ids(tok, task.prompt)]
        assert set(rollout.metrics) == {"turns", "tool_calls", "tool_errors", "per_turn"}
        assert rollout.metrics["turns"] == len(rollout.metrics["per_turn"]) >= 1
        turn_tokens = sum(t["tokens"] for t in rollout.metrics["per_turn"])
        assert turn_tokens == sum(sample.response_mask)
        replayed = run_async(env.score(task, rollout.response))
        assert (replayed.reward, str(replayed.verdict)) == (rollout.reward, rollout.verdict)
    assert (
        0.0
        <= greedy_episode_accuracy(
            env,
            tasks,
            sampler=TransformersSampler(model, tok),
            tokenizer=tok,
            builder=TeacherContextBuilder(tok, ContextConfig()),
            max_new_tokens=96,
        )
        <= 1.0
    )


def test_training_on_lookup_records_episode_stats_per_step(random_model_dir, tmp_path):
    cfg = preset(
        "sdpo",
        {
            "env": "lookup",
            "model": str(random_model_dir),
            "steps": 2,
            "prompts_per_step": 2,
            "samples_per_prompt": 2,
            "sampling": {"max_new_tokens": 64},
            "eval": {"every": 2, "size": 4},
        },
    )
    train(cfg, tmp_path, device="cpu")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for record in records[1:]:
        assert {"turns_mean", "tool_calls_mean", "tool_errors_mean", "loss"} <= record.keys()
        assert record["turns_mean"] >= 1.0
    assert 0.0 <= records[-1]["eval_accuracy"] <= 1.0


def test_budget_warning_names_the_setting_once_a_quarter_is_cut_off():
    assert budget_warning({"truncated_frac": 0.2}, 16) is None
    hint = budget_warning({"truncated_frac": 0.25}, 16)
    assert hint and "25% of the responses" in hint and "max_new_tokens=16; raise it" in hint


def test_budget_warning_speaks_of_tool_episodes_only_for_multi_turn_environments():
    single_turn = budget_warning({"truncated_frac": 0.5}, 16)
    episodes = budget_warning({"truncated_frac": 0.5, "turns_mean": 2.0}, 16)
    assert single_turn and "tool" not in single_turn and "before its answer" in single_turn
    assert episodes and "tool episode needs room" in episodes


@pytest.mark.parametrize(
    ("model", "budget", "warned"), [("random", 4, True), ("tiny-tools", 160, False)]
)
def test_a_run_whose_responses_hit_the_budget_warns_at_its_first_step(
    model, budget, warned, random_model_dir, tmp_path, caplog
):
    cfg = preset(
        "sdpo",
        {
            "env": "lookup",
            "model": str(random_model_dir) if model == "random" else model,
            "steps": 1,
            "prompts_per_step": 2,
            "samples_per_prompt": 4,
            "sampling": {"max_new_tokens": budget},
            "eval": {"every": 1, "size": 1},
        },
    )
    with caplog.at_level(logging.WARNING, logger="trainer.loop"):
        train(cfg, tmp_path, device="cpu")
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    hints = [r.message for r in caplog.records if "sampling.max_new_tokens=" in r.message]
    if warned:
        assert record["truncated_frac"] >= 0.5
        assert len(hints) == 1 and f"max_new_tokens={budget}; raise it" in hints[0]
    else:
        assert record["truncated_frac"] < 0.25 and not hints
