"""Self-distillation learns: the real tiny model, the real arithmetic environment, on CPU.

No part of the pipeline is scripted here: the policy samples, the environment scores,
the teacher context is built from feedback, and the student is trained on the teacher's
token scores. Held-out greedy accuracy must rise by at least 50 points in 100 steps.
"""

import json
import subprocess
import sys

import pytest

from trainer.loop import RunPolicy, train
from trainer.presets import preset


@pytest.mark.slow
def test_self_distillation_raises_held_out_accuracy_by_50_points(tmp_path):
    cfg = preset("sdpo", {"steps": 100, "seed": 0, "eval": {"every": 100, "size": 256}})
    summary = train(cfg, tmp_path)
    assert summary["final_eval_accuracy"] >= summary["base_eval_accuracy"] + 0.50, summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(101))


@pytest.mark.slow
def test_self_distillation_in_two_processes_raises_held_out_accuracy(tmp_path):
    """`opsd train --nproc-per-node 2`: two CPU processes (gloo), the policy sharded
    across them (FSDP2), each training half of every step's groups."""
    command = [sys.executable, "-m", "service.cli", "train", "--out", str(tmp_path)]
    flags = ["--steps", "60", "--seed", "0", "--set", "eval.every=60", "--set", "eval.size=128"]
    subprocess.run([*command, *flags, "--nproc-per-node", "2"], check=True, timeout=600)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["final_eval_accuracy"] >= summary["base_eval_accuracy"] + 0.10, summary


@pytest.mark.slow
def test_self_distillation_over_tool_episodes_raises_lookup_success(tmp_path):
    """Multi-turn: `tiny-tools` mostly answers made-up codes alone; with a successful
    sibling episode in the teacher's context it calls `lookup`. Distilling that into the
    student over whole episodes (tool outputs masked) raises held-out success."""
    cfg = preset(
        "sdpo",
        {
            "env": "lookup",
            "model": "tiny-tools",
            "steps": 15,
            "seed": 0,
            "sampling": {"max_new_tokens": 160},
            "eval": {"every": 15, "size": 64},
        },
    )
    summary = train(cfg, tmp_path)
    assert summary["final_eval_accuracy"] >= summary["base_eval_accuracy"] + 0.50, summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["step"] > 0]
    assert len(trained) == 15
    early, late = trained[:5], trained[-5:]
    calls = [sum(r["tool_calls_mean"] for r in rs) / 5 for rs in (early, late)]
    assert calls[1] > calls[0] + 0.3, calls  # the student learnt to call the tool


@pytest.mark.slow
def test_a_guarded_ema_teacher_run_stops_before_its_collapse_with_its_best_checkpoint_kept(
    tmp_path,
):
    """The EMA teacher (rate 0.05) collapses on arithmetic (benchmarks/README.md): held-out
    accuracy climbs, then falls far below its best within a few evaluations. With
    `guard.eval_drop` the run stops itself at the first evaluation that far below the
    best, and the best milestone's checkpoint scores exactly what its evaluation said."""
    cfg = preset(
        "sdpo",
        {
            "steps": 300,
            "seed": 0,
            "teacher": {"weights": "ema", "rate": 0.05},
            "eval": {"every": 25, "size": 256},
            "guard": {"eval_drop": 0.15},
            # the configuration measured to collapse (benchmarks/README.md, the ablation)
            "prompts_per_step": 8,
            "samples_per_prompt": 8,
            "optim": {"lr": 2e-4},
        },
    )
    summary = train(cfg, tmp_path)

    stopped = summary["stopped"]
    assert stopped is not None and stopped["guard"] == "eval_drop", summary
    assert stopped["step"] < cfg.steps
    assert summary["best_eval_accuracy"] - summary["final_eval_accuracy"] >= 0.15
    assert summary["best_eval_accuracy"] >= summary["base_eval_accuracy"] + 0.2, summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == stopped["step"]
    with RunPolicy.open(cfg, train=False) as best:
        best.load_weights(summary["best_checkpoint"])
        assert best.evaluate() == summary["best_eval_accuracy"]
