"""LoRA end to end: an adapter trains, the EMA teacher is an adapter copy, checkpoints merge.

Plumbing test on a random-initialised tiny Llama (learning is tested in test_learning.py).
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.loop import train
from trainer.presets import preset


@pytest.fixture(scope="module")
def random_model(random_model_dir):
    return random_model_dir


@pytest.mark.parametrize("weights", ["ema", "frozen"])
def test_lora_run_trains_the_adapter_and_writes_a_merged_checkpoint(
    tmp_path, random_model, weights
):
    cfg = preset(
        "sdpo",
        {
            "model": str(random_model),
            "steps": 2,
            "prompts_per_step": 2,
            "samples_per_prompt": 2,
            "lora": {"r": 4, "alpha": 8},
            "teacher": {"weights": weights},
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "eval": {"every": 2, "size": 8},
        },
    )
    summary = train(cfg, tmp_path)
    ckpt = tmp_path / "step-000002"
    assert (ckpt / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(ckpt)
    base = AutoModelForCausalLM.from_pretrained(random_model)
    changed = [
        name
        for (name, p), (_, q) in zip(
            merged.named_parameters(), base.named_parameters(), strict=True
        )
        if not torch.equal(p, q)
    ]
    assert changed, "the merged checkpoint must differ from the base model"
    assert all("proj" in name for name in changed), changed  # only adapted linear layers move
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == summary["steps"] == 2
