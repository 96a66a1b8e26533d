"""Sampling and scoring one step's groups (docs/architecture.md "The walk of one step", steps 2-4).

`collect` takes tasks, samples G responses per task with the current policy, has
the environment score them, builds each sample's teacher prompt from the group's
feedback and returns a trainable `Batch` plus a readable record of every rollout.
`assemble` is the part shared with multi-turn episodes (trainer/episodes.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from envs.base import Environment, Score, Task
from trainer.batch import Batch, Sample
from trainer.config import SamplingConfig
from trainer.context import Attempt, TeacherContextBuilder
from trainer.sampler import Sampler

EPISODE_METRICS = ("turns", "tool_calls", "tool_errors")  # counted per multi-turn episode


@dataclass
class Rollout:
    """One scored response, as the service stores and shows it."""

    task_id: str
    prompt: str
    response: str
    reward: float
    verdict: str
    feedback: str | None
    teacher_context: str | None
    truncated: bool
    metrics: dict | None = None  # multi-turn episodes: {"turns", "tool_calls", "tool_errors"}


def run_async(coro):
    """Run a coroutine from synchronous code (the trainer loop is synchronous)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise RuntimeError("collect() is synchronous; call it from a worker thread inside async code")


async def score_all(
    env: Environment, tasks: Sequence[Task], responses: Sequence[str]
) -> list[Score]:
    return list(
        await asyncio.gather(*(env.score(t, r) for t, r in zip(tasks, responses, strict=True)))
    )


@dataclass
class Scored:
    """One sampled response before it joins its group: tokens, text and judgement."""

    response_ids: list[int]
    logprobs: list[float]  # one per response token; 0.0 at environment tokens
    truncated: bool
    text: str  # what the environment judged (a whole transcript for an episode)
    score: Score
    mask: list[int] | None = None  # 1 = model token, 0 = environment token; None = all 1
    metrics: dict | None = None  # per-episode counts (turns, tool_calls, tool_errors)


def assemble(
    tasks: Sequence[Task],
    prompts: Sequence[str],
    prompt_ids: Sequence[list[int]],
    scored: Sequence[Scored],
    *,
    builder: TeacherContextBuilder,
    tokenizer,
    group_size: int,
    use_ground_truth: bool,
    policy_version: int,
) -> tuple[Batch, list[Rollout]]:
    """Build each group's teacher prompts from its judged attempts (docs/algorithm.md "Teacher context")
    and lay out the trainable `Batch` and the readable rollouts.

    Per task (P of them): the student prompt text and its ids (`builder` encodes the
    teacher prompts the same way); `scored` holds G = group_size responses per task,
    group-contiguous.
    """
    samples: list[Sample] = []
    rollouts: list[Rollout] = []
    for g, task in enumerate(tasks):
        members = scored[g * group_size : (g + 1) * group_size]
        attempts = [Attempt(r.text, r.score.reward, r.score.feedback) for r in members]
        teacher_ids = builder.teacher_prompt_ids(
            prompts[g],
            attempts,
            ground_truth=task.reference if use_ground_truth else None,
            demonstration=task.demonstration,
        )
        for r, t_ids in zip(members, teacher_ids, strict=True):
            samples.append(
                Sample(
                    prompt_ids=prompt_ids[g],
                    response_ids=r.response_ids,
                    sampler_logprobs=r.logprobs,
                    reward=r.score.reward,
                    truncated=r.truncated,
                    teacher_prompt_ids=t_ids,
                    response_mask=r.mask,
                )
            )
            rollouts.append(
                Rollout(
                    task_id=task.id,
                    prompt=prompts[g],
                    response=r.text,
                    reward=r.score.reward,
                    verdict=str(r.score.verdict),
                    feedback=r.score.feedback,
                    teacher_context=tokenizer.decode(t_ids, skip_special_tokens=True)
                    if t_ids
                    else None,
                    truncated=r.truncated,
                    metrics=r.metrics,
                )
            )
    return Batch(samples, group_size, policy_version), rollouts


def collect(
    env: Environment,
    tasks: Sequence[Task],
    *,
    sampler: Sampler,
    tokenizer,
    builder: TeacherContextBuilder,
    group_size: int,
    sampling: SamplingConfig,
    use_ground_truth: bool = False,
    policy_version: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Batch, list[Rollout]]:
    """Sample G single-turn responses per task, score them, build the teacher prompts.
    `generator`: where the sampler draws from (trainer/sampler.py)."""
    prompt_ids = [builder.student_prompt_ids(t.prompt) for t in tasks]
    completions = sampler.sample(prompt_ids, group_size, sampling, generator=generator)
    flat_tasks = [t for t in tasks for _ in range(group_size)]
    flat = [c for group in completions for c in group]
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in flat]
    scores = run_async(score_all(env, flat_tasks, texts))
    scored = [
        Scored(c.token_ids, c.logprobs, c.truncated, text, score)
        for c, text, score in zip(flat, texts, scores, strict=True)
    ]
    return assemble(
        tasks,
        [t.prompt for t in tasks],
        prompt_ids,
        scored,
        builder=builder,
        tokenizer=tokenizer,
        group_size=group_size,
        use_ground_truth=use_ground_truth,
        policy_version=policy_version,
    )


def greedy_accuracy(
    env: Environment,
    tasks: Sequence[Task],
    *,
    sampler: Sampler,
    tokenizer,
    builder: TeacherContextBuilder,
    max_new_tokens: int,
    prompts: Sequence[list[int]] | None = None,
) -> float:
    """Fraction of tasks whose greedy response the environment judges `ok`.

    `prompts` overrides the student prompts (for example with teacher contexts, to
    measure what the model can do with help).
    """
    if not tasks:
        return 0.0
    prompt_ids = (
        list(prompts)
        if prompts is not None
        else [builder.student_prompt_ids(t.prompt) for t in tasks]
    )
    params = SamplingConfig(max_new_tokens=max_new_tokens)
    completions = sampler.sample(prompt_ids, 1, params, greedy=True)
    texts = [
        tokenizer.decode(group[0].token_ids, skip_special_tokens=True) for group in completions
    ]
    scores = run_async(score_all(env, tasks, texts))
    return sum(s.verdict == "ok" for s in scores) / len(tasks)


def episode_stats(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Per-step means of the episode metrics (`turns_mean`, ...); {} for single-turn rollouts."""
    with_metrics = [r.metrics for r in rollouts if r.metrics]
    if not with_metrics:
        return {}
    return {
        f"{k}_mean": sum(m.get(k, 0) for m in with_metrics) / len(with_metrics)
        for k in EPISODE_METRICS
    }


def rollout_stats(batch: Batch, rollouts: Sequence[Rollout]) -> dict[str, float]:
    """What a step's sampling looked like: mean reward, the fraction judged ok, response
    length, the fraction cut off by `sampling.max_new_tokens` (`truncated_frac`) and, for
    episodes, the means of the episode metrics."""
    n = len(rollouts)
    return {
        "reward_mean": sum(r.reward for r in rollouts) / n,
        "ok_fraction": sum(r.verdict == "ok" for r in rollouts) / n,
        "response_tokens_mean": sum(len(s.response_ids) for s in batch.samples) / n,
        "truncated_frac": sum(s.truncated for s in batch.samples) / n,
        **episode_stats(rollouts),
    }


def budget_warning(stats: dict[str, float], max_new_tokens: int) -> str | None:
    """A hint when a quarter or more of the responses ran into the token budget, else None.
    Episodes (multi-turn environments: their stats hold `turns_mean`) get their own reason."""
    if stats.get("truncated_frac", 0.0) < 0.25:
        return None
    why = (
        "a tool episode needs room for every call, tool output and the answer"
        if "turns_mean" in stats
        else "a response cut off before its answer cannot be right"
    )
    return (
        f"{stats['truncated_frac']:.0%} of the responses ran into sampling.max_new_tokens="
        f"{max_new_tokens}; raise it ({why})"
    )
