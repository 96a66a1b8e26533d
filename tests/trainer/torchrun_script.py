"""What tests/trainer/test_distributed.py runs in every process of a `torchrun` launch.

torchrun --nproc-per-node N torchrun_script.py step CASES BATCH OUT
    for each RunConfig in the JSON list CASES: a fresh policy and learner, one
    optimiser step on the pickled batch BATCH; the main process saves to OUT, per
    case, the step's metrics, its log-ratios and the whole updated weights.
torchrun --nproc-per-node N torchrun_script.py state CONFIG CHECKPOINT OUT
    a fresh learner resumed from CHECKPOINT; the main process saves to OUT its whole
    weights, optimiser state (by parameter name) and schedule.
"""

from __future__ import annotations

import json
import pickle
import sys

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from trainer.config import RunConfig
from trainer.distributed import join_world, leave_world
from trainer.run import load_step, open_policy
from trainer.step import Learner

WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def fresh_learner(cfg: RunConfig, world) -> Learner:
    policy, tokenizer = open_policy(cfg, "cpu")
    return Learner(policy, tokenizer.pad_token_id, cfg, world)


def step(cases_path: str, batch_path: str, out_path: str) -> None:
    world = join_world()
    batch = pickle.loads(open(batch_path, "rb").read())  # noqa: SIM115 - one read
    results = []
    for case in json.loads(open(cases_path).read()):  # noqa: SIM115 - one read
        cfg = RunConfig.model_validate(case)
        learner = fresh_learner(cfg, world)
        torch.manual_seed(0)
        result = learner.step(batch)
        weights = get_model_state_dict(learner.policy, options=WHOLE)
        results.append(
            {"metrics": result.metrics, "log_ratios": result.log_ratios, "weights": weights}
        )
    if world.is_main:
        torch.save(results, out_path)


def state(config_path: str, checkpoint: str, out_path: str) -> None:
    world = join_world()
    cfg = RunConfig.model_validate_json(open(config_path).read())  # noqa: SIM115 - one read
    learner = fresh_learner(cfg, world)
    load_step(checkpoint, learner)
    weights = get_model_state_dict(learner.policy, options=WHOLE)
    optimizer = get_optimizer_state_dict(learner.policy, learner.optimizer, options=WHOLE)
    if world.is_main:
        torch.save(
            {
                "weights": weights,
                "optimizer": optimizer,
                "scheduler": learner.scheduler.state_dict(),
                "steps_done": learner.steps_done,
                "world_size": world.size,
            },
            out_path,
        )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"step": step, "state": state}[command](*args)
    leave_world()
