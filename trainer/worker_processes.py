"""The trainer worker in several processes: the main process leads, the others follow
(docs/operating.md "Several devices").

`opsd worker` started by torchrun (or with `--nproc-per-node`) runs the service's worker
(service.pipeline.worker: the bus, the record, the training lock) in the main process
only, with a `LeadingTrainer` per run. Every call of it that loads, trains or saves is
first announced to the other processes, which make the same call on their own
`RunTrainer` of the run (`follow`): each holds its shards of the same policy and the
collectives of a step line up. The batch goes with the call, so the main process alone
reads the bus; it alone writes the record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.batch import Batch
from trainer.config import RunConfig
from trainer.distributed import World
from trainer.model import UNRESTRICTED, ModelAccess
from trainer.run import StepOutcome
from trainer.worker import RunTrainer

log = logging.getLogger(__name__)


class LeadingTrainer:
    """A run's RunTrainer in the main process, whose calls the others make too."""

    def __init__(
        self,
        world: World,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        keep: int = 2,
        device: str | None = None,
        model_access: ModelAccess = UNRESTRICTED,
    ) -> None:
        self.world, self.key = world, str(run_dir)
        world.broadcast(("open", self.key, cfg.model_dump(mode="json"), keep, device))
        self.inner = RunTrainer(
            cfg, run_dir, keep=keep, device=device, model_access=model_access, world=world
        )

    @property
    def cfg(self) -> RunConfig:
        return self.inner.cfg

    @property
    def run_dir(self) -> Path:
        return self.inner.run_dir

    @property
    def step(self) -> int:
        return self.inner.step

    @property
    def last(self) -> StepOutcome | None:
        return self.inner.last

    def outcome_of(self, batch_id: str) -> StepOutcome | None:
        return self.inner.outcome_of(batch_id)

    def sync(self) -> None:
        self.world.broadcast(("sync", self.key))
        self.inner.sync()

    def train(self, batch: Batch, step: int) -> StepOutcome:
        self.world.broadcast(("train", self.key, batch, step))
        return self.inner.train(batch, step)

    def close(self) -> None:
        self.world.broadcast(("close", self.key))


def follow(world: World, model_access: ModelAccess = UNRESTRICTED) -> None:
    """In a process other than the main one: make the calls the main process announces,
    until it says stop (`stop_followers`). A call that fails here failed there too."""
    trainers: dict[str, RunTrainer] = {}
    while True:
        command: Any
        command, *args = world.broadcast(None)
        if command == "stop":
            return
        try:
            if command == "open":
                run_dir, cfg, keep, device = args
                trainers[run_dir] = RunTrainer(
                    RunConfig.model_validate(cfg),
                    run_dir,
                    keep=keep,
                    device=device,
                    model_access=model_access,
                    world=world,
                )
            elif command == "sync":
                trainers[args[0]].sync()
            elif command == "train":
                run_dir, batch, step = args
                trainers[run_dir].train(batch, step)
            elif command == "close":
                trainers.pop(args[0], None)
        except Exception:  # noqa: BLE001 - the main process reports it and goes on
            log.exception("process %d: %s failed", world.rank, command)


def stop_followers(world: World) -> None:
    """Tell the other processes that the main one stops (they return from `follow`)."""
    if world.sharded:
        world.broadcast(("stop",))
