"""The offline training loop: the run core (trainer/run.py) driven in one process.

`train(cfg, out_dir)` is what `opsd train` runs and what a Python script can call. It
walks the same steps as the service's orchestrator and trainer worker, with the same
tasks, sampling seeds, milestones and checkpoints, and one policy that both samples and
trains (the service's synchronous case, `max_off_policy_steps = 0`). It writes
`metrics.jsonl` (one object per step), `summary.json` and checkpoints under `out_dir`,
and resumes from the latest checkpoint there. A guard (`cfg.guard`, trainer/guards.py)
ends it early: the step it fires at is checkpointed and `summary.json` says why.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.base import Environment
from envs.registry import make_env
from sandbox.base import SandboxSettings
from trainer.checkpoint import latest_checkpoint, load_weights
from trainer.config import RunConfig
from trainer.context import TeacherContextBuilder
from trainer.distributed import SINGLE, World, WorldError, join_world
from trainer.episodes import collect_episodes, greedy_episode_accuracy
from trainer.model import UNRESTRICTED, ModelAccess, load_tokenizer
from trainer.model_names import resolve_model
from trainer.rollout import collect, greedy_accuracy
from trainer.run import RunPlan, load_step, open_policy, sample_step, save_step, train_step
from trainer.sampler import Sampler, TransformersSampler
from trainer.step import Learner

log = logging.getLogger(__name__)

StepCallback = Callable[[dict], None]


@dataclass
class RunPolicy:
    """Everything a run holds in memory: the policy, its learner, sampler and environment.

    A sampling-only copy on a vLLM server (`train=False`, `sampling.backend: server`)
    holds no policy (`policy` None): the server gets the weights of the model, then of
    each checkpoint loaded, from their files (`ServerSampler.sync_files`)."""

    cfg: RunConfig
    policy: torch.nn.Module | None
    tokenizer: object
    env: Environment
    builder: TeacherContextBuilder
    sampler: Sampler
    learner: Learner | None
    weights: Path | None = None  # without a policy: the directory the sampler loads from
    loads: int = 0  # checkpoints loaded into the policy (the sampler must see them)
    synced: tuple[int, int] | None = None  # (loads, steps trained) the sampler holds

    @classmethod
    def open(
        cls,
        cfg: RunConfig,
        device: str | None = None,
        *,
        train: bool = True,
        sandbox: SandboxSettings | None = None,
        data_dir: Path | None = None,
        sampler_dir: Path | None = None,
        model_access: ModelAccess = UNRESTRICTED,
        world: World = SINGLE,
    ) -> RunPolicy:
        """Load the environment and the policy; `train=False` for a sampling-only copy.
        The service passes its own `sandbox` settings and `data_dir` (where environments
        run code and find data files), `model_access` (which models may be loaded) and
        `sampler_dir` (where a vLLM server reads the weights it gets). With several
        processes (`world`), each opens the run and the learner shards the policy."""
        if world.sharded and cfg.sampling.backend != "transformers":
            raise WorldError("across processes, runs sample with sampling.backend transformers")
        # the environment first: a bad config fails fast, before the model loads
        env = make_env(cfg.env, cfg.env_config, sandbox=sandbox, data_dir=data_dir)
        local = Path(resolve_model(cfg.model, model_access))
        if not train and cfg.sampling.backend == "server" and local.is_dir():
            # the server holds the weights; it gets them from the model's files
            policy, tokenizer, weights = None, load_tokenizer(cfg.model, model_access), local
        else:
            policy, tokenizer = open_policy(cfg, world.device(device), model_access)
            weights = None
        return cls(
            cfg=cfg,
            policy=policy,
            tokenizer=tokenizer,
            env=env,
            builder=TeacherContextBuilder(tokenizer, cfg.context),
            sampler=make_sampler(cfg, policy, tokenizer, model_access, sampler_dir),
            learner=Learner(policy, tokenizer.pad_token_id, cfg, world) if train else None,
            weights=weights,
        )

    @property
    def multi_turn(self) -> bool:
        """Whether the environment plays episodes of tool calls (envs/tools)."""
        return self.env.multi_turn

    def fresh_sampler(self) -> Sampler:
        """The sampler, holding the policy's current weights (pushed to it when they
        changed since it last got them: a training step, a checkpoint loaded)."""
        stamp = (self.loads, self.learner.steps_done if self.learner is not None else 0)
        if stamp != self.synced:
            if self.policy is None:
                self.sampler.sync_files(self.weights)  # type: ignore[attr-defined]
            else:
                self.sampler.sync(self.policy)
            self.synced = stamp
        return self.sampler

    def evaluate(self) -> float:
        tasks = list(self.env.dataset("eval"))[: self.cfg.eval.size]
        max_new = self.cfg.eval.max_new_tokens or self.cfg.sampling.max_new_tokens
        evaluate = greedy_episode_accuracy if self.multi_turn else greedy_accuracy
        return evaluate(
            self.env,
            tasks,
            sampler=self.fresh_sampler(),
            tokenizer=self.tokenizer,
            builder=self.builder,
            max_new_tokens=max_new,
        )

    def rollout(self, tasks, policy_version: int, seed: int | None = None):
        """One step's groups: single-turn responses, or episodes for a multi-turn env.
        With `seed` (trainer.sampler.sampling_seed), its draws depend on that seed alone."""
        generator = None
        if seed is not None:
            device = "cpu" if self.policy is None else next(self.policy.parameters()).device
            generator = torch.Generator(device).manual_seed(seed)
        sample = collect_episodes if self.multi_turn else collect
        return sample(
            self.env,
            tasks,
            sampler=self.fresh_sampler(),
            tokenizer=self.tokenizer,
            builder=self.builder,
            group_size=self.cfg.samples_per_prompt,
            sampling=self.cfg.sampling,
            use_ground_truth=self.cfg.context.use_ground_truth,
            policy_version=policy_version,
            generator=generator,
        )

    def load_weights(self, path: Path) -> None:
        """Sample with the policy weights of checkpoint `path` from now on. Without a
        policy the server gets the files at once, before the checkpoint may be pruned."""
        if self.policy is None:
            self.weights = Path(path)
            self.loads += 1
            self.fresh_sampler()
            return
        load_weights(self.policy, path)
        self.loads += 1

    def close(self) -> None:
        """Release what the environment and the sampler hold (a warm sandbox pool, an
        inference engine)."""
        self.env.close()
        self.sampler.close()

    def __enter__(self) -> RunPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_sampler(
    cfg: RunConfig, policy, tokenizer, model_access: ModelAccess, sampler_dir: Path | None
) -> Sampler:
    """The run's sampler (`sampling.backend`); a vLLM server reads the weights it gets
    from `sampler_dir` (default: `sampler-weights` in the temporary directory), which it
    must see at the same path."""
    sampling = cfg.sampling
    if sampling.backend == "vllm":
        from trainer.vllm_sampler import VLLMSampler

        path = resolve_model(cfg.model, model_access)
        rank = cfg.lora.r if cfg.lora is not None else None
        return VLLMSampler(path, tokenizer, sampling.vllm, seed=cfg.seed, lora_rank=rank)
    if sampling.backend == "server":
        from trainer.vllm_sampler import ServerSampler

        weights = sampler_dir or Path(tempfile.gettempdir()) / "sampler-weights"
        model = sampling.server_model or cfg.model
        return ServerSampler(
            sampling.server_url or "",
            model,
            tokenizer,
            weights,
            adapters=sampling.server_adapters,
        )
    return TransformersSampler(policy, tokenizer)


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    on_step: StepCallback | None = None,
    device: str | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """Run (or resume) `cfg` to completion; returns the summary written to summary.json.
    Checkpoints: every milestone, and every `checkpoint_every` steps.

    Started by torchrun, every process calls it: each samples the step (the main
    process's samples are the ones trained on), trains its share and writes its shards of
    the checkpoints; the main process writes the files and calls `on_step`."""
    world = join_world()
    out = Path(out_dir)
    metrics_path = out / "metrics.jsonl"
    plan = RunPlan(cfg)
    # a bad environment or model: nothing written
    with RunPolicy.open(cfg, device, world=world) as session:
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(cfg.model_dump_json(indent=2))
        train_tasks = list(session.env.dataset("train"))
        start, wall_before = 0, 0.0
        if (ckpt := latest_checkpoint(out)) is not None:
            state = load_step(ckpt, session.learner)
            start, wall_before = state["step"], state.get("wall_seconds", 0.0)
            if world.is_main:
                _truncate_metrics(metrics_path, start)
            log.info("resumed %s at step %d", out, start)
        elif world.is_main:
            metrics_path.write_text("")
        world.barrier()
        evaluations = _evaluations(metrics_path)
        history = [r for r in _read_metrics(metrics_path) if r["step"] > 0]  # what guards read
        stopped = None
        began = time.monotonic() - wall_before
        report = _report if world.is_main else _skip_report
        if start == 0:
            evaluations[0] = session.evaluate()
            report(
                metrics_path,
                {"step": 0, "samples_seen": 0, "eval_accuracy": evaluations[0]},
                on_step,
            )

        for step in range(start + 1, cfg.steps + 1):
            step_began = time.monotonic()
            sampled = sample_step(plan, session, train_tasks, step, version=step - 1)
            sampled = world.broadcast(sampled)  # every process trains on the same samples
            sampled.batch.id = f"step-{step}"
            outcome = train_step(plan, session.learner, session.tokenizer, sampled.batch, step)
            record = {
                "step": step,
                **sampled.stats,
                **outcome.metrics,
                "step_seconds": time.monotonic() - step_began,
            }
            if plan.is_milestone(step):
                evaluations[step] = record["eval_accuracy"] = world.broadcast(session.evaluate())
            report(metrics_path, record, on_step)
            history = [*history, record][-cfg.guard.patience :]
            stopped = plan.guard(step, history, evaluations)  # the same in every process
            keep = plan.is_milestone(step) or stopped is not None
            if keep or (checkpoint_every and step % checkpoint_every == 0):
                state = {"batch_id": sampled.batch.id, "wall_seconds": time.monotonic() - began}
                save_step(
                    plan,
                    out,
                    step,
                    learner=session.learner,
                    tokenizer=session.tokenizer,
                    state=state,
                )
            if stopped is not None:
                log.warning("%s: stopped after step %d: %s", out, step, stopped.reason)
                break

        summary = {
            **plan.summary(out, evaluations, stopped),
            "world_size": world.size,
            "wall_seconds": time.monotonic() - began,
            "config": cfg.model_dump(mode="json"),
        }
    if world.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _report(path: Path, record: dict, on_step: StepCallback | None) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if on_step:
        on_step(record)


def _skip_report(path: Path, record: dict, on_step: StepCallback | None) -> None:
    """Another process than the main one reports nothing."""


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _evaluations(path: Path) -> dict[int, float]:
    """Step -> held-out accuracy of the milestones metrics.jsonl holds."""
    return {r["step"]: r["eval_accuracy"] for r in _read_metrics(path) if "eval_accuracy" in r}


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint we resume from (they will be recomputed)."""
    keep = [r for r in _read_metrics(path) if r["step"] <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
