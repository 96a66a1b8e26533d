"""The default configuration of each algorithm, as measured in benchmarks/learning.py.

Each preset is its algorithm's best configuration found on the arithmetic task with the
tiny model, the batch shape included: 64 samples per step split as 32 prompts x 2
samples, where self-distillation gains from seeing many distinct problems (its teacher
scores every sample) and GRPO still has a sibling to compare each sample with. `sdpo`
takes a higher learning rate than `grpo`, which collapses at it.
"""

from __future__ import annotations

from typing import Any, Literal

from trainer.config import RunConfig

Algorithm = Literal["sdpo", "grpo"]

BATCH_SHAPE = {"prompts_per_step": 32, "samples_per_prompt": 2}

PRESETS: dict[str, dict[str, Any]] = {
    "sdpo": {
        **BATCH_SHAPE,
        "loss": {"distill_weight": 1.0, "distill": {"alpha": 1.0, "support": "full_logits"}},
        "teacher": {"weights": "frozen"},
        "optim": {"lr": 4e-4},
    },
    "grpo": {
        **BATCH_SHAPE,
        "loss": {"distill_weight": 0.0},
        "optim": {"lr": 2e-4},
    },
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts; `override` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def preset(algorithm: Algorithm, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The algorithm's default RunConfig with `overrides` (nested dict) applied on top."""
    if algorithm not in PRESETS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(PRESETS)}")
    return RunConfig.model_validate(merge(PRESETS[algorithm], overrides or {}))


def parse_assignment(text: str) -> dict[str, Any]:
    """`loss.distill.alpha=0.5` -> {"loss": {"distill": {"alpha": 0.5}}} (values parsed as JSON)."""
    import json

    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out
