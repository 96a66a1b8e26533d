"""The trainer's side of one run, without SQL or HTTP (docs/architecture.md "The walk of one step").

`RunTrainer` holds the policy being trained, its optimiser and teacher, and makes
training exactly-once across crashes: every optimiser step is followed by a
checkpoint that records the step number, the batch id and the step's outcome
(metrics, per-token log-ratios). The caller (service.worker) writes the outcome to
the record and acknowledges the batch only after `train` returns, so:

- a batch redelivered after the record was written is skipped by the record;
- a batch redelivered after the checkpoint but before the record is not trained
  again: `outcome_of(batch_id)` returns the outcome saved in the checkpoint;
- a worker that starts (or falls behind another worker) loads the latest checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.batch import Batch
from trainer.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import RunConfig
from trainer.model import UNRESTRICTED, ModelAccess, load_policy, pick_device
from trainer.step import Learner

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What one optimiser step produced, as the record stores it."""

    step: int
    batch_id: str
    metrics: dict[str, float]
    log_ratios: list[list[float | None]]  # per sample, per response token (None: env token)
    tokens: list[list[str]]  # the response tokens those log-ratios belong to


class OutOfOrder(RuntimeError):
    """A batch arrived for a step that is not the next one to train."""


def is_milestone(step: int, cfg: RunConfig) -> bool:
    """Steps whose checkpoints are kept (and evaluated): every `eval.every`, and the last."""
    return step == 0 or step % cfg.eval.every == 0 or step == cfg.steps


class RunTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        keep: int = 2,
        device: str | None = None,
        model_access: ModelAccess = UNRESTRICTED,
    ) -> None:
        """`model_access`: which model names may be loaded (the service's clients name them)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.policy, self.tokenizer = load_policy(
            cfg.model, lora=cfg.lora, device=pick_device(device), access=model_access
        )
        self.learner = Learner(self.policy, self.tokenizer.pad_token_id, cfg)
        self.step = 0
        self.last: StepOutcome | None = None
        self.sync()

    def sync(self) -> None:
        """Catch up with the newest checkpoint on disk (written by us or another worker)."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return
        step = int(path.name.split("-")[1])
        if step <= self.step:
            return
        state = load_checkpoint(
            path,
            policy=self.policy,
            optimizer=self.learner.optimizer,
            scheduler=self.learner.scheduler,
            teacher=self.learner.teacher,
        )
        self.step = self.learner.steps_done = state["step"]
        self.last = StepOutcome(**state["outcome"]) if state.get("outcome") else None
        log.info("run dir %s: resumed at step %d", self.run_dir, self.step)

    def outcome_of(self, batch_id: str) -> StepOutcome | None:
        """The saved outcome if `batch_id` is the batch the latest checkpoint trained."""
        return self.last if self.last is not None and self.last.batch_id == batch_id else None

    def train(self, batch: Batch, step: int) -> StepOutcome:
        """Train `batch` as step `step` (must be the next step), then checkpoint."""
        if step != self.step + 1:
            raise OutOfOrder(f"batch for step {step} while step {self.step + 1} is next")
        result = self.learner.step(batch)
        outcome = StepOutcome(
            step=step,
            batch_id=batch.id,
            metrics=result.metrics,
            log_ratios=result.log_ratios,
            tokens=[self.tokenizer.convert_ids_to_tokens(s.response_ids) for s in batch.samples],
        )
        milestone = is_milestone(step, self.cfg)
        self.learner.policy.eval()
        save_checkpoint(
            checkpoint_path(self.run_dir, step),
            policy=self.policy,
            tokenizer=self.tokenizer if milestone else None,
            optimizer=self.learner.optimizer,
            scheduler=self.learner.scheduler,
            teacher=self.learner.teacher,
            state={"step": step, "batch_id": batch.id, "outcome": asdict(outcome)},
        )
        self.step, self.last = step, outcome
        self._prune()
        return outcome

    def _prune(self) -> None:
        """Drop per-step checkpoints beyond the newest `keep`, except milestones."""
        steps = sorted(int(p.name.split("-")[1]) for p in self.run_dir.glob("step-*") if p.is_dir())
        for step in steps[: -self.keep]:
            if not is_milestone(step, self.cfg):
                shutil.rmtree(checkpoint_path(self.run_dir, step), ignore_errors=True)
