"""What a run is, step by step: the one core that `opsd train` and the service both drive.

A run of a `RunConfig` is its base evaluation (step 0) and the steps 1..`steps`. Every
choice that must not depend on which process makes it, or on what that process did
before, is a function of the configuration, its seed and the step (`RunPlan`):

- the tasks step s samples (`tasks`), and where its token draws come from
  (`sampling_seed`), so that a resumed run, a step sampled again after a restart and
  the two drivers sample the same;
- the milestones (`is_milestone`, `milestones`): step 0, every `eval.every` steps and
  the last step; each is evaluated on held-out tasks and its checkpoint is kept;
- when a guard stops it (`guard`, trainer/guards.py), and its summary (`summary`).

The parts with effects take their collaborators as arguments: `open_policy` (the same
initial weights everywhere), `sample_step` (a policy copy samples and scores a step),
`train_step` (one optimiser step and its outcome), `save_step` / `load_step` /
`prune_checkpoints` (the run directory's checkpoints). `trainer.loop.train` drives them
in one process; the service's orchestrator (sampling, evaluation, the summary) and
trainer worker (training, checkpoints) drive them across processes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from envs.base import Task
from trainer.batch import Batch
from trainer.checkpoint import checkpoint_path, checkpoint_steps, load_checkpoint, save_checkpoint
from trainer.config import RunConfig
from trainer.guards import Stop, best_evaluation, check
from trainer.model import UNRESTRICTED, ModelAccess, load_policy, pick_device
from trainer.rollout import Rollout, budget_warning, rollout_stats
from trainer.sampler import sampling_seed
from trainer.step import Learner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """The pure part of a run: what each step samples, and when it is evaluated."""

    cfg: RunConfig

    def tasks(self, train_tasks: Sequence[Task], step: int) -> list[Task]:
        """The `prompts_per_step` tasks step `step` samples, drawn from `train_tasks`."""
        rng = random.Random(f"{self.cfg.seed}:{step}")
        return rng.sample(list(train_tasks), self.cfg.prompts_per_step)

    def sampling_seed(self, step: int) -> int:
        """The seed of step `step`'s token draws (trainer/sampler.py)."""
        return sampling_seed(self.cfg.seed, step)

    def training_seed(self, step: int) -> int:
        """The seed of torch's RNG while step `step` trains (dropout, if the model has any)."""
        digest = hashlib.blake2b(f"train:{self.cfg.seed}:{step}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") % (1 << 63)

    def is_milestone(self, step: int) -> bool:
        """Step 0, every `eval.every` steps and the last: evaluated, checkpoint kept."""
        return step == 0 or step % self.cfg.eval.every == 0 or step == self.cfg.steps

    def milestones(self, steps_done: int) -> list[int]:
        """The milestones reached once `steps_done` steps are trained, in order."""
        done = min(steps_done, self.cfg.steps)
        reached = [0, *range(self.cfg.eval.every, done + 1, self.cfg.eval.every)]
        if done == self.cfg.steps and reached[-1] != done:
            reached.append(done)
        return reached

    def samples_seen(self, step: int) -> int:
        return step * self.cfg.prompts_per_step * self.cfg.samples_per_prompt

    def guard(
        self,
        step: int,
        recent: Sequence[Mapping[str, float]],
        evaluations: Mapping[int, float],
    ) -> Stop | None:
        """Whether a guard (`cfg.guard`) stops the run after step `step`: `recent` are the
        metrics of the steps up to it, oldest first, `evaluations` the milestones' held-out
        accuracy so far (trainer/guards.py)."""
        return check(self.cfg.guard, step, recent, evaluations)

    def summary(
        self,
        run_dir: str | Path,
        evaluations: Mapping[int, float],
        stopped: Stop | None = None,
    ) -> dict[str, Any]:
        """A finished run: its base, final and best held-out accuracy (`evaluations`: step
        -> accuracy), how much it sampled, its last and its best checkpoint, and, for a run a
        guard stopped, at which step and why. The best checkpoint is None when the base
        model (step 0) is the best."""
        steps = stopped.step if stopped is not None else self.cfg.steps
        best = best_evaluation(evaluations)
        best_step = best[0] if best else None
        return {
            "base_eval_accuracy": evaluations.get(0),
            "final_eval_accuracy": evaluations[max(evaluations)] if evaluations else None,
            "best_step": best_step,
            "best_eval_accuracy": best[1] if best else None,
            "best_checkpoint": str(checkpoint_path(run_dir, best_step)) if best_step else None,
            "samples_seen": self.samples_seen(steps),
            "steps": steps,
            "algorithm": self.cfg.algorithm,
            "checkpoint": str(checkpoint_path(run_dir, steps)) if steps else None,
            "stopped": (
                {"step": stopped.step, "guard": stopped.guard, "reason": stopped.reason}
                if stopped is not None
                else None
            ),
        }


def open_policy(
    cfg: RunConfig, device: str | None = None, access: ModelAccess = UNRESTRICTED
) -> tuple[torch.nn.Module, Any]:
    """The policy and tokenizer a run starts from, the same in every process (a LoRA
    adapter's initial weights come from torch's RNG, seeded with the run's seed)."""
    torch.manual_seed(cfg.seed)
    return load_policy(cfg.model, lora=cfg.lora, device=pick_device(device), access=access)


class PolicyCopy(Protocol):
    """What samples and evaluates a run: trainer.loop.RunPolicy, or a scripted stand-in."""

    env: Any

    def rollout(
        self, tasks: Sequence[Task], policy_version: int, seed: int | None = None
    ) -> tuple[Batch, list[Rollout]]: ...
    def evaluate(self) -> float: ...
    def load_weights(self, path: Path) -> None: ...
    def close(self) -> None: ...


@dataclass
class SampledStep:
    """One step's groups: the trainable batch, the readable rollouts, sampling statistics."""

    batch: Batch
    rollouts: list[Rollout]
    stats: dict[str, float]


def sample_step(
    plan: RunPlan, policy: PolicyCopy, train_tasks: Sequence[Task], step: int, version: int
) -> SampledStep:
    """Sample and score step `step` with `policy` at policy version `version` (the number
    of steps its weights have trained): its tasks and draws are the plan's."""
    began = time.monotonic()
    tasks = plan.tasks(train_tasks, step)
    batch, rollouts = policy.rollout(tasks, version, plan.sampling_seed(step))
    stats = {
        **rollout_stats(batch, rollouts),  # reward, length, truncation, episode metrics
        "samples_seen": plan.samples_seen(step),
        "policy_lag": step - 1 - version,
        "sample_seconds": time.monotonic() - began,
    }
    if step == 1 and (hint := budget_warning(stats, plan.cfg.sampling.max_new_tokens)):
        log.warning("%s", hint)
    return SampledStep(batch, rollouts, stats)


@dataclass
class StepOutcome:
    """What one optimiser step produced, as the record stores it."""

    step: int
    batch_id: str
    metrics: dict[str, float]
    log_ratios: list[list[float | None]]  # per sample, per response token (None: env token)
    tokens: list[list[str]]  # the response tokens those log-ratios belong to


def train_step(
    plan: RunPlan, learner: Learner, tokenizer: Any, batch: Batch, step: int
) -> StepOutcome:
    """One optimiser step on `batch` as step `step`."""
    torch.manual_seed(plan.training_seed(step))
    result = learner.step(batch)
    return StepOutcome(
        step=step,
        batch_id=batch.id,
        metrics=result.metrics,
        log_ratios=result.log_ratios,
        tokens=[tokenizer.convert_ids_to_tokens(s.response_ids) for s in batch.samples],
    )


def save_step(
    plan: RunPlan,
    run_dir: str | Path,
    step: int,
    *,
    learner: Learner,
    tokenizer: Any,
    state: dict[str, Any],
) -> Path:
    """Checkpoint the policy, optimiser, schedule and teacher after step `step`, with
    `state` (and the step) in its state.json. A milestone's checkpoint also holds the
    tokenizer: a complete Hugging Face model directory."""
    learner.policy.eval()
    return save_checkpoint(
        checkpoint_path(run_dir, step),
        policy=learner.policy,
        tokenizer=tokenizer if plan.is_milestone(step) else None,
        optimizer=learner.optimizer,
        scheduler=learner.scheduler,
        teacher=learner.teacher,
        state={**state, "step": step},
    )


def load_step(path: str | Path, learner: Learner) -> dict[str, Any]:
    """Resume `learner` (and its policy) from a checkpoint; its state.json."""
    state = load_checkpoint(
        path,
        policy=learner.policy,
        optimizer=learner.optimizer,
        scheduler=learner.scheduler,
        teacher=learner.teacher,
    )
    learner.steps_done = state["step"]
    return state


def prune_checkpoints(plan: RunPlan, run_dir: str | Path, keep: int) -> None:
    """Drop checkpoints beyond the newest `keep`, except milestones."""
    for step in checkpoint_steps(run_dir)[:-keep]:
        if not plan.is_milestone(step):
            shutil.rmtree(checkpoint_path(run_dir, step), ignore_errors=True)
