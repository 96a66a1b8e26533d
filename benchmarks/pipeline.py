"""Trajectories per second through the service's own plumbing, against raw Redis.

A scripted instant policy stands in for the model on both sides (this benchmark is
about plumbing): the orchestrator's "sampling" returns a prepared batch, the worker's
"training" returns a prepared outcome. Everything else is real: the orchestrator keeps
each batch and its rollouts in Postgres, publishes it on a Redis stream, the worker
reads it through the consumer group, records the step with every trajectory and its
per-token scores in one transaction, acknowledges, and both emit their events.

The baseline, measured in the same run, is the floor any design pays: the same
encoded batches through raw XADD / XREADGROUP / XACK+XDEL on the same Redis.

    python benchmarks/pipeline.py --steps 100 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from envs.registry import make_env
from service.bus import make_bus
from service.bus.codec import encode_batch
from service.pipeline.orchestrator import Orchestrator
from service.pipeline.worker import TrainerWorker
from service.settings import Settings
from service.storage import Repository, RunStatus, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from trainer.batch import Batch, Sample
from trainer.config import RunConfig
from trainer.rollout import Rollout
from trainer.worker import StepOutcome

PROMPT, RESPONSE, TEACHER = 64, 32, 128  # tokens per sample


def scripted_batch(prompts: int, group: int) -> tuple[Batch, list[Rollout]]:
    samples, rollouts = [], []
    for i in range(prompts * group):
        samples.append(
            Sample(
                prompt_ids=[i % 50 + 3] * PROMPT,
                response_ids=[7] * RESPONSE,
                sampler_logprobs=[-0.5] * RESPONSE,
                reward=float(i % 2),
                truncated=False,
                teacher_prompt_ids=[9] * TEACHER,
            )
        )
        verdict = "ok" if i % 2 else "wrong_answer"
        feedback = None if i % 2 else "expected 42, got 41"
        rollouts.append(
            Rollout(
                f"task-{i // group}",
                "What is 20 + 22?",
                "41",
                float(i % 2),
                verdict,
                feedback,
                "What is 20 + 22?\nA correct solution:\n42\n",
                False,
            )
        )
    return Batch(samples, group, 0), rollouts


@dataclass
class ScriptedPolicy:
    """Instant sampling (always the same prepared batch); no weights to load."""

    cfg: RunConfig
    env: object = None
    prepared: tuple = ()

    def __post_init__(self) -> None:
        self.env = make_env(self.cfg.env, self.cfg.env_config)
        self.prepared = scripted_batch(self.cfg.prompts_per_step, self.cfg.samples_per_prompt)

    def rollout(self, tasks, policy_version: int, seed: int | None = None):
        batch, rollouts = self.prepared
        return Batch(batch.samples, batch.group_size, policy_version), rollouts

    def evaluate(self) -> float:
        return 0.0

    def load_weights(self, path) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class ScriptedTrainer:
    """Instant training with an in-memory step counter (no checkpoints)."""

    cfg: RunConfig
    run_dir: Path
    keep: int = 2
    device: str | None = None
    step: int = 0
    last: StepOutcome | None = field(default=None)

    def sync(self) -> None:
        pass

    def outcome_of(self, batch_id: str) -> StepOutcome | None:
        return self.last if self.last and self.last.batch_id == batch_id else None

    def train(self, batch: Batch, step: int) -> StepOutcome:
        ratios = [[0.01] * len(s.response_ids) for s in batch.samples]
        tokens = [["a"] * len(s.response_ids) for s in batch.samples]
        self.step = step
        self.last = StepOutcome(step, batch.id, {"loss": 0.1, "lr": 1e-4}, ratios, tokens)
        return self.last


async def through_service(settings: Settings, cfg: RunConfig) -> float:
    """Seconds from creating the run to its completion."""
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    repo = Repository(make_sessionmaker(engine))
    bus = make_bus(settings.redis_url, settings.bus_prefix)
    env = repo.create_environment(f"arith-{uuid.uuid4().hex[:6]}", "arithmetic", {})
    orchestrator = Orchestrator(repo, bus, settings, open_policy=lambda c, d: ScriptedPolicy(c))
    worker = TrainerWorker(repo, bus, settings, open_trainer=ScriptedTrainer)
    await worker.start()
    await orchestrator.start()
    began = time.perf_counter()
    run = repo.create_run(env.id, cfg)
    async with bus.subscribe_events(str(run.id)) as events:
        orchestrator.wake()
        while True:  # wake on events, not by polling (it would compete with what it measures)
            try:
                event = await asyncio.wait_for(anext(events), timeout=1.0)
                if event["kind"] not in ("completed", "failed"):
                    continue
            except TimeoutError:  # a missed event: look at the record
                pass
            status = repo.get_run(run.id).status
            assert status != RunStatus.failed, repo.get_run(run.id).error
            if status == RunStatus.completed:
                break
    seconds = time.perf_counter() - began
    with engine.connect() as conn:
        count = text("SELECT count(*) FROM trajectories WHERE run_id = :run")
        recorded = conn.scalar(count, {"run": run.id})
    assert recorded == cfg.steps * cfg.prompts_per_step * cfg.samples_per_prompt
    await orchestrator.aclose()
    await worker.aclose()
    await bus.aclose()
    engine.dispose()
    return seconds


async def raw_redis(url: str, cfg: RunConfig) -> float:
    """The same payloads through bare XADD, XREADGROUP and XACK+XDEL."""
    client = redis.Redis.from_url(url)
    key = f"opsd-bench-{uuid.uuid4().hex[:8]}"
    payload = encode_batch(scripted_batch(cfg.prompts_per_step, cfg.samples_per_prompt)[0])
    await client.xgroup_create(key, "g", id="0", mkstream=True)
    began = time.perf_counter()

    async def produce() -> None:
        for step in range(cfg.steps):
            await client.xadd(key, {"batch_id": f"b{step}", "payload": payload})

    async def consume() -> None:
        seen = 0
        while seen < cfg.steps:
            reply = await client.xreadgroup("g", "c", {key: ">"}, count=16, block=100)
            for _stream, entries in reply or []:
                for message_id, _fields in entries:
                    await client.xack(key, "g", message_id)
                    await client.xdel(key, message_id)
                    seen += 1

    await asyncio.gather(produce(), consume())
    seconds = time.perf_counter() - began
    await client.delete(key)
    await client.aclose()
    return seconds


def postgres_database(admin_url: str) -> tuple[str, callable]:
    name = f"opsd_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "OPSD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("OPSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = RunConfig(
        steps=args.steps,
        prompts_per_step=args.prompts,
        samples_per_prompt=args.samples,
        max_off_policy_steps=args.steps,  # the scripted policy never waits for the trainer
        eval={"every": args.steps + 1, "size": 1},
    )
    trajectories = args.steps * args.prompts * args.samples
    results: dict[str, list[float]] = {
        "raw redis": [],
        "service (postgres + redis)": [],
        "service (embedded)": [],
    }
    for _ in range(args.repeats):
        results["raw redis"].append(asyncio.run(raw_redis(args.redis, cfg)))
        url, drop = postgres_database(args.postgres)
        try:
            with tempfile.TemporaryDirectory() as data:
                settings = Settings(
                    data_dir=Path(data),
                    database_url=url,
                    redis_url=args.redis,
                    bus_prefix=f"opsd-bench-{uuid.uuid4().hex[:8]}",
                    poll_s=0.01,
                )
                results["service (postgres + redis)"].append(
                    asyncio.run(through_service(settings, cfg))
                )
        finally:
            drop()
        with tempfile.TemporaryDirectory() as data:
            settings = Settings(data_dir=Path(data), poll_s=0.01)
            results["service (embedded)"].append(asyncio.run(through_service(settings, cfg)))

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{args.steps} steps x {args.prompts * args.samples} trajectories, "
        f"median of {args.repeats}"
    )
    base = statistics.median(results["raw redis"])
    print(f"{'path':30} {'traj/s':>10} {'ms/traj':>8} {'vs raw redis':>13}")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(
            f"{name:30} {trajectories / median:10.0f} {1000 * median / trajectories:8.3f} "
            f"{median / base:12.1f}x"
        )


if __name__ == "__main__":
    main()
