"""The trainer worker (docs/architecture.md "The walk of one step", steps 7-10).

It joins the `trainers` consumer group of every running run's batch stream, trains
each batch (trainer.worker.RunTrainer: optimiser step, then checkpoint), records the
step with its trajectories and per-token log-ratios, and only then acknowledges the
batch. What keeps the training effect exactly-once:

- a batch whose id the record already holds is acknowledged without training;
- a batch the latest checkpoint trained but the record missed (a crash in between)
  is recorded from the outcome saved in that checkpoint;
- one worker trains a run at a time (a bus lock per run), and a worker first loads any
  newer checkpoint another worker wrote;
- batches are trained in step order; a delivery that is ahead waits unacknowledged.
A worker that dies holding batches loses nothing: another one claims them once they
have been idle `claim_idle_s`. A stream that vanished (Redis flushed) is refilled from
the record (service.pipeline.runtime.republish_untrained).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from functools import partial

from service.bus import Bus, Delivery, LockLost, StreamLost
from service.bus.codec import decode_batch
from service.pipeline.runtime import TRAINERS, cancel_and_wait, emit, republish_untrained
from service.settings import Settings
from service.storage import NotFound, Repository, RunStatus
from service.storage.models import PendingBatch
from trainer.checkpoint import checkpoint_path
from trainer.config import RunConfig
from trainer.run import RunPlan
from trainer.worker import RunTrainer

log = logging.getLogger(__name__)


class TrainerWorker:
    def __init__(
        self,
        repo: Repository,
        bus: Bus,
        settings: Settings,
        worker_id: str | None = None,
        open_trainer: Callable[..., RunTrainer] | None = None,
    ) -> None:
        """`open_trainer(cfg, run_dir, keep=, device=)`: RunTrainer loading the models the
        settings let clients name, or a scripted stand-in."""
        self.repo, self.bus, self.settings = repo, bus, settings
        self.open_trainer = open_trainer or partial(
            RunTrainer, model_access=settings.model_access()
        )
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.trainers: dict[int, RunTrainer] = {}
        self.recorded: dict[int, str] = {}  # run -> the batch id this worker last recorded
        self.held: dict[int, dict[int, tuple[Delivery, PendingBatch]]] = {}  # run -> step ->
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Train in a background task until `aclose`."""
        self._task = asyncio.create_task(self.run(), name=f"worker {self.worker_id}")

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def run(self) -> None:
        """Train until cancelled (what `opsd worker` runs)."""
        log.info("worker %s started", self.worker_id)
        beat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                runs = await asyncio.to_thread(self.repo.runs_with_status, RunStatus.running)
                self._forget(keep={r.id for r in runs})
                if not runs:
                    await asyncio.sleep(self.settings.poll_s)
                    continue
                block_ms = max(1, int(self.settings.poll_s * 1000 / len(runs)))
                for run in runs:
                    await self._serve(run.id, block_ms)
        finally:
            await cancel_and_wait(beat)  # a heartbeat left running would outlive the worker
            log.info("worker %s stopped", self.worker_id)

    async def _heartbeat(self) -> None:
        while True:
            with suppress(Exception):  # a bus outage must not kill training
                await self.bus.heartbeat(self.worker_id, ttl_s=3 * self.settings.heartbeat_s)
            await asyncio.sleep(self.settings.heartbeat_s)

    def _forget(self, keep: set[int]) -> None:
        for run_id in set(self.trainers) - keep:
            self.trainers.pop(run_id).close()
            self.held.pop(run_id, None)
            self.recorded.pop(run_id, None)

    async def _serve(self, run_id: int, block_ms: int) -> None:
        """Take this run's new and stale deliveries and train whatever is next in order."""
        key = str(run_id)
        try:
            if await self.bus.ensure_group(key, TRAINERS):
                # The group had to be created: the stream was lost (Redis flushed) and
                # what it held must come back from the record, as for StreamLost.
                raise StreamLost(key, TRAINERS)
            idle_ms = int(self.settings.claim_idle_s * 1000)
            got = await self.bus.claim_stale(key, TRAINERS, self.worker_id, idle_ms, count=16)
            got += await self.bus.read_batches(
                key, TRAINERS, self.worker_id, count=16, block_ms=block_ms
            )
        except StreamLost:
            self.held.pop(run_id, None)  # their message ids died with the stream
            run = await asyncio.to_thread(self.repo.get_run, run_id)
            if run.status == RunStatus.running:
                # A run whose first batch is not recorded yet had no stream to lose: the
                # orchestrator is still loading its policy, and this created the group.
                if await asyncio.to_thread(self.repo.last_batch_step, run_id):
                    if self.settings.redis_url is None:  # a new in-process bus: a restart
                        log.info("run %d: its untrained batches go on the new bus", run_id)
                    else:
                        log.warning("run %d: its batch stream was lost (Redis flushed?)", run_id)
                    await republish_untrained(self.repo, self.bus, run_id)
            else:  # the orchestrator deleted the stream of a finished run under our read
                await self.bus.delete_run(key)
            return
        held = self.held.setdefault(run_id, {})
        for delivery in got:
            try:
                row = await asyncio.to_thread(self.repo.get_batch, run_id, delivery.batch_id)
            except NotFound:
                log.warning("run %d: unknown batch %s dropped", run_id, delivery.batch_id)
                await self.bus.ack(key, TRAINERS, delivery.message_id)
                continue
            held[row.step] = (delivery, row)
        try:
            await self._train_in_order(run_id)
        except Exception as error:  # noqa: BLE001 - the run fails, the worker goes on
            log.exception("run %d failed in training", run_id)
            message = f"{type(error).__name__}: {error}"
            with suppress(Exception):
                self.repo.transition(run_id, [RunStatus.running], RunStatus.failed, message)
                await emit(self.repo, self.bus, run_id, "failed", {"error": message})
            self._forget(keep=set(self.trainers) - {run_id})

    async def _train_in_order(self, run_id: int) -> None:
        held = self.held.get(run_id, {})
        while held:
            trainer = await self._trainer(run_id)
            await asyncio.to_thread(trainer.sync)
            step = min(held)
            if step > trainer.step + 1 and trainer.outcome_of(held[step][0].batch_id) is None:
                return  # an earlier batch is still on its way (or with another worker)
            if step == trainer.step + 1 and not await self._recorded(run_id, trainer):
                # The latest checkpoint's step is not in the record (its worker died in
                # between): its batch comes back (claimed or re-published) and is recorded
                # from the checkpoint first; training past it would make it out of order.
                return
            delivery, row = held.pop(step)
            await self._handle(run_id, trainer, delivery, row)

    async def _recorded(self, run_id: int, trainer: RunTrainer) -> bool:
        """Is the step of the trainer's latest checkpoint in the record?"""
        if trainer.last is None or self.recorded.get(run_id) == trainer.last.batch_id:
            return True  # (the batch this worker itself recorded last: no need to ask)
        return await asyncio.to_thread(self.repo.batch_recorded, run_id, trainer.last.batch_id)

    async def _trainer(self, run_id: int) -> RunTrainer:
        if run_id not in self.trainers:
            run = await asyncio.to_thread(self.repo.get_run, run_id)
            cfg = RunConfig.model_validate(run.config)
            self.trainers[run_id] = await asyncio.to_thread(
                self.open_trainer,
                cfg,
                self.settings.run_dir(run_id),
                keep=self.settings.checkpoint_keep,
                device=self.settings.device,
            )
        return self.trainers[run_id]

    async def _handle(
        self, run_id: int, trainer: RunTrainer, delivery: Delivery, row: PendingBatch
    ) -> None:
        key = str(run_id)
        try:
            async with self.bus.lock(f"train:{run_id}", ttl_s=self.settings.claim_idle_s):
                await self._train_and_record(run_id, trainer, delivery, row)
        except LockLost:
            log.warning("run %d: the training lock expired during step %d", run_id, row.step)
        await self.bus.ack(key, TRAINERS, delivery.message_id)

    async def _train_and_record(
        self, run_id: int, trainer: RunTrainer, delivery: Delivery, row: PendingBatch
    ) -> None:
        repo, step = self.repo, row.step
        # `row.trained` is as of the delivery: another worker may have recorded it since
        # (and trained past it), so ask the record again now that we hold the lock.
        if row.trained or await asyncio.to_thread(repo.batch_recorded, run_id, delivery.batch_id):
            log.info("run %d: batch %s already trained; skipped", run_id, delivery.batch_id)
            return
        await asyncio.to_thread(trainer.sync)
        began = time.monotonic()
        outcome = trainer.outcome_of(delivery.batch_id)
        if outcome is None:
            batch = decode_batch(delivery.payload)
            outcome = await asyncio.to_thread(trainer.train, batch, step)
        metrics = {
            **row.stats,
            **outcome.metrics,
            "train_seconds": time.monotonic() - began,
            "world_size": trainer.world.size,  # the processes that trained it
        }
        recorded = await asyncio.to_thread(
            repo.record_step,
            run_id,
            step,
            delivery.batch_id,
            metrics,
            step,  # the policy version this step produced
            # each trajectory keeps the version of the policy that sampled it
            [{**r, "policy_version": row.policy_version} for r in row.rollouts],
            outcome.log_ratios,
            outcome.tokens,
        )
        self.recorded[run_id] = delivery.batch_id  # by us now, or by another worker before
        if not recorded:
            return
        if RunPlan(trainer.cfg).is_milestone(step):
            path = checkpoint_path(trainer.run_dir, step)
            await asyncio.to_thread(repo.add_checkpoint, run_id, step, str(path))
        await emit(repo, self.bus, run_id, "step", {"step": step, "metrics": metrics})
