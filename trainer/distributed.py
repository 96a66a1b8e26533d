"""Training across processes: torchrun's ranks, FSDP2 sharding, and how a step's work and
its results are shared (docs/architecture.md "Several devices", docs/operating.md).

A run trained by `torchrun` (or `opsd train --nproc-per-node N`) has one process per
device. Every process holds the same run: it samples the same step with the same seed
(the forward passes of a sharded model need every process), then trains on its own whole
groups of each micro-batch. The model, its gradients and the optimiser state are sharded
with `torch.distributed.fsdp.fully_shard`; gradients are summed across processes, and
each process's loss is its share of the whole batch's loss (`trainer.losses.policy_loss`
with `rows`), so one step means the same as on one device.

`World` says which process this is; `SINGLE` is the one-process run, where nothing here
runs and the trainer behaves as it always did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")


class WorldError(ValueError):
    """A step cannot be shared out over this many processes."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes that train one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes files and the record."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def device(self, requested: str | None = None) -> str | None:
        """The device this process trains on: with several processes and GPUs, its own
        GPU (for `cuda` or no choice); else the requested one."""
        if self.sharded and requested in (None, "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def rows(self, samples: int, group_size: int) -> slice:
        """This process's whole groups of a micro-batch of `samples` samples."""
        groups = samples // group_size
        if groups < self.size:
            raise WorldError(
                f"a micro-batch of {groups} groups cannot be shared by {self.size} processes: "
                "prompts_per_step must be at least optim.grad_accumulation x processes"
            )
        start = round(self.rank * groups / self.size) * group_size
        stop = round((self.rank + 1) * groups / self.size) * group_size
        return slice(start, stop)

    def broadcast(self, obj: T) -> T:
        """The main process's `obj`, in every process."""
        if not self.sharded:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every process's `obj`, in rank order, in every process."""
        if not self.sharded:
            return [obj]
        boxes: list[Any] = [None] * self.size
        dist.all_gather_object(boxes, obj)
        return boxes

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each process's shares of the step's metrics, added up (maxima: the largest)."""
        if not self.sharded:
            return metrics
        names = sorted(metrics)
        sums = [n for n in names if not n.endswith("_max")]
        maxima = [n for n in names if n.endswith("_max")]
        totals = torch.tensor([metrics[n] for n in sums], dtype=torch.float64)
        peaks = torch.tensor([metrics[n] for n in maxima], dtype=torch.float64)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        return {
            **dict(zip(sums, totals.tolist(), strict=True)),
            **dict(zip(maxima, peaks.tolist(), strict=True)),
        }

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()


SINGLE = World()


def current_world() -> World:
    """The processes this one trains with: `SINGLE` unless a process group is up."""
    if not dist.is_available() or not dist.is_initialized():
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), dist.get_node_local_rank(0))


def join_world(timeout: timedelta | None = None) -> World:
    """Join the process group when started by torchrun (torch's elastic launcher), with
    NCCL on GPUs and gloo on CPUs; a plain process stays `SINGLE`. `timeout`: how long a
    collective waits for the others (torch's default: 10 to 30 minutes)."""
    if dist.is_available() and not dist.is_initialized() and dist.is_torchelastic_launched():
        if torch.cuda.is_available():
            torch.cuda.set_device(dist.get_node_local_rank(0))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        world = current_world()
        log.info("process %d of %d", world.rank, world.size)
    return current_world()


def leave_world() -> None:
    """Tear down the process group `join_world` set up (at the end of the program)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: nn.Module) -> None:
    """Shard `model` in place with FSDP2: each transformer block, then the rest.

    The blocks are the modules transformers never splits (`_no_split_modules`); a peft
    model is sharded as its base model, adapters included (its `generate` calls the base
    model directly, so the outermost sharded module must be that one). Gradients are
    summed across processes, not averaged: each process's loss is already its share of
    the batch's.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or [])
    for module in list(base.modules()):
        if module is not base and type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(base)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` (or the base model inside it) is sharded by `shard`."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded one (a collective: every process calls it)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`value`, a whole tensor, sharded as `target` is (unchanged if `target` is whole)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
    return value


def interleave(parts: Sequence[Sequence[list[T]]]) -> list[T]:
    """Rows gathered per process, per micro-batch (`parts[rank][micro]`), back in batch
    order: each micro-batch's rows rank by rank."""
    return [row for micro in zip(*parts, strict=True) for rows in micro for row in rows]
