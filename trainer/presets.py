"""The default configuration of each algorithm, as measured in benchmarks/learning.py.

Each preset is its algorithm's best configuration found on the arithmetic task with the
tiny model, batch shape and learning rate included, at 64 samples per step. `sdpo`
spreads them over 32 prompts x 2 samples: its teacher scores every sample, so it gains
from seeing many distinct problems, and it takes twice GRPO's learning rate. `grpo`
takes 16 prompts x 4 samples: its advantage compares the samples of one prompt, and it
collapses at `sdpo`'s learning rate.
"""

from __future__ import annotations

from typing import Any, Literal

from trainer.config import RunConfig

Algorithm = Literal["sdpo", "grpo"]

PRESETS: dict[str, dict[str, Any]] = {
    "sdpo": {
        "prompts_per_step": 32,
        "samples_per_prompt": 2,
        "loss": {"distill_weight": 1.0, "distill": {"alpha": 1.0, "support": "full_logits"}},
        "teacher": {"weights": "frozen"},
        "optim": {"lr": 4e-4},
    },
    "grpo": {
        "prompts_per_step": 16,
        "samples_per_prompt": 4,
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
