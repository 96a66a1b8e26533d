"""The orchestrator (docs/architecture.md "The walk of one step", steps 1-6 and 11).

One task per active run samples the next step's groups with its copy of the policy,
has the environment score them, builds the teacher contexts (trainer.rollout.collect),
keeps the batch and its rollouts in the record, then publishes it on the run's stream.
It never samples with a policy more than `max_off_policy_steps` versions behind the
trainer: before sampling step s it waits until s - 1 - max_off_policy_steps steps are
trained, then loads the newest checkpoint. It evaluates the policy at every milestone
(step 0, every `eval.every`, the last) from that milestone's checkpoint, asks the run's
guards (`RunPlan.guard`) after every trained step and stops the run when one fires, and
marks the run completed once every step is trained and evaluated.

Runs are picked up from the record (`queued` and `running`), so a restarted API process
carries on where the previous one stopped: the next step is the one after the last
published batch, and batches a lost stream held are published again from the record.
Which replica drives a run is decided by the run's lease in the record
(service/storage/leases.py), not by Redis: every batch and evaluation is written under
the lease's fencing token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import asdict
from functools import partial
from typing import Any

from service.bus import Bus
from service.bus.codec import encode_batch
from service.pipeline.runtime import (
    TRAINERS,
    batch_id_for,
    cancel_and_wait,
    emit,
    republish_untrained,
)
from service.settings import Settings
from service.storage import Conflict, Lease, LeaseLost, Repository, RunStatus
from trainer.checkpoint import checkpoint_path, checkpoint_step, latest_checkpoint
from trainer.config import RunConfig
from trainer.guards import Stop
from trainer.loop import RunPolicy
from trainer.run import PolicyCopy, RunPlan, sample_step, world_size_of

log = logging.getLogger(__name__)

LOST_STREAM_CHECK_S = 1.0


def open_sampling_policy(cfg: RunConfig, device: str | None, *, settings: Settings) -> PolicyCopy:
    """A sampling-only RunPolicy with the service's sandbox, environment data and models."""
    return RunPolicy.open(
        cfg,
        device,
        train=False,
        sandbox=settings.sandbox,
        data_dir=settings.env_data_dir,
        model_access=settings.model_access(),
        sampler_dir=settings.data_dir / "sampler-weights",  # what a vLLM server reloads
    )


class Orchestrator:
    """Drives every active run; `open_policy(cfg, device)` opens a run's policy copy
    (default: `open_sampling_policy` with the settings' sandbox and models; tests and benchmarks
    pass a scripted stand-in)."""

    def __init__(
        self,
        repo: Repository,
        bus: Bus,
        settings: Settings,
        open_policy: Callable[[RunConfig, str | None], PolicyCopy] | None = None,
    ) -> None:
        self.repo, self.bus, self.settings = repo, bus, settings
        self.open_policy = open_policy or partial(open_sampling_policy, settings=settings)
        self.drivers: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Begin driving queued and running runs (background task)."""
        self._task = asyncio.create_task(self._supervise(), name="orchestrator")

    def wake(self) -> None:
        """Look for new work now (a run was created, stopped, resumed or cancelled)."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop driving runs; they stay `running` in the record and resume on the next start."""
        tasks = [t for t in (self._task, *self.drivers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        self._task = None
        self.drivers.clear()

    async def _supervise(self) -> None:
        while True:
            runs = await asyncio.to_thread(
                self.repo.runs_with_status, RunStatus.queued, RunStatus.running
            )
            for run in runs:
                if run.id not in self.drivers:
                    task = asyncio.create_task(self._drive(run.id), name=f"run {run.id}")
                    self.drivers[run.id] = task
                    task.add_done_callback(lambda _t, r=run.id: self.drivers.pop(r, None))
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5 * self.settings.poll_s)

    async def _drive(self, run_id: int) -> None:
        # One driver per run across API replicas: the run's lease in the record, renewed
        # while this one drives; it expires `claim_idle_s` after its replica dies, and the
        # same replica (by `replica_id`) takes it back at once when it restarts. Elsewhere
        # it is retried at every look for work.
        ttl_s, holder = self.settings.claim_idle_s, self.settings.replica_id
        lease = await asyncio.to_thread(self.repo.take_lease, run_id, holder, ttl_s)
        if lease is None:
            log.debug("run %d is driven by another replica", run_id)
            return
        try:
            await self._holding(lease, RunDriver(self, run_id, lease).drive())
        except LeaseLost:
            log.warning("run %d: another replica took over its drive lease", run_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - one run fails, the service goes on
            log.exception("run %d failed", run_id)
            message = f"{type(error).__name__}: {error}"
            await asyncio.to_thread(
                self.repo.transition,
                run_id,
                [RunStatus.queued, RunStatus.running],
                RunStatus.failed,
                message,
            )
            await emit(self.repo, self.bus, run_id, "failed", {"error": message})
        finally:  # on a stop, a failure or a shutdown: another replica may go on at once
            with suppress(Exception):
                await asyncio.to_thread(self.repo.release_lease, lease)

    async def _holding(self, lease: Lease, drive: Coroutine[Any, Any, None]) -> None:
        """Run `drive`, renewing `lease` every third of its time; once a renewal finds it
        taken over, stop `drive` and raise LeaseLost. (A write `drive` attempts after the
        takeover raises LeaseLost by itself: the lease fences it.)"""
        ttl_s = self.settings.claim_idle_s
        task = asyncio.create_task(drive, name=f"run {lease.run_id} driver")
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=ttl_s / 3)
                if done:
                    return task.result()
                try:
                    renewed = await asyncio.to_thread(self.repo.renew_lease, lease, ttl_s)
                except Exception:  # noqa: BLE001 - the database is away; try again
                    log.warning("run %d: could not renew its lease", lease.run_id, exc_info=True)
                    continue
                if not renewed:
                    raise LeaseLost(f"run {lease.run_id}: lease taken over")
        finally:
            if not task.done():
                await cancel_and_wait(task)


class RunDriver:
    """Drives one run from its current state to completion, a stop or a cancel."""

    def __init__(self, orchestrator: Orchestrator, run_id: int, lease: Lease) -> None:
        self.repo, self.bus, self.lease = orchestrator.repo, orchestrator.bus, lease
        self.settings, self.open_policy = orchestrator.settings, orchestrator.open_policy
        self.run_id, self.key = run_id, str(run_id)
        self.run_dir = self.settings.run_dir(run_id)
        self.policy: PolicyCopy | None = None
        self.version = 0  # the policy version loaded for sampling
        self.evaluated: dict[int, float] | None = None  # step -> accuracy, as recorded
        self.guarded: int | None = None  # the last step the guards were asked about
        self.began = time.monotonic()
        self.moved = asyncio.Event()  # set by `_listen` when the run's record may have moved

    async def drive(self) -> None:
        run = await asyncio.to_thread(self.repo.get_run, self.run_id)
        plan = RunPlan(RunConfig.model_validate(run.config))
        if run.status == RunStatus.queued:
            await asyncio.to_thread(
                self.repo.transition, self.run_id, [RunStatus.queued], RunStatus.running
            )
            await emit(self.repo, self.bus, self.run_id, "started", {"steps": plan.cfg.steps})
        self.policy = await asyncio.to_thread(self.open_policy, plan.cfg, self.settings.device)
        listener = asyncio.create_task(self._listen(), name=f"run {self.run_id} events")
        try:
            await self._loop(plan)
        finally:
            await cancel_and_wait(listener)
            await asyncio.to_thread(self.policy.close)

    async def _listen(self) -> None:
        """Set `moved` on every event of the run (a trained step, above all), so a driver
        waiting for the trainer samples the next step as soon as it may, not at its next
        poll of the record. The poll stays: an event lost on the bus costs one poll."""
        while True:
            try:
                async with self.bus.subscribe_events(self.key) as events:
                    self.moved.set()  # what happened before the subscription: look again
                    async for _event in events:
                        self.moved.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the bus is away: polling goes on meanwhile
                log.debug("run %d: event subscription lost", self.run_id, exc_info=True)
            await asyncio.sleep(self.settings.poll_s)

    async def _loop(self, plan: RunPlan) -> None:
        cfg = plan.cfg
        train_tasks = list(self.policy.env.dataset("train"))
        next_step = await asyncio.to_thread(self.repo.last_batch_step, self.run_id) + 1
        await self.bus.ensure_group(self.key, TRAINERS)
        if next_step > 1:
            # Also with the stream intact: the previous process may have died between
            # keeping a batch in the record and publishing it (duplicates are skipped).
            await republish_untrained(self.repo, self.bus, self.run_id)
        last_check = time.monotonic()
        while True:
            self.moved.clear()  # before reading the record: what moves it after wakes us
            run = await asyncio.to_thread(self.repo.get_run, self.run_id)
            if run.status != RunStatus.running:
                await self._left(run.status)
                return
            await self._evaluate_milestones(plan, run.steps_done)
            if (stop := await self._guard(plan, run.steps_done)) is not None:
                await self._stop(plan, stop)
                return
            if run.steps_done >= cfg.steps:
                await self._complete(plan)
                return
            behind = next_step - 1 - run.steps_done
            if next_step > cfg.steps or behind > cfg.max_off_policy_steps:
                if time.monotonic() - last_check > LOST_STREAM_CHECK_S:
                    last_check = time.monotonic()
                    if await self.bus.ensure_group(self.key, TRAINERS):
                        await republish_untrained(self.repo, self.bus, self.run_id)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.moved.wait(), timeout=self.settings.poll_s / 4)
                continue
            await self._catch_up()
            await self._publish(plan, train_tasks, next_step)
            next_step += 1

    async def _catch_up(self) -> None:
        """Load the newest trained weights, if newer than the ones we sample with."""
        path = latest_checkpoint(self.run_dir)
        if path is None or (step := checkpoint_step(path)) <= self.version:
            return
        await self._load(path, step)

    async def _load(self, path, step: int) -> None:
        for attempt in range(3):  # the worker may prune a checkpoint while we read it
            try:
                await asyncio.to_thread(self.policy.load_weights, path)
                self.version = step
                return
            except (FileNotFoundError, OSError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05)
                path = latest_checkpoint(self.run_dir) or path

    async def _publish(self, plan: RunPlan, train_tasks: list, step: int) -> None:
        # The plan's tasks and draws: a step sampled again after a restart, with the same
        # policy version, gets the same responses (and `opsd train` samples the same).
        sampled = await asyncio.to_thread(
            sample_step, plan, self.policy, train_tasks, step, self.version
        )
        batch, rollouts, stats = sampled.batch, sampled.rollouts, sampled.stats
        batch.id = batch_id_for(self.run_id, step)
        group = plan.cfg.samples_per_prompt
        rows = [
            {**asdict(r), "group_index": i // group, "sample_index": i % group}
            for i, r in enumerate(rollouts)
        ]
        payload = encode_batch(batch)
        await asyncio.to_thread(
            self.repo.add_batch,
            self.run_id,
            step,
            batch.id,
            self.version,
            payload,
            rows,
            stats,
            self.lease,
        )
        await self.bus.publish_batch(self.key, batch.id, payload)
        feedback = [
            {"step": step, "task_id": r.task_id, "reward": r.reward, "verdict": r.verdict}
            | {"feedback": r.feedback}
            for r in rollouts
            if r.feedback
        ]
        if feedback:
            await self.bus.publish_feedback(self.key, feedback)
        await emit(self.repo, self.bus, self.run_id, "batch", {"step": step, **stats})

    async def _evaluate_milestones(self, plan: RunPlan, steps_done: int) -> None:
        if self.evaluated is None:
            evaluations = await asyncio.to_thread(self.repo.evaluations, self.run_id)
            self.evaluated = dict(evaluations)
        done = self.evaluated
        for step in [s for s in plan.milestones(steps_done) if s not in done]:
            if step == 0 and self.version != 0:
                log.warning("run %d: base weights gone; step 0 not evaluated", self.run_id)
                continue
            if step != self.version:
                await self._load(checkpoint_path(self.run_dir, step), step)
            accuracy = await asyncio.to_thread(self.policy.evaluate)
            await asyncio.to_thread(
                self.repo.add_evaluation, self.run_id, step, accuracy, self.lease
            )
            done[step] = accuracy
            await emit(
                self.repo, self.bus, self.run_id, "eval", {"step": step, "accuracy": accuracy}
            )

    async def _guard(self, plan: RunPlan, steps_done: int) -> Stop | None:
        """Ask the guards about every step trained since they were last asked, in order
        (the first that fires wins). A driver starts with the steps already trained: a run
        resumed after a guard stopped it goes on past that step."""
        if self.guarded is None:
            self.guarded = steps_done
        if steps_done <= self.guarded:
            return None
        patience = plan.cfg.guard.patience
        first = max(1, self.guarded + 1 - patience)
        rows = await asyncio.to_thread(self.repo.step_metrics, self.run_id, first, steps_done)
        metrics = dict(rows)
        for step in range(self.guarded + 1, steps_done + 1):
            recent = [metrics[s] for s in range(max(1, step - patience + 1), step + 1)]
            self.guarded = step
            if (stop := plan.guard(step, recent, self.evaluated or {})) is not None:
                return stop
        return None

    async def _stop(self, plan: RunPlan, stop: Stop) -> None:
        """A guard fired: the run ends `stopped` (it can be resumed) with the reason as its
        error and in a `stopped` event, which also names its best checkpoint."""
        log.warning("run %d: stopped after step %d: %s", self.run_id, stop.step, stop.reason)
        try:
            await asyncio.to_thread(
                self.repo.transition,
                self.run_id,
                [RunStatus.running],
                RunStatus.stopped,
                stop.reason,
            )
        except Conflict:  # stopped or cancelled through the API meanwhile
            return
        evaluations = {s: a for s, a in (self.evaluated or {}).items() if s <= stop.step}
        summary = plan.summary(self.run_dir, evaluations, stop)
        payload = {"status": RunStatus.stopped.value, "guard": stop.guard, "reason": stop.reason}
        await emit(self.repo, self.bus, self.run_id, "stopped", {**payload, **summary})

    async def _complete(self, plan: RunPlan) -> None:
        evaluations = await asyncio.to_thread(self.repo.evaluations, self.run_id)
        await asyncio.to_thread(
            self.repo.transition, self.run_id, [RunStatus.running], RunStatus.completed
        )
        summary = plan.summary(self.run_dir, dict(evaluations))
        last = checkpoint_path(self.run_dir, plan.cfg.steps)
        summary["world_size"] = world_size_of(last)  # the processes of the worker that trained it
        await emit(self.repo, self.bus, self.run_id, "completed", summary)
        await self.bus.delete_run(self.key)

    async def _left(self, status: RunStatus) -> None:
        """The run was stopped or cancelled through the API (which records that event)."""
        if status == RunStatus.cancelled:
            await self.bus.delete_run(self.key)
        log.info("run %d: no longer driven (%s)", self.run_id, status.value)
