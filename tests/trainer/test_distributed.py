"""Training across processes: two CPU processes (torchrun, gloo) against one.

One optimiser step on the same batch gives the same loss, metrics, per-token log-ratios
and updated weights in two processes as in one (to float32 rounding: the two add the
same terms in another order); checkpoints written by two processes resume in one and the
other way round, exactly. The policy is the tiny model's architecture after one
pretraining step; a test that learns is in test_learning.py.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from trainer.checkpoint import checkpoint_path, merged_state_dict, read_weights
from trainer.distributed import SINGLE, World, WorldError, interleave
from trainer.loop import RunPolicy, train
from trainer.presets import preset
from trainer.run import RunPlan, load_step, open_policy, sample_step
from trainer.sharded_checkpoint import is_sharded
from trainer.step import Learner

SCRIPT = Path(__file__).with_name("torchrun_script.py")
# One step in two processes adds the same float32 terms in another order. Adam's first
# step moves each weight by about lr (1e-3) times g / |g|, which shows a gradient's rounding
# where it nearly cancels: the two steps' weights differ by under 1% of lr.
LR = 1e-3
WEIGHT_TOLERANCE = 0.01 * LR


def torchrun(*args: str, processes: int = 2) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    subprocess.run([*command, f"--nproc-per-node={processes}", *args], check=True, timeout=300)


def config(model: Path | str, **overrides):
    base = {
        "model": str(model),
        "steps": 2,
        "prompts_per_step": 4,
        "samples_per_prompt": 2,
        "sampling": {"max_new_tokens": 8},
        "eval": {"every": 2, "size": 8},
        "env_config": {"eval_size": 8},
    }
    return preset("sdpo", {**base, **overrides})


CASES = {
    "sdpo, frozen teacher": {"optim": {"lr": LR, "warmup_steps": 0}},
    "mixed, EMA teacher, 2 micro-batches, sequence mean, batch-scaled GRPO, clipped": {
        "loss": {
            "distill_weight": 0.5,
            "aggregation": "sequence_mean",
            "grpo": {"scaling": "batch"},
        },
        "teacher": {"weights": "ema", "rate": 0.5},
        "optim": {"grad_accumulation": 2, "grad_clip": 0.5, "lr": LR, "warmup_steps": 0},
    },
    "LoRA, the base as frozen teacher": {
        "lora": {"r": 4, "alpha": 8},
        "optim": {"lr": LR, "warmup_steps": 0},
    },
    "LoRA, EMA adapter as teacher": {
        "lora": {"r": 4, "alpha": 8},
        "teacher": {"weights": "ema", "rate": 0.5},
        "optim": {"lr": LR, "warmup_steps": 0},
    },
}


def learner(cfg) -> Learner:
    policy, tokenizer = open_policy(cfg, "cpu")
    return Learner(policy, tokenizer.pad_token_id, cfg)


def test_each_process_trains_whole_groups_of_every_micro_batch():
    worlds = [World(rank, 2) for rank in range(2)]
    assert [w.rows(8, 2) for w in worlds] == [slice(0, 4), slice(4, 8)]
    assert [w.rows(6, 2) for w in worlds] == [slice(0, 4), slice(4, 6)]  # as Batch.split
    assert SINGLE.rows(6, 2) == slice(0, 6)
    with pytest.raises(WorldError, match="prompts_per_step must be at least"):
        worlds[0].rows(2, 2)
    parts = [[[1, 2], [5]], [[3], [6, 7]]]  # [rank][micro-batch] rows
    assert interleave(parts) == [1, 2, 3, 5, 6, 7]


def test_one_step_in_two_processes_equals_the_one_process_step(tmp_path):
    """The real tiny model, so that rewards differ within groups (GRPO advantages)."""
    cfgs = [config("tiny", samples_per_prompt=4, **overrides) for overrides in CASES.values()]
    with RunPolicy.open(cfgs[0], "cpu", train=False) as session:
        tasks = list(session.env.dataset("train"))
        batch = sample_step(RunPlan(cfgs[0]), session, tasks, 2, 0).batch
    assert batch.needs_teacher and len({s.reward for s in batch.samples}) > 1
    (tmp_path / "batch.pkl").write_bytes(pickle.dumps(batch))
    (tmp_path / "cases.json").write_text(json.dumps([c.model_dump(mode="json") for c in cfgs]))

    torchrun(
        str(SCRIPT), "step", *(str(tmp_path / f) for f in ("cases.json", "batch.pkl", "out.pt"))
    )
    sharded = torch.load(tmp_path / "out.pt", weights_only=False)

    for name, cfg, two in zip(CASES, cfgs, sharded, strict=True):
        one = learner(cfg)
        initial = {k: v.clone() for k, v in get_model_state_dict(one.policy).items()}
        torch.manual_seed(0)
        result = one.step(batch)
        weights = get_model_state_dict(one.policy)
        assert two["weights"].keys() == weights.keys()
        moved = max((weights[k] - initial[k]).abs().max().item() for k in weights)
        gap = max((two["weights"][k] - weights[k]).abs().max().item() for k in weights)
        assert gap < WEIGHT_TOLERANCE and moved == pytest.approx(LR, rel=0.1), (name, gap, moved)
        assert two["metrics"].keys() == result.metrics.keys(), name
        for key, value in result.metrics.items():
            assert two["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
        assert len(two["log_ratios"]) == len(result.log_ratios)
        for mine, theirs in zip(result.log_ratios, two["log_ratios"], strict=True):
            assert [v is None for v in mine] == [v is None for v in theirs]
            assert [v or 0.0 for v in theirs] == pytest.approx([v or 0.0 for v in mine], abs=1e-5)


def resumed_state(cfg, checkpoint: Path) -> dict:
    """A fresh one-process learner resumed from `checkpoint`: its whole state."""
    one = learner(cfg)
    load_step(checkpoint, one)
    return {
        "weights": get_model_state_dict(one.policy),
        "optimizer": get_optimizer_state_dict(one.policy, one.optimizer),
        "scheduler": one.scheduler.state_dict(),
        "steps_done": one.steps_done,
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a["steps_done"] == b["steps_done"]
    assert a["scheduler"] == b["scheduler"]
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, tensors in a["optimizer"]["state"].items():
        for key, value in tensors.items():
            assert torch.equal(value, b["optimizer"]["state"][name][key]), (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_run_saved_by_two_processes_resumes_in_one_and_the_other_way_round(
    lora, random_model_dir, tmp_path
):
    """With the EMA teacher, whose weights are sharded too (a copy of the model, or a
    second adapter)."""
    adapter = {"lora": {"r": 4, "alpha": 8}} if lora else {}
    cfg = config(random_model_dir, teacher={"weights": "ema", "rate": 0.5}, **adapter)
    (tmp_path / "config.json").write_text(cfg.model_dump_json())

    # two processes train, one resumes
    two_dir = tmp_path / "two"
    torchrun(
        "-m",
        "service.cli",
        "train",
        "--out",
        str(two_dir),
        "--config",
        str(tmp_path / "config.json"),
    )
    two_ckpt = checkpoint_path(two_dir, 2)
    assert is_sharded(two_ckpt)
    assert json.loads((two_dir / "summary.json").read_text())["world_size"] == 2
    torchrun(
        str(SCRIPT), "state", str(tmp_path / "config.json"), str(two_ckpt), str(tmp_path / "two.pt")
    )
    saved_by_two = torch.load(tmp_path / "two.pt", weights_only=False)
    resumed_by_one = resumed_state(cfg, two_ckpt)
    assert_same_state(saved_by_two, resumed_by_one)
    if not lora:  # the whole policy, gathered when it was saved
        for key, value in read_weights(two_ckpt).items():
            assert torch.equal(value, resumed_by_one["weights"][key]), key
    else:  # the merged policy, as a one-process run writes it
        one = learner(cfg)
        load_step(two_ckpt, one)
        merged = merged_state_dict(one.policy.get_base_model(), one.policy.active_adapter)
        for key, value in read_weights(two_ckpt).items():
            assert torch.allclose(value, merged[key], atol=1e-6), key

    # one process trains, two resume
    one_dir = tmp_path / "one"
    train(cfg, one_dir, device="cpu")
    one_ckpt = checkpoint_path(one_dir, 2)
    assert not is_sharded(one_ckpt)
    torchrun(
        str(SCRIPT), "state", str(tmp_path / "config.json"), str(one_ckpt), str(tmp_path / "one.pt")
    )
    assert_same_state(
        resumed_state(cfg, one_ckpt), torch.load(tmp_path / "one.pt", weights_only=False)
    )

    if lora:
        return
    # and each run goes on in the other number of processes
    longer = cfg.model_copy(update={"steps": 3})
    (tmp_path / "longer.json").write_text(longer.model_dump_json())
    summary = train(longer, two_dir, device="cpu")
    assert summary["world_size"] == 1
    torchrun(
        "-m",
        "service.cli",
        "train",
        "--out",
        str(one_dir),
        "--config",
        str(tmp_path / "longer.json"),
    )
    summary = json.loads((one_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    for run in (one_dir, two_dir):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1, 2, 3]
