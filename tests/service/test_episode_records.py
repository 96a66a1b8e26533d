"""Multi-turn episodes in the record: per-step episode stats, per-trajectory metrics, and
no log-ratio for environment tokens.

Plumbing: the orchestrator's run driver publishes one step of scripted episodes
(tests/trainer/episode_envs.py: a scripted sampler on the `Scripted` lookup env) into an
embedded SQLite record, and the step is recorded as the trainer worker records it.
"""

from __future__ import annotations

import pytest

from service.bus import make_bus
from service.bus.codec import decode_batch
from service.pipeline.orchestrator import Orchestrator, RunDriver
from service.settings import Settings
from service.storage import Repository, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from tiny.pretrain import build_tokenizer
from trainer.config import ContextConfig, RunConfig
from trainer.context import TeacherContextBuilder
from trainer.episodes import collect_episodes
from trainer.run import RunPlan

from ..trainer.episode_envs import CALL, EOS, TASKS, Scripted, ScriptSampler

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class EpisodePolicy:
    """A policy copy that plays scripted lookup episodes (first of each group succeeds)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.env, self.tokenizer = cfg, Scripted(), build_tokenizer()

    def rollout(self, tasks, policy_version: int, seed: int | None = None):
        def script(context: str, row: int) -> str:
            if "<tool_response>" in context:
                return "4821" + EOS
            return CALL + EOS if row % 2 == 0 else "0000" + EOS

        return collect_episodes(
            self.env,
            tasks,
            sampler=ScriptSampler(self.tokenizer, script),
            tokenizer=self.tokenizer,
            builder=TeacherContextBuilder(self.tokenizer, ContextConfig()),
            group_size=self.cfg.samples_per_prompt,
            sampling=self.cfg.sampling,
            policy_version=policy_version,
        )


async def test_a_step_of_episodes_records_episode_stats_metrics_and_env_token_scores(tmp_path):
    url = f"sqlite:///{tmp_path / 'opsd.db'}"
    upgrade(url)
    repo = Repository(make_sessionmaker(make_engine(url)))
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    cfg = RunConfig(
        steps=1, prompts_per_step=1, samples_per_prompt=2, sampling={"max_new_tokens": 300}
    )
    env = repo.create_environment("lookup-test", "scripted_lookup", {})
    run = repo.create_run(env.id, cfg)
    lease = repo.take_lease(run.id, settings.replica_id, settings.claim_idle_s)
    driver = RunDriver(Orchestrator(repo, make_bus(None), settings), run.id, lease)
    driver.policy = EpisodePolicy(cfg)

    await driver._publish(RunPlan(cfg), TASKS[:1], 1)  # step 1 samples the one task

    (pending,) = repo.untrained_batches(run.id)
    assert pending.stats["turns_mean"] == 1.5  # 2 turns and 1 turn
    assert pending.stats["tool_calls_mean"] == 0.5
    assert pending.stats["tool_errors_mean"] == 0.0
    counts = [{k: v for k, v in r["metrics"].items() if k != "per_turn"} for r in pending.rollouts]
    assert counts == [
        {"turns": 2, "tool_calls": 1, "tool_errors": 0},
        {"turns": 1, "tool_calls": 0, "tool_errors": 0},
    ]
    per_turn = [[(t["tool"], t["ran"]) for t in r["metrics"]["per_turn"]] for r in pending.rollouts]
    assert per_turn == [[("lookup", True), (None, False)], [(None, False)]]
    batch = decode_batch(pending.payload)
    masks = [s.response_mask for s in batch.samples]
    assert 0 in masks[0] and set(masks[1]) == {1}  # the masks travel with the batch

    log_ratios = [[None if m == 0 else -0.5 for m in mask] for mask in masks]
    assert repo.record_step(
        run.id, 1, batch.id, {"loss": 0.1, **pending.stats}, 1, pending.rollouts, log_ratios
    )
    rows, _ = repo.list_trajectories(run.id)
    assert [r.metrics["turns"] for r in rows] == [2, 1]
    assert rows[0].metrics["per_turn"][0]["tokens"] == masks[0].index(0)  # the call's tokens
    _, scores = repo.get_trajectory(rows[0].id)
    assert scores == log_ratios[0]
    assert repo.metrics_series(run.id)["turns_mean"] == [(1, 1.5)]
