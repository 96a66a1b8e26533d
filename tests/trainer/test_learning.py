"""Self-distillation learns: the real tiny model, the real arithmetic environment, on CPU.

No part of the pipeline is scripted here: the policy samples, the environment scores,
the teacher context is built from feedback, and the student is trained on the teacher's
token scores. Held-out greedy accuracy must rise by at least 20 points.
"""

import json

import pytest

from trainer.loop import train
from trainer.presets import preset


@pytest.mark.slow
def test_self_distillation_raises_held_out_accuracy_by_20_points(tmp_path):
    cfg = preset("sdpo", {"steps": 150, "seed": 0, "eval": {"every": 150, "size": 256}})
    summary = train(cfg, tmp_path)
    assert summary["final_eval_accuracy"] >= summary["base_eval_accuracy"] + 0.20, summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(151))
