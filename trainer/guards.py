"""Guards against collapse: when a run stops itself (docs/operating.md "Run health").

A guard is a pure function of the run's history up to a step, the step metrics and the
held-out evaluations, so both drivers (`trainer.loop.train` and the service's
orchestrator) stop a run at the same step, and a resumed run stops where it would have.
`check(cfg.guard, step, recent, evaluations)` is asked after every trained step (after
that step's evaluation, at a milestone):

- `eval_drop`: the latest evaluation is `eval_drop` or more below the best so far;
- `entropy_min`: the step metric `entropy` was below it for the last `patience` steps;
- `response_tokens_max`: the step metric `response_tokens_mean` was above it for the last
  `patience` steps.

`best_evaluation` names the milestone a stopped (or completed) run should be used from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainer.config import GuardConfig


@dataclass(frozen=True)
class Stop:
    """A guard fired after `step`: which one (its `guard.*` field) and why, in words."""

    step: int
    guard: str
    reason: str


def best_evaluation(evaluations: Mapping[int, float]) -> tuple[int, float] | None:
    """(step, accuracy) of the highest held-out accuracy, the earliest step on a tie."""
    if not evaluations:
        return None
    step = min(evaluations, key=lambda s: (-evaluations[s], s))
    return step, evaluations[step]


def check(
    cfg: GuardConfig,
    step: int,
    recent: Sequence[Mapping[str, float]],
    evaluations: Mapping[int, float],
) -> Stop | None:
    """Whether the run must stop after `step`. `recent`: the metrics of the steps up to and
    including `step`, oldest first (only the last `cfg.patience` are read); `evaluations`:
    step -> held-out accuracy of the milestones evaluated so far (later ones are ignored)."""
    evaluations = {s: a for s, a in evaluations.items() if s <= step}
    if cfg.eval_drop is not None and step in evaluations:
        best_step, best = best_evaluation(evaluations)
        latest = evaluations[step]
        if best - latest >= cfg.eval_drop - 1e-9:
            return Stop(
                step,
                "eval_drop",
                f"held-out accuracy {latest:.3f} at step {step} is {best - latest:.3f} below "
                f"its best, {best:.3f} at step {best_step} (guard.eval_drop={cfg.eval_drop})",
            )
    window = list(recent)[-cfg.patience :]
    if len(window) < cfg.patience:
        return None
    steps = f"{cfg.patience} step{'s' if cfg.patience > 1 else ''}"
    if cfg.entropy_min is not None and _all(window, "entropy", lambda v: v < cfg.entropy_min):
        return Stop(
            step,
            "entropy_min",
            f"entropy stayed below {cfg.entropy_min} for {steps} "
            f"({window[-1]['entropy']:.4f} at step {step}; guard.entropy_min)",
        )
    limit = cfg.response_tokens_max
    if limit is not None and _all(window, "response_tokens_mean", lambda v: v > limit):
        return Stop(
            step,
            "response_tokens_max",
            f"mean response length stayed above {limit} tokens for {steps} "
            f"({window[-1]['response_tokens_mean']:.1f} at step {step}; "
            "guard.response_tokens_max)",
        )
    return None


def _all(window: Sequence[Mapping[str, float]], name: str, holds) -> bool:
    """Every step of `window` has the metric `name` and it `holds`."""
    return all(name in m and m[name] is not None and holds(m[name]) for m in window)
