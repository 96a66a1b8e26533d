"""Sampling tool episodes (envs/tools) into a batch (docs/architecture.md "The walk of one step").

An episode is ONE response that alternates model turns and environment observations:

    <model turn 1 ...</tool_call><observation 1><model turn 2 ...</tool_call>...<final answer>

All G x P episodes of a step advance together, turn by turn: each turn is one batched
sampler call over the episodes still running, each prompted with its student prompt plus
its response so far. A model turn is cut after its first `</tool_call>` (what follows is
never trained on, and a cut turn has no EOS); the environment answers with an observation
whose tokens are appended with mask 0 and log-prob 0.0 (docs/algorithm.md "Aggregation and masks").
A turn without a call is the final answer and keeps its EOS. The episode's budget is
`sampling.max_new_tokens` tokens over all its turns and observations; running into it
truncates the episode. Each group's teacher prompts come from the same
`TeacherContextBuilder` as single-turn rollouts, with a successful sibling's whole
transcript as the solution and the episode's feedback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from envs.base import Score, Task
from envs.tools.base import Episode, ToolEnvironment
from envs.tools.calls import CLOSE, cut_after_call
from trainer.batch import Batch
from trainer.config import SamplingConfig
from trainer.context import TeacherContextBuilder
from trainer.rollout import EPISODE_METRICS, Rollout, Scored, assemble, run_async
from trainer.sampler import Completion, Sampler

DEFAULT_MAX_TURNS = 4


@dataclass
class ModelTurn:
    """One sampled model turn after the cut: the tokens kept and the text the env reads."""

    token_ids: list[int]
    logprobs: list[float]
    text: str  # the turn as the environment gets it (cut after its call)
    called: bool  # cut after a `</tool_call>`
    hit_budget: bool  # no EOS and no call within the tokens left: the budget ran out


@dataclass
class EpisodeState:
    """One episode in progress: its environment episode and the response built so far."""

    episode: Episode
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # 0.0 at environment tokens
    mask: list[int] = field(default_factory=list)  # 1 = model token, 0 = environment token
    pieces: list[str] = field(default_factory=list)  # transcript: turns and observations
    turn_tokens: list[int] = field(default_factory=list)  # model tokens kept, per turn
    truncated: bool = False
    done: bool = False

    @property
    def transcript(self) -> str:
        return "".join(self.pieces)


def episode_prompt(
    env: ToolEnvironment, task: Task, builder: TeacherContextBuilder
) -> tuple[str, TeacherContextBuilder]:
    """The student prompt text of a multi-turn task, and the builder that encodes it (and
    the teacher contexts built on it).

    Without a chat template: the env's plain prompt (`env.prompt(task)`, which lists the
    tools when the env config says `describe_tools`). With one: the task prompt as the
    user turn with the tools' JSON schemas, through the template: the rendering of
    `env.chat_prompt(task, tokenizer)`, done by the builder so that the teacher prompts
    carry the same tools.
    """
    if getattr(builder.tokenizer, "chat_template", None):
        return task.prompt, builder.with_tools([t.schema() for t in env.tools()])
    return env.prompt(task), builder


def env_max_turns(env: ToolEnvironment) -> int:
    """The environment config's `max_turns` (ToolEnvConfig), or the spec's default 4."""
    return getattr(getattr(env, "config", None), "max_turns", None) or DEFAULT_MAX_TURNS


def shortest_prefix(token_ids: Sequence[int], text: str, tokenizer) -> int:
    """The fewest leading tokens whose decoded text contains `text` (binary search).

    `text` is a prefix of the decoded tokens; with a tokenizer that merges characters the
    last kept token may reach past it, and is kept whole.
    """
    low, high = 0, len(token_ids)  # decode(ids[:high]) contains text; ids[:low] may not
    while low < high:
        mid = (low + high) // 2
        if text in tokenizer.decode(token_ids[:mid], skip_special_tokens=True):
            high = mid
        else:
            low = mid + 1
    return high


def cut_turn(completion: Completion, room: int, tokenizer) -> ModelTurn:
    """A sampled turn limited to the `room` tokens its episode has left, cut after its call.

    A cut turn keeps the shortest token prefix holding the text up to `</tool_call>` (its
    log-probs unchanged, no EOS). An uncut turn keeps every token, EOS included.
    """
    token_ids, logprobs = completion.token_ids[:room], completion.logprobs[:room]
    ends_with_eos = bool(token_ids) and token_ids[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    cut = cut_after_call(text)
    called = CLOSE in cut
    if called:
        n = shortest_prefix(token_ids, cut, tokenizer)
        token_ids, logprobs = token_ids[:n], logprobs[:n]
    return ModelTurn(token_ids, logprobs, cut, called, hit_budget=not called and not ends_with_eos)


def advance(
    state: EpisodeState,
    turn: ModelTurn,
    observation: str | None,
    *,
    budget: int,
    last: bool,
    tokenizer,
) -> None:
    """Append one model turn and (unless the episode ends here) its observation.

    The episode ends when the env says so (`observation` None), at the last allowed turn,
    when the turn ran into the budget, or when the observation would leave no room for
    another model token (truncated; the observation is dropped).
    """
    token_ids, logprobs = turn.token_ids, turn.logprobs
    obs_ids: list[int] = []
    if observation is None or last or turn.hit_budget:
        state.done = True
        state.truncated = turn.hit_budget
    else:
        obs_ids = tokenizer(observation, add_special_tokens=False)["input_ids"]
        if token_ids and token_ids[-1] == tokenizer.eos_token_id:  # the episode goes on
            token_ids, logprobs = token_ids[:-1], logprobs[:-1]
        if len(state.response_ids) + len(token_ids) + len(obs_ids) >= budget:
            state.done = state.truncated = True
            obs_ids = []
    state.response_ids += token_ids
    state.logprobs += logprobs
    state.mask += [1] * len(token_ids)
    state.turn_tokens.append(len(token_ids))
    state.pieces.append(tokenizer.decode(token_ids, skip_special_tokens=True))
    if obs_ids:
        state.response_ids += obs_ids
        state.logprobs += [0.0] * len(obs_ids)
        state.mask += [0] * len(obs_ids)
        state.pieces.append(observation)


async def run_episodes(
    env: ToolEnvironment,
    tasks: Sequence[Task],
    prompt_ids: Sequence[list[int]],
    *,
    sampler: Sampler,
    tokenizer,
    sampling: SamplingConfig,
    max_turns: int,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> list[tuple[EpisodeState, Score]]:
    """Play one episode per task (prompt), all turn by turn; returns each state and its Score.
    `generator`: where every turn's sampling draws from (trainer/sampler.py)."""
    states = [EpisodeState(env.start(t), list(p)) for t, p in zip(tasks, prompt_ids, strict=True)]
    budget = sampling.max_new_tokens
    for turn_index in range(max_turns):
        active = [s for s in states if not s.done]
        if not active:
            break
        rooms = [budget - len(s.response_ids) for s in active]  # each >= 1
        params = sampling.model_copy(update={"max_new_tokens": max(rooms)})
        completions = sampler.sample(
            [s.prompt_ids + s.response_ids for s in active],
            1,
            params,
            greedy=greedy,
            generator=generator,
        )
        turns = [
            cut_turn(c[0], room, tokenizer) for c, room in zip(completions, rooms, strict=True)
        ]
        results = await asyncio.gather(
            *(s.episode.step(t.text) for s, t in zip(active, turns, strict=True))
        )
        for state, turn, result in zip(active, turns, results, strict=True):
            observation = None if result.done else result.observation
            last = turn_index == max_turns - 1
            advance(state, turn, observation, budget=budget, last=last, tokenizer=tokenizer)
    scores = await asyncio.gather(*(s.episode.finish() for s in states))
    return list(zip(states, scores, strict=True))


def episode_metrics(state: EpisodeState, score: Score) -> dict[str, Any]:
    """The episode's counts (turns / tool_calls / tool_errors: the Score's
    `details["metrics"]`, else the episode's) and `per_turn`: for each model turn, its
    tokens and the tool it called, whether the call ran and its error (the env's turn log).
    """
    details = score.details or {}
    reported = details.get("metrics")
    if reported:
        counts = {k: int(reported[k]) for k in EPISODE_METRICS if k in reported}
    else:
        counts = {k: int(getattr(state.episode, k)) for k in EPISODE_METRICS}
    log = details.get("turn_log") or getattr(state.episode, "turn_log", None) or []
    per_turn = [
        {"tokens": tokens, **(log[i] if i < len(log) else {})}
        for i, tokens in enumerate(state.turn_tokens)
    ]
    return {**counts, "per_turn": per_turn}


def collect_episodes(
    env: ToolEnvironment,
    tasks: Sequence[Task],
    *,
    sampler: Sampler,
    tokenizer,
    builder: TeacherContextBuilder,
    group_size: int,
    sampling: SamplingConfig,
    max_turns: int | None = None,
    use_ground_truth: bool = False,
    policy_version: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Batch, list[Rollout]]:
    """G episodes per task, scored; each group's teacher prompts built from its episodes.

    `max_turns`: model turns per episode (default: the env config's). Samples hold the
    whole episode as the response: model tokens (mask 1, their sampling log-probs) and
    observation tokens (mask 0, log-prob 0.0). Rollouts carry `metrics`.
    """
    prompts, ids, prompt_builder = [], [], builder
    for task in tasks:
        text, prompt_builder = episode_prompt(env, task, builder)
        prompts.append(text)
        ids.append(prompt_builder.student_prompt_ids(text))
    flat_tasks = [t for t in tasks for _ in range(group_size)]
    flat_ids = [p for p in ids for _ in range(group_size)]
    played = run_async(
        run_episodes(
            env,
            flat_tasks,
            flat_ids,
            sampler=sampler,
            tokenizer=tokenizer,
            sampling=sampling,
            max_turns=max_turns or env_max_turns(env),
            generator=generator,
        )
    )
    scored = [
        Scored(
            s.response_ids,
            s.logprobs,
            s.truncated,
            s.transcript,
            score,
            mask=s.mask,
            metrics=episode_metrics(s, score),
        )
        for s, score in played
    ]
    return assemble(
        tasks,
        prompts,
        ids,
        scored,
        builder=prompt_builder,
        tokenizer=tokenizer,
        group_size=group_size,
        use_ground_truth=use_ground_truth,
        policy_version=policy_version,
    )


def greedy_episode_accuracy(
    env: ToolEnvironment,
    tasks: Sequence[Task],
    *,
    sampler: Sampler,
    tokenizer,
    builder: TeacherContextBuilder,
    max_new_tokens: int,
    max_turns: int | None = None,
    prompts: Sequence[list[int]] | None = None,
) -> float:
    """Fraction of tasks whose greedy episode the environment judges `ok`.

    `prompts` overrides the student prompts (for example with teacher contexts, to
    measure what the model can do with help).
    """
    if not tasks:
        return 0.0
    if prompts is None:
        prompts = []
        for task in tasks:
            text, prompt_builder = episode_prompt(env, task, builder)
            prompts.append(prompt_builder.student_prompt_ids(text))
    played = run_async(
        run_episodes(
            env,
            tasks,
            list(prompts),
            sampler=sampler,
            tokenizer=tokenizer,
            sampling=SamplingConfig(max_new_tokens=max_new_tokens),
            max_turns=max_turns or env_max_turns(env),
            greedy=True,
        )
    )
    return sum(score.verdict == "ok" for _, score in played) / len(tasks)
