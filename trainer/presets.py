"""The default configuration of each algorithm, as measured in benchmarks/learning.py.

`sdpo` is the best self-distillation configuration found on the arithmetic task with
the tiny model; `grpo` is the GRPO baseline with the same batch shape and sample
count at the learning rate that suited it best.
"""

from __future__ import annotations

from typing import Any, Literal

from trainer.config import RunConfig

Algorithm = Literal["sdpo", "grpo"]

PRESETS: dict[str, dict[str, Any]] = {
    "sdpo": {
        "loss": {"distill_weight": 1.0, "distill": {"alpha": 1.0, "support": "full_logits"}},
        "teacher": {"weights": "frozen"},
        "optim": {"lr": 2e-4},
    },
    "grpo": {
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
