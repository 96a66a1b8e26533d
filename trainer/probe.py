"""The gap probe: has self-distillation anything to teach on an environment, before training?
(docs/operating.md "Run health").

`probe(cfg, groups)` samples `groups` groups of `cfg.samples_per_prompt` responses with the
run core (the tasks and token draws step 1 of `cfg` would sample, trainer/run.py), has the
environment score them, builds their teacher contexts, and measures on the untrained model
the run-health numbers of docs/algorithm.md "Run health": how far the teacher reading the
feedback is from the student (`teacher_gap`), how many samples got a teacher signal
(`teacher_signal_frac`) and the base reward. Before the first optimiser step every kind
of teacher weights is the initial policy, so the probe scores with the policy itself.
Nothing is trained or written. `opsd probe` and `POST /v1/environments/{name}/probe`
run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.base import SandboxSettings
from trainer.config import RunConfig
from trainer.loop import RunPolicy
from trainer.model import UNRESTRICTED, ModelAccess
from trainer.run import RunPlan, sample_step

MAX_GROUPS = 64


@dataclass(frozen=True)
class ProbeReport:
    """What the probe measured on `groups` x `samples_per_prompt` samples."""

    env: str
    model: str
    groups: int
    samples_per_prompt: int
    teacher_gap: float | None  # None when no sample got a teacher signal
    teacher_signal_frac: float
    reward_mean: float
    ok_fraction: float
    entropy: float | None
    response_tokens_mean: float
    truncated_frac: float


def probe_config(cfg: RunConfig, groups: int) -> RunConfig:
    """`cfg` as the probe runs it: one step of `groups` prompts, scored by a teacher (the
    initial policy itself, `teacher.weights = live`) whatever the loss is."""
    data = cfg.model_dump()
    data.update(steps=1, prompts_per_step=groups)
    data["loss"].update(distill_weight=1.0, advantage_mix=None)
    data["teacher"]["weights"] = "live"
    return RunConfig.model_validate(data)


def probe(
    cfg: RunConfig,
    groups: int = 4,
    *,
    device: str | None = None,
    sandbox: SandboxSettings | None = None,
    data_dir: Path | None = None,
    model_access: ModelAccess = UNRESTRICTED,
) -> ProbeReport:
    """Sample and score `groups` groups of `cfg` and measure the gap (blocking: sampling is
    torch, scoring runs its own event loop; call it from a worker thread in async code).
    The service passes its own sandbox, environment data and model access."""
    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"groups must be between 1 and {MAX_GROUPS}, not {groups}")
    with RunPolicy.open(
        probe_config(cfg, groups),
        device,
        sandbox=sandbox,
        data_dir=data_dir,
        model_access=model_access,
    ) as session:
        train_tasks = list(session.env.dataset("train"))
        groups = min(groups, len(train_tasks))
        plan = RunPlan(probe_config(cfg, groups))
        sampled = sample_step(plan, session, train_tasks, step=1, version=0)
        measured = session.learner.measure(sampled.batch)
    samples = sampled.batch.samples
    stats = sampled.stats
    return ProbeReport(
        env=cfg.env,
        model=cfg.model,
        groups=groups,
        samples_per_prompt=cfg.samples_per_prompt,
        teacher_gap=measured.get("teacher_gap"),
        teacher_signal_frac=sum(s.teacher_prompt_ids is not None for s in samples) / len(samples),
        reward_mean=stats["reward_mean"],
        ok_fraction=stats["ok_fraction"],
        entropy=measured.get("entropy"),
        response_tokens_mean=stats["response_tokens_mean"],
        truncated_frac=stats["truncated_frac"],
    )
