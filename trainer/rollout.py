"""Sampling and scoring one step's groups (DESIGN.md steps 1-5).

`collect` takes tasks, samples G responses per task with the current policy, has
the environment score them, builds each sample's teacher prompt from the group's
feedback and returns a trainable `Batch` plus a readable record of every rollout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from envs.base import Environment, Score, Task
from trainer.batch import Batch, Sample
from trainer.config import SamplingConfig
from trainer.context import Attempt, TeacherContextBuilder
from trainer.sampler import Sampler


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
) -> tuple[Batch, list[Rollout]]:
    prompt_ids = [builder.student_prompt_ids(t.prompt) for t in tasks]
    completions = sampler.sample(prompt_ids, group_size, sampling)
    flat_tasks = [t for t in tasks for _ in range(group_size)]
    flat = [c for group in completions for c in group]
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in flat]
    scores = run_async(score_all(env, flat_tasks, texts))

    samples: list[Sample] = []
    rollouts: list[Rollout] = []
    for g, task in enumerate(tasks):
        members = range(g * group_size, (g + 1) * group_size)
        attempts = [Attempt(texts[i], scores[i].reward, scores[i].feedback) for i in members]
        teacher_ids = builder.teacher_prompt_ids(
            task.prompt,
            attempts,
            ground_truth=task.reference if use_ground_truth else None,
            demonstration=task.demonstration,
        )
        for i, t_ids in zip(members, teacher_ids, strict=True):
            c, score = flat[i], scores[i]
            samples.append(
                Sample(
                    prompt_ids=prompt_ids[g],
                    response_ids=c.token_ids,
                    sampler_logprobs=c.logprobs,
                    reward=score.reward,
                    truncated=c.truncated,
                    teacher_prompt_ids=t_ids,
                )
            )
            rollouts.append(
                Rollout(
                    task_id=task.id,
                    prompt=task.prompt,
                    response=texts[i],
                    reward=score.reward,
                    verdict=str(score.verdict),
                    feedback=score.feedback,
                    teacher_context=tokenizer.decode(t_ids, skip_special_tokens=True)
                    if t_ids
                    else None,
                    truncated=c.truncated,
                )
            )
    return Batch(samples, group_size, policy_version), rollouts


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
