"""The trainer's side of one run, without SQL or HTTP (docs/architecture.md "The walk of one step").

`RunTrainer` holds the policy being trained, its optimiser and teacher, and makes
training exactly-once across crashes: every optimiser step is followed by a
checkpoint that records the step number, the batch id and the step's outcome
(metrics, per-token log-ratios). The caller (service.pipeline.worker) writes the outcome to
the record and acknowledges the batch only after `train` returns, so:

- a batch redelivered after the record was written is skipped by the record;
- a batch redelivered after the checkpoint but before the record is not trained
  again: `outcome_of(batch_id)` returns the outcome saved in the checkpoint;
- a worker that starts (or falls behind another worker) loads the latest checkpoint.

The step itself, its checkpoint and which checkpoints are kept are the run core's
(trainer/run.py), the same as in `opsd train`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from trainer.batch import Batch
from trainer.checkpoint import checkpoint_step, latest_checkpoint
from trainer.config import RunConfig
from trainer.distributed import SINGLE, World
from trainer.model import UNRESTRICTED, ModelAccess
from trainer.run import (
    RunPlan,
    StepOutcome,
    load_step,
    open_policy,
    prune_checkpoints,
    save_step,
    train_step,
)
from trainer.step import Learner

log = logging.getLogger(__name__)

__all__ = ["OutOfOrder", "RunTrainer", "StepOutcome"]


class OutOfOrder(RuntimeError):
    """A batch arrived for a step that is not the next one to train."""


class RunTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        keep: int = 2,
        device: str | None = None,
        model_access: ModelAccess = UNRESTRICTED,
        world: World = SINGLE,
    ) -> None:
        """`model_access`: which model names may be loaded (the service's clients name them).
        With several processes (`world`), every one holds a RunTrainer of the run and makes
        the same calls (trainer/worker_processes.py)."""
        self.cfg, self.plan = cfg, RunPlan(cfg)
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.world = world
        self.policy, self.tokenizer = open_policy(cfg, world.device(device), model_access)
        self.learner = Learner(self.policy, self.tokenizer.pad_token_id, cfg, world)
        self.step = 0
        self.last: StepOutcome | None = None
        self.sync()

    def sync(self) -> None:
        """Catch up with the newest checkpoint on disk (written by us or another worker;
        across processes, the newest the main process sees)."""
        path = self.world.broadcast(latest_checkpoint(self.run_dir))
        if path is None or checkpoint_step(path) <= self.step:
            return
        state = load_step(path, self.learner)
        self.step = state["step"]
        self.last = StepOutcome(**state["outcome"]) if state.get("outcome") else None
        log.info("run dir %s: resumed at step %d", self.run_dir, self.step)

    def close(self) -> None:
        """Nothing to release: the policy goes with this object."""

    def outcome_of(self, batch_id: str) -> StepOutcome | None:
        """The saved outcome if `batch_id` is the batch the latest checkpoint trained."""
        return self.last if self.last is not None and self.last.batch_id == batch_id else None

    def train(self, batch: Batch, step: int) -> StepOutcome:
        """Train `batch` as step `step` (must be the next step), then checkpoint."""
        if step != self.step + 1:
            raise OutOfOrder(f"batch for step {step} while step {self.step + 1} is next")
        outcome = train_step(self.plan, self.learner, self.tokenizer, batch, step)
        state = {"batch_id": batch.id, "outcome": asdict(outcome), "world_size": self.world.size}
        save_step(
            self.plan,
            self.run_dir,
            step,
            learner=self.learner,
            tokenizer=self.tokenizer,
            state=state,
        )
        self.step, self.last = step, outcome
        if self.world.is_main:
            prune_checkpoints(self.plan, self.run_dir, self.keep)
        return outcome
