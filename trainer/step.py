"""One training step: teacher scoring, one optimiser step (docs/algorithm.md "The training step").

`Learner` owns the optimiser, the learning-rate schedule and the teacher. It takes
a `Batch` and returns the step's metrics plus the per-token teacher-student
log-ratios the service stores.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from trainer.batch import Batch, Sample, build_sequences, response_tensors
from trainer.config import OptimConfig, RunConfig
from trainer.health import batch_health
from trainer.losses import LossInputs, policy_loss
from trainer.model import pick_dtype
from trainer.prefix import shared_prefix_logits
from trainer.teacher import Teacher


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup, then constant, cosine or linear decay to zero at `total_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def model_token_values(row: list[float], sample: Sample) -> list[float | None]:
    """One sample's per-token values cut to its response, None at environment tokens
    (response_mask 0: the loss never sees them, so neither does the record)."""
    values = row[: len(sample.response_ids)]
    if sample.response_mask is None:
        return values
    return [v if m else None for v, m in zip(values, sample.response_mask, strict=True)]


@dataclass
class StepResult:
    metrics: dict[str, float]
    # per sample, per response token: log q(y_t) - log pi(y_t); None at environment tokens
    log_ratios: list[list[float | None]]


class Learner:
    """Optimiser, schedule and teacher around a policy; `step(batch)` trains once."""

    def __init__(self, policy: torch.nn.Module, pad_id: int, cfg: RunConfig) -> None:
        self.policy = policy
        self.pad_id = pad_id
        self.cfg = cfg
        self.device = next(policy.parameters()).device
        self.autocast_dtype = pick_dtype(cfg.optim.bf16, self.device)
        params = [p for p in policy.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, o, max(cfg.steps, 1))
        )
        uses_teacher = cfg.loss.distill_weight > 0 or cfg.loss.advantage_mix is not None
        self.teacher = Teacher(policy, cfg.teacher) if uses_teacher else None
        self.steps_done = 0

    def _autocast(self):
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, batch: Batch) -> StepResult:
        """One optimiser step over the batch, in `grad_accumulation` micro-batches of whole groups."""
        self.policy.train()
        micro_batches = batch.split(self.cfg.optim.grad_accumulation)
        totals: dict[str, float] = {}
        log_ratios: list[list[float | None]] = []
        for micro in micro_batches:
            share = len(micro.samples) / len(batch.samples)
            loss, metrics, log_ratio = self._loss(micro)
            (loss * share).backward()
            for k, v in metrics.items():  # means weighted by share; maxima over micro-batches
                totals[k] = (
                    max(totals.get(k, v), v)
                    if k.endswith("_max")
                    else totals.get(k, 0.0) + v * share
                )
            log_ratios += [
                model_token_values(row, s)
                for row, s in zip(log_ratio.tolist(), micro.samples, strict=True)
            ]
        if self.cfg.optim.grad_clip is not None:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                params, self.cfg.optim.grad_clip
            ).item()
        totals["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            self.teacher.update()
        self.steps_done += 1
        return StepResult(totals, log_ratios)

    def _loss(self, batch: Batch):
        """The loss of `batch`, its metrics (the loss's and the run-health measures, both
        from the same logits) and its per-token log-ratios."""
        student_logits, teacher_logits, inputs = self._logits(batch)
        loss, metrics, log_ratio = policy_loss(
            student_logits, teacher_logits, inputs, self.cfg.loss
        )
        metrics.update(batch_health(student_logits, teacher_logits, inputs))
        return loss, metrics, log_ratio

    @torch.no_grad()
    def measure(self, batch: Batch) -> dict[str, float]:
        """The run-health measures of `batch` under the current weights (trainer/health.py),
        without training: the policy in eval mode, no gradient, no optimiser step."""
        self.policy.eval()
        student_logits, teacher_logits, inputs = self._logits(batch)
        return batch_health(student_logits, teacher_logits, inputs)

    def _logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, LossInputs]:
        """Student logits (with gradient, unless called under no_grad), teacher logits and
        the loss inputs of `batch`, all cut to the response positions.  [B, T, V] x 2"""
        samples = batch.samples
        student = build_sequences(
            [s.prompt_ids for s in samples], [s.response_ids for s in samples], self.pad_id
        )
        tensors = response_tensors(samples, student.response_width)
        inputs = LossInputs(
            rewards=torch.tensor([s.reward for s in samples]),
            group_size=batch.group_size,
            has_teacher_signal=torch.tensor([s.teacher_prompt_ids is not None for s in samples]),
            truncated=torch.tensor([s.truncated for s in samples]),
            sampling_temperature=self.cfg.sampling.temperature,
            **tensors,
        )
        inputs = LossInputs(
            **{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in vars(inputs).items()}
        )
        teacher_logits = (
            self._teacher_logits(batch, student.response_width) if self.teacher else None
        )
        student = student.to(self.device)
        with self._autocast():
            logits = self.policy(
                input_ids=student.input_ids,
                attention_mask=student.attention_mask,
                position_ids=student.position_ids,
            ).logits
        student_logits = student.response_logits(logits)  # [B, T, V]
        return student_logits, teacher_logits, inputs

    @torch.no_grad()
    def _teacher_logits(self, batch: Batch, response_width: int) -> torch.Tensor:
        """Teacher logits on the student's tokens under the teacher prompts.  [B, T, V]

        A sample without teacher signal is scored under its own prompt (its distillation
        loss is masked out anyway). Each distinct teacher prompt is encoded once.
        """
        samples = batch.samples
        prompts = [s.teacher_prompt_ids or s.prompt_ids for s in samples]
        responses = [s.response_ids for s in samples]
        with self._autocast():
            teacher_logits = self.teacher.score(
                lambda model: shared_prefix_logits(model, prompts, responses, self.pad_id)
            )
        return teacher_logits[:, :response_width]
