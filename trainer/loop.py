"""The offline training loop: sample, score, distil, evaluate, checkpoint; one process.

`train(cfg, out_dir)` is what `opsd train` runs and what a Python script can call.
It writes `metrics.jsonl` (one object per step), `summary.json` and checkpoints under
`out_dir`, and resumes from the latest checkpoint there.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.registry import make_env
from sandbox.base import SandboxSettings
from trainer.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from trainer.config import RunConfig
from trainer.context import TeacherContextBuilder
from trainer.episodes import collect_episodes, greedy_episode_accuracy
from trainer.model import UNRESTRICTED, ModelAccess, load_policy, pick_device
from trainer.rollout import budget_warning, collect, greedy_accuracy, rollout_stats
from trainer.sampler import TransformersSampler
from trainer.step import Learner

log = logging.getLogger(__name__)

StepCallback = Callable[[dict], None]


@dataclass
class Session:
    """Everything a run holds in memory: the policy, its learner, sampler and environment."""

    cfg: RunConfig
    policy: torch.nn.Module
    tokenizer: object
    env: object
    builder: TeacherContextBuilder
    sampler: TransformersSampler
    learner: Learner | None

    @classmethod
    def open(
        cls,
        cfg: RunConfig,
        device: str | None = None,
        *,
        train: bool = True,
        sandbox: SandboxSettings | None = None,
        data_dir: Path | None = None,
        model_access: ModelAccess = UNRESTRICTED,
    ) -> Session:
        """Load the environment and the policy; `train=False` for a sampling-only copy.
        The service passes its own `sandbox` settings and `data_dir` (where environments
        run code and find data files) and `model_access` (which models may be loaded)."""
        # the environment first: a bad config fails fast, before the model loads
        env = make_env(cfg.env, cfg.env_config, sandbox=sandbox, data_dir=data_dir)
        torch.manual_seed(cfg.seed)
        policy, tokenizer = load_policy(
            cfg.model, lora=cfg.lora, device=pick_device(device), access=model_access
        )
        return cls(
            cfg=cfg,
            policy=policy,
            tokenizer=tokenizer,
            env=env,
            builder=TeacherContextBuilder(tokenizer, cfg.context),
            sampler=TransformersSampler(policy, tokenizer),
            learner=Learner(policy, tokenizer.pad_token_id, cfg) if train else None,
        )

    @property
    def multi_turn(self) -> bool:
        """Whether the environment plays episodes of tool calls (envs/tools)."""
        return bool(getattr(self.env, "multi_turn", False))

    def evaluate(self) -> float:
        tasks = list(self.env.dataset("eval"))[: self.cfg.eval.size]
        max_new = self.cfg.eval.max_new_tokens or self.cfg.sampling.max_new_tokens
        evaluate = greedy_episode_accuracy if self.multi_turn else greedy_accuracy
        return evaluate(
            self.env,
            tasks,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            builder=self.builder,
            max_new_tokens=max_new,
        )

    def rollout(self, tasks, policy_version: int, seed: int | None = None):
        """One step's groups: single-turn responses, or episodes for a multi-turn env.
        With `seed` (trainer.sampler.sampling_seed), its draws depend on that seed alone."""
        generator = None
        if seed is not None:
            device = next(self.policy.parameters()).device
            generator = torch.Generator(device).manual_seed(seed)
        sample = collect_episodes if self.multi_turn else collect
        return sample(
            self.env,
            tasks,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            builder=self.builder,
            group_size=self.cfg.samples_per_prompt,
            sampling=self.cfg.sampling,
            use_ground_truth=self.cfg.context.use_ground_truth,
            policy_version=policy_version,
            generator=generator,
        )

    def load_weights(self, path: Path) -> None:
        """Sample with the policy weights of checkpoint `path` from now on."""
        load_weights(self.policy, path)

    def close(self) -> None:
        """Release what the environment holds (a warm sandbox pool, for example)."""
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, path: Path, state: dict) -> Path:
        lr = self.learner
        return save_checkpoint(
            path,
            policy=self.policy,
            tokenizer=self.tokenizer,
            optimizer=lr.optimizer,
            scheduler=lr.scheduler,
            teacher=lr.teacher,
            state=state,
        )

    def load(self, path: Path) -> dict:
        lr = self.learner
        state = load_checkpoint(
            path,
            policy=self.policy,
            optimizer=lr.optimizer,
            scheduler=lr.scheduler,
            teacher=lr.teacher,
        )
        lr.steps_done = state["step"]
        return state


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    on_step: StepCallback | None = None,
    device: str | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """Run (or resume) `cfg` to completion; returns the summary written to summary.json."""
    out = Path(out_dir)
    metrics_path = out / "metrics.jsonl"
    with Session.open(cfg, device) as session:  # a bad environment or model: nothing written
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.model_dump_json(indent=2))
        task_rng = random.Random(cfg.seed)
        train_tasks = list(session.env.dataset("train"))

        start, base_acc, wall_before = 0, None, 0.0
        if (ckpt := latest_checkpoint(out)) is not None:
            state = session.load(ckpt)
            start, base_acc, wall_before = (
                state["step"],
                state["base_eval_accuracy"],
                state["wall_seconds"],
            )
            task_rng.setstate(_tuple_state(state["task_rng"]))
            _truncate_metrics(metrics_path, start)
            log.info("resumed %s at step %d", out, start)
        else:
            metrics_path.write_text("")
            base_acc = session.evaluate()
            record = {"step": 0, "samples_seen": 0, "eval_accuracy": base_acc}
            _append(metrics_path, record)
            if on_step:
                on_step(record)

        began = time.monotonic() - wall_before
        samples_per_step = cfg.prompts_per_step * cfg.samples_per_prompt
        final_acc = _last_eval_accuracy(metrics_path, default=base_acc)
        for step in range(start + 1, cfg.steps + 1):
            step_began = time.monotonic()
            tasks = task_rng.sample(train_tasks, cfg.prompts_per_step)
            batch, rollouts = session.rollout(tasks, policy_version=step - 1)
            result = session.learner.step(batch)
            stats = rollout_stats(batch, rollouts)
            if step == start + 1 and (hint := budget_warning(stats, cfg.sampling.max_new_tokens)):
                log.warning("step %d: %s", step, hint)
            record = {
                "step": step,
                "samples_seen": step * samples_per_step,
                **stats,
                **result.metrics,
                "step_seconds": time.monotonic() - step_began,
            }
            if step % cfg.eval.every == 0 or step == cfg.steps:
                final_acc = record["eval_accuracy"] = session.evaluate()
            _append(metrics_path, record)
            if on_step:
                on_step(record)
            if (checkpoint_every and step % checkpoint_every == 0) or step == cfg.steps:
                state = {
                    "step": step,
                    "base_eval_accuracy": base_acc,
                    "wall_seconds": time.monotonic() - began,
                    "task_rng": task_rng.getstate(),
                    "batch_ids": [batch.id],
                }
                session.save(checkpoint_path(out, step), state)

        summary = {
            "base_eval_accuracy": base_acc,
            "final_eval_accuracy": final_acc,
            "samples_seen": cfg.steps * samples_per_step,
            "steps": cfg.steps,
            "wall_seconds": time.monotonic() - began,
            "algorithm": cfg.algorithm,
            "checkpoint": str(checkpoint_path(out, cfg.steps)) if cfg.steps else None,
            "config": cfg.model_dump(mode="json"),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _tuple_state(state) -> tuple:
    """random.Random state after a JSON round trip (lists back to tuples)."""
    return (state[0], tuple(state[1]), state[2])


def _last_eval_accuracy(path: Path, default: float | None) -> float | None:
    """The latest eval accuracy in metrics.jsonl (a resumed run with no steps left keeps it)."""
    if not path.exists():
        return default
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    accuracies = [r["eval_accuracy"] for r in records if "eval_accuracy" in r]
    return accuracies[-1] if accuracies else default


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint we resume from (they will be recomputed)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in keep))
