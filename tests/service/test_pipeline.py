"""The orchestrator and the trainer worker on the real tiny model, both deployments.

Embedded: a SQLite file and the in-process bus. Distributed: a fresh Postgres
database and real Redis streams. Every count is checked in the record.
"""

import asyncio
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from transformers import AutoModelForCausalLM

from service.bus import Bus, make_bus
from service.bus.codec import decode_batch, encode_batch
from service.pipeline.orchestrator import Orchestrator
from service.pipeline.runtime import TRAINERS, batch_id_for
from service.pipeline.worker import TrainerWorker
from service.runs import archive
from service.runs import service as runs
from service.settings import Settings
from service.storage import Repository, RunStatus, make_engine, make_sessionmaker
from service.storage.migrate import upgrade
from trainer.config import RunConfig
from trainer.guards import best_evaluation
from trainer.loop import RunPolicy, train
from trainer.presets import preset
from trainer.worker import RunTrainer

from .bus.backlog import stream_length
from .conftest import REDIS_URL, delete_prefix
from .records import recorded_steps, set_status, trajectory_count

pytestmark = pytest.mark.anyio

STEPS, PROMPTS, SAMPLES = 4, 2, 2
VLLM_SAMPLING = {  # a small in-process engine (on CPU: 64 MiB of KV cache)
    "backend": "vllm",
    "vllm": {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 128},
}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@dataclass
class Stack:
    settings: Settings
    repo: Repository
    bus: Bus
    prefix: str | None


@pytest.fixture(params=["embedded", "distributed"])
async def stack(request, tmp_path, postgres, redis_prefix):
    if request.param == "embedded":
        url, redis_url, prefix = f"sqlite:///{tmp_path / 'opsd.db'}", None, None
    else:
        url, redis_url, prefix = postgres.create(), REDIS_URL, redis_prefix
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=redis_url,
        bus_prefix=prefix or "opsd",
        poll_s=0.05,
        claim_idle_s=1.0,
        heartbeat_s=0.5,
    )
    upgrade(url)
    engine = make_engine(url)
    bus = make_bus(redis_url, settings.bus_prefix)
    yield Stack(settings, Repository(make_sessionmaker(engine)), bus, prefix)
    await bus.aclose()
    engine.dispose()


def config(steps: int = STEPS) -> RunConfig:
    return preset(
        "sdpo",
        {
            "steps": steps,
            "prompts_per_step": PROMPTS,
            "samples_per_prompt": SAMPLES,
            "eval": {"every": 2, "size": 16},
        },
    )


async def until(predicate, timeout: float = 120.0) -> None:
    """Wait for `predicate()` (sync, run in a thread, or async) to be true."""
    deadline = time.monotonic() + timeout
    while not (
        await predicate()
        if asyncio.iscoroutinefunction(predicate)
        else await asyncio.to_thread(predicate)
    ):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def finished(repo: Repository, run_id: int):
    def check() -> bool:
        run = repo.get_run(run_id)
        assert run.status != RunStatus.failed, run.error
        return run.status == RunStatus.completed

    return check


async def run_to_completion(stack: Stack, cfg: RunConfig, during=None) -> int:
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, cfg)
    orchestrator = Orchestrator(repo, stack.bus, stack.settings)
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await orchestrator.start()
    await worker.start()
    try:
        if during is not None:
            await during(run.id)
        await until(finished(repo, run.id))
    finally:
        await worker.aclose()
        await orchestrator.aclose()
    return run.id


def assert_trained_exactly_once(repo: Repository, run_id: int, steps: int) -> None:
    assert [s.step for s in recorded_steps(repo, run_id)] == list(range(1, steps + 1))
    assert trajectory_count(repo, run_id) == steps * PROMPTS * SAMPLES
    assert repo.untrained_batches(run_id) == []
    assert repo.get_run(run_id).steps_done == steps


async def test_a_run_completes_with_every_step_trained_once_and_recorded(stack):
    run_id = await run_to_completion(stack, config())
    repo = stack.repo
    assert_trained_exactly_once(repo, run_id, STEPS)
    assert [step for step, _ in repo.evaluations(run_id)] == [0, 2, 4]
    assert [c.step for c in repo.list_checkpoints(run_id)] == [2, 4]
    assert all((stack.settings.run_dir(run_id) / f"step-00000{s}").is_dir() for s in (2, 4))

    trajectories, _ = repo.list_trajectories(run_id, limit=100)
    assert {(t.step, t.group_index, t.sample_index) for t in trajectories} == {
        (step, g, s) for step in range(1, STEPS + 1) for g in range(PROMPTS) for s in range(SAMPLES)
    }
    wrong = [t for t in trajectories if t.verdict != "ok"]
    assert wrong and all(t.feedback and t.teacher_context for t in wrong)
    # on-policy: step s trains on responses the policy of step s - 1 sampled
    assert all(t.policy_version == t.step - 1 for t in trajectories)
    trajectory, scores = repo.get_trajectory_scores(trajectories[0].id)
    assert scores is not None and len(scores.log_ratios) == len(scores.tokens) > 0
    assert "".join(scores.tokens).startswith(trajectory.response.strip()[:1])

    series = repo.metrics_series(run_id)
    assert [step for step, _ in series["loss"]] == [1, 2, 3, 4]
    assert {"reward_mean", "samples_seen", "grad_norm", "eval_accuracy"} <= series.keys()
    kinds = [e.kind for e in repo.events_after(run_id)]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert kinds.count("batch") == kinds.count("step") == STEPS and kinds.count("eval") == 3


async def test_a_redelivered_batch_is_skipped_not_trained_again(stack):
    repo = stack.repo
    run_id = await run_to_completion(stack, config(steps=2))
    latest = stack.settings.run_dir(run_id) / "step-000002" / "model.safetensors"
    written = latest.stat().st_mtime_ns
    set_status(repo, run_id, RunStatus.running)  # let a worker serve the run again
    row = repo.get_batch(run_id, batch_id_for(run_id, 2))
    await stack.bus.ensure_group(str(run_id), TRAINERS)
    await stack.bus.publish_batch(str(run_id), row.batch_id, row.payload)
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await worker.start()
    try:

        async def drained() -> bool:
            return await stream_length(stack.bus, str(run_id)) == 0

        await until(drained, 30)
    finally:
        await worker.aclose()
    assert_trained_exactly_once(repo, run_id, 2)
    assert latest.stat().st_mtime_ns == written


async def test_a_step_checkpointed_but_not_recorded_is_recorded_from_the_checkpoint(stack):
    """A worker that died between its checkpoint and the record: the next one must not
    train the batch again, and must record what the first one computed."""
    repo, settings = stack.repo, stack.settings
    cfg = config(steps=1)
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, cfg)
    set_status(repo, run.id, RunStatus.running)

    def sample():
        with RunPolicy.open(cfg, train=False) as session:
            tasks = list(session.env.dataset("train"))[:PROMPTS]
            return session.rollout(tasks, policy_version=0)

    batch, rollouts = await asyncio.to_thread(sample)
    batch.id = batch_id_for(run.id, 1)
    rows = [
        {**r.__dict__, "group_index": i // SAMPLES, "sample_index": i % SAMPLES}
        for i, r in enumerate(rollouts)
    ]
    repo.add_batch(run.id, 1, batch.id, 0, encode_batch(batch), rows, {"reward_mean": 0.0})
    dead = RunTrainer(cfg, settings.run_dir(run.id))
    outcome = dead.train(batch, 1)  # ... and the worker dies here
    state = settings.run_dir(run.id) / "step-000001" / "state.json"
    written = state.stat().st_mtime_ns

    await stack.bus.ensure_group(str(run.id), TRAINERS)
    await stack.bus.publish_batch(str(run.id), batch.id, encode_batch(batch))
    worker = TrainerWorker(repo, stack.bus, settings)
    await worker.start()
    try:
        await until(lambda: repo.steps_done(run.id) == 1, 30)
    finally:
        await worker.aclose()
    assert state.stat().st_mtime_ns == written
    (step,) = recorded_steps(repo, run.id)
    assert step.metrics["loss"] == pytest.approx(outcome.metrics["loss"])


async def test_batches_lost_with_a_flushed_redis_are_republished_from_the_record(stack):
    if stack.prefix is None:
        pytest.skip("the in-process bus cannot lose its streams")
    repo, steps = stack.repo, 6

    async def flush_after_two_steps(run_id: int) -> None:
        await until(lambda: repo.steps_done(run_id) >= 2)
        delete_prefix(REDIS_URL, stack.prefix)  # Redis restarted without persistence

    run_id = await run_to_completion(stack, config(steps), during=flush_after_two_steps)
    assert_trained_exactly_once(repo, run_id, steps)


async def test_a_run_just_started_is_not_reported_as_a_lost_stream(stack, caplog):
    """The worker may see a running run before its orchestrator has loaded the policy and
    opened the batch stream: nothing was lost, and nothing is said."""
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, config())
    set_status(repo, run.id, RunStatus.running)  # what the orchestrator does first
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await worker.start()
    try:
        await until(lambda: run.id in worker.held)  # it has read the run's stream
    finally:
        await worker.aclose()
    assert "stream was lost" not in caplog.text


async def test_a_restart_without_redis_republishes_untrained_batches_without_a_warning(
    stack, caplog
):
    """Embedded, the bus lives in the process: after a restart it is new, and a recorded,
    untrained batch goes on it again as a matter of course, not as a loss."""
    if stack.prefix is not None:
        pytest.skip("with Redis a missing stream is a loss, and is reported")
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, config())
    set_status(repo, run.id, RunStatus.running)
    batch_id = batch_id_for(run.id, 1)
    repo.add_batch(run.id, 1, batch_id, 0, b"batch", [], {})
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    with caplog.at_level(logging.INFO):
        await worker.start()
        try:
            # the batch is not a real one, so training it fails the run at once and
            # the worker lets go of it: wait on what it said, not on what it holds
            await until(lambda: "re-published 1 untrained batches" in caplog.text)
        finally:
            await worker.aclose()
    assert "untrained batches go on the new bus" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in warnings if "lost" in m or "re-published" in m] == []


async def test_two_orchestrators_drive_a_run_once(stack):
    """API replicas each run an orchestrator: a run's lease in the record lets one sample it."""
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, config())
    opened: list[str] = []

    def counting(name: str):
        def open_policy(cfg, device):
            opened.append(name)
            return RunPolicy.open(cfg, device, train=False)

        return open_policy

    orchestrators = [
        Orchestrator(
            repo,
            stack.bus,
            stack.settings.model_copy(update={"replica_id": name}),
            open_policy=counting(name),
        )
        for name in ("a", "b")
    ]
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    for orchestrator in orchestrators:
        await orchestrator.start()
    await worker.start()
    try:
        await until(finished(repo, run.id))
    finally:
        await worker.aclose()
        for orchestrator in orchestrators:
            await orchestrator.aclose()
    assert len(opened) == 1, opened
    assert_trained_exactly_once(repo, run.id, STEPS)
    assert [e.kind for e in repo.events_after(run.id)].count("batch") == STEPS


async def test_a_driver_samples_the_next_step_when_the_trainer_reports_not_at_its_poll(stack):
    """The orchestrator polls the record every `poll_s / 4` while the trainer trains; the
    trained step's event wakes it first. With a 30 s poll, consecutive batches would be
    at least 7.5 s apart without the wake (the driver sleeps right after publishing)."""
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    cfg = config().model_copy(update={"eval": config().eval.model_copy(update={"every": 100})})
    run = repo.create_run(env.id, cfg)
    slow_poll = stack.settings.model_copy(update={"poll_s": 30.0})
    orchestrator = Orchestrator(repo, stack.bus, slow_poll)
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await orchestrator.start()
    await worker.start()
    try:
        await until(finished(repo, run.id))
    finally:
        await worker.aclose()
        await orchestrator.aclose()
    assert_trained_exactly_once(repo, run.id, STEPS)
    sampled = [e.created_at for e in repo.events_after(run.id) if e.kind == "batch"]
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(sampled)]
    assert len(gaps) == STEPS - 1 and max(gaps) < slow_poll.poll_s / 4, gaps


def sampled_tokens(repo: Repository, run_id: int, steps: int) -> list[list[list[int]]]:
    """Per step, the response token ids of its batch (as kept in the record)."""
    batches = [repo.get_batch(run_id, batch_id_for(run_id, s)) for s in range(1, steps + 1)]
    assert [b.policy_version for b in batches] == list(range(steps))  # on-policy: comparable
    return [[s.response_ids for s in decode_batch(b.payload).samples] for b in batches]


async def test_a_run_whose_driver_restarts_samples_what_an_undisturbed_run_samples(stack):
    """Same seed, same config: the steps sampled after the orchestrator restarted draw
    the same tokens as in a run nobody disturbed."""
    repo = stack.repo
    undisturbed = await run_to_completion(stack, config())

    run_id = repo.create_run(repo.get_environment("arithmetic").id, config()).id
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await worker.start()
    try:
        first = Orchestrator(repo, stack.bus, stack.settings)
        await first.start()
        await until(lambda: repo.last_batch_step(run_id) >= 2)
        await first.aclose()  # the API process goes away mid-run ...
        restarted_at = datetime.now(UTC)
        second = Orchestrator(repo, stack.bus, stack.settings)  # ... and comes back
        await second.start()
        try:
            await until(finished(repo, run_id))
        finally:
            await second.aclose()
    finally:
        await worker.aclose()
    assert repo.get_batch(run_id, batch_id_for(run_id, STEPS)).created_at > restarted_at
    assert sampled_tokens(repo, run_id, STEPS) == sampled_tokens(repo, undisturbed, STEPS)


@pytest.mark.slow
async def test_a_run_sampled_by_vllm_gets_every_new_policy_before_it_samples(stack):
    """The orchestrator's vLLM engine gets the weights of each checkpoint it loads: every
    batch is on-policy (max_off_policy_steps 0), so the trainer's log-probs of the sampled
    tokens equal the engine's up to numerics."""
    if stack.prefix is not None:
        pytest.skip("the sampler does not depend on the stack")
    from trainer.vllm_sampler import VLLMUnavailable, import_vllm

    try:
        import_vllm()
    except VLLMUnavailable as exc:
        if os.environ.get("OPSD_REQUIRE_VLLM"):
            raise
        pytest.skip(str(exc))
    cfg = config().model_copy(update={"sampling": config().sampling.model_validate(VLLM_SAMPLING)})
    run_id = await run_to_completion(stack, cfg)
    assert_trained_exactly_once(stack.repo, run_id, STEPS)
    gaps = [s.metrics["sampler_logprob_gap_max"] for s in recorded_steps(stack.repo, run_id)]
    assert len(gaps) == STEPS and max(gaps) < 1e-4, gaps


# --- guards (trainer/guards.py): a guard stops a service run as it stops `opsd train` ---


def guarded_config():
    """Entropy is never below 100 nats: the guard fires once its patience (2 steps) is up."""
    return preset(
        "sdpo",
        {
            "steps": 6,
            "prompts_per_step": PROMPTS,
            "samples_per_prompt": SAMPLES,
            "eval": {"every": 2, "size": 16},
            "guard": {"entropy_min": 100.0, "patience": 2},
        },
    )


async def test_a_guard_stops_a_service_run_at_the_step_opsd_train_stops(stack, tmp_path):
    cfg = guarded_config()
    repo = stack.repo
    env = repo.create_environment("arithmetic", "arithmetic", {})
    run = repo.create_run(env.id, cfg)
    orchestrator = Orchestrator(repo, stack.bus, stack.settings)
    worker = TrainerWorker(repo, stack.bus, stack.settings)
    await orchestrator.start()
    await worker.start()
    try:
        await until(
            lambda: (
                repo.get_run(run.id).status != RunStatus.running
                and any(e.kind == "stopped" for e in repo.events_after(run.id))
            )
        )
    finally:
        await worker.aclose()
        await orchestrator.aclose()

    stopped = repo.get_run(run.id)
    assert stopped.status == RunStatus.stopped
    assert "entropy stayed below 100.0 for 2 steps" in stopped.error
    assert [s.step for s in recorded_steps(repo, run.id)] == [1, 2]
    assert repo.untrained_batches(run.id) == []  # step 3 was never sampled
    event = [e for e in repo.events_after(run.id) if e.kind == "stopped"][-1]
    assert event.payload["guard"] == "entropy_min" and event.payload["reason"] == stopped.error
    assert event.payload["stopped"]["step"] == 2

    evaluations = dict(repo.evaluations(run.id))
    assert sorted(evaluations) == [0, 2]
    best_step, best_accuracy = best_evaluation(evaluations)
    assert (event.payload["best_step"], event.payload["best_eval_accuracy"]) == (
        best_step,
        best_accuracy,
    )
    listed = runs.checkpoints(repo, run.id).items
    assert [(c.step, c.eval_accuracy) for c in listed] == [(2, evaluations[2])]
    assert [c.best for c in listed] == [best_step == 2]

    # the milestone's download (GET .../checkpoints/2/archive) is a loadable model
    directory = runs.checkpoint_directory(repo, run.id, 2)
    tar_path = tmp_path / "step-2.tar"
    tar_path.write_bytes(b"".join(archive.tar_stream(directory, archive.archived_files(directory))))
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "download", filter="data")
    AutoModelForCausalLM.from_pretrained(tmp_path / "download" / directory.name)

    offline = await asyncio.to_thread(train, cfg, tmp_path / "offline", device="cpu")
    assert offline["stopped"] == event.payload["stopped"]
