"""Rows and payloads the API tests share."""

from __future__ import annotations

from typing import Any

from service.storage import Repository
from trainer.config import RunConfig


def make_run(repo: Repository, env_name: str = "arith", **config: Any):
    """A queued run on a registered arithmetic environment, written through the repository."""
    try:
        env = repo.get_environment(env_name)
    except Exception:
        env = repo.create_environment(env_name, "arithmetic", {})
    cfg = RunConfig(model="tiny", steps=10, prompts_per_step=2, samples_per_prompt=3, **config)
    return repo.create_run(env.id, cfg)


def trajectory(group: int, sample: int, verdict: str = "ok") -> dict[str, Any]:
    """A trajectory as the worker records it: Rollout fields plus its place in the step."""
    return {
        "group_index": group,
        "sample_index": sample,
        "task_id": f"{group}+{sample}",
        "prompt": f"{group}+{sample}=",
        "response": str(group + sample),
        "reward": 1.0 if verdict == "ok" else 0.0,
        "verdict": verdict,
        "feedback": None if verdict == "ok" else "Incorrect. The answer is 3.",
        "teacher_context": "A correct solution: ...",
        "truncated": False,
    }


def record_step(repo: Repository, run_id: int, step: int, verdicts: list[str], **kwargs) -> None:
    trajectories = [trajectory(0, i, v) for i, v in enumerate(verdicts)]
    metrics = {"reward_mean": sum(v == "ok" for v in verdicts) / len(verdicts), "loss": 0.5}
    assert repo.record_step(run_id, step, f"batch-{step}", metrics, step, trajectories, **kwargs)


def parse_sse(body: str) -> list[dict[str, str]]:
    """Server-sent events as dicts of their fields (comments such as pings dropped)."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            events.append(fields)
    return events


def error_of(response) -> dict[str, Any]:
    """The `error` object of an error response, checking the envelope on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]
