"""Checkpoints of a run trained across processes (trainer/distributed.py), loadable by any
number of processes.

A sharded checkpoint holds what trainer/checkpoint.py describes, but the state that is
sharded is a torch distributed checkpoint, each process writing its own shards:
    config.json, model.safetensors, ...   the policy, gathered whole by the main process
                                          (LoRA: merged, and `adapter/`, as in one process):
                                          what a sampler and `from_pretrained` load
    tokenizer files                       milestones
    sharded/                              `torch.distributed.checkpoint`: the policy's
                                          weights, the optimiser state, the EMA teacher
    trainer_state.pt                      scheduler, teacher (its EMA tensors aside), RNG
    state.json                            the caller's state, with `world_size`
Any number of processes resumes it (`torch.distributed.checkpoint` reshards on load),
one included; and a run trained in one process (trainer/checkpoint.py) resumes across
several from its whole weights and optimiser state (`load_whole_into_sharded`). Every
process must call these functions; only the main one writes the files besides `sharded/`.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.lr_scheduler import LRScheduler

from trainer.checkpoint import (
    ADAPTER_DIR,
    STATE_JSON,
    TRAINER_STATE,
    CheckpointError,
    lora_adapter,
    merged_state_dict,
    move_into_place,
    read_weights,
    rng_state,
    set_rng_state,
)
from trainer.distributed import World
from trainer.teacher import Teacher

SHARDED_DIR = "sharded"
PEFT_PREFIX = "base_model.model."  # a peft model's names of its base model's tensors


def is_sharded(path: str | Path) -> bool:
    """Whether the checkpoint at `path` was written by several processes."""
    return (Path(path) / SHARDED_DIR).is_dir()


def _sharded_state(
    policy: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor]
) -> dict[str, Any]:
    return {
        "model": get_model_state_dict(policy),
        "optimizer": get_optimizer_state_dict(policy, optimizer),
        "teacher": ema,
    }


def save_sharded(
    path: str | Path,
    *,
    world: World,
    policy: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
    state: dict,
) -> Path:
    """Write a sharded checkpoint at `path` atomically (every process calls it)."""
    path = Path(path)
    state_json = json.dumps({**state, "world_size": world.size}, indent=2)
    tmp = path.with_name(f".{path.name}.tmp")
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    whole = get_model_state_dict(
        policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )  # the main process's only
    teacher_state = teacher.state_dict() if teacher is not None else None
    ema = teacher_state.pop("ema", {}) if teacher_state is not None else {}
    dcp.save(_sharded_state(policy, optimizer, ema), checkpoint_id=tmp / SHARDED_DIR)
    if world.is_main:
        _save_whole_policy(policy, whole, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        trainer_state = {
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "teacher": teacher_state,
            "rng": rng_state(),
        }
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / STATE_JSON).write_text(state_json)
        move_into_place(tmp, path)
    world.barrier()
    return path


def load_sharded(
    path: str | Path,
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
) -> dict:
    """Resume from a sharded checkpoint, in one process or several; the saved state."""
    path = Path(path)
    teacher_state = teacher.state_dict() if teacher is not None else None
    ema = teacher_state.get("ema", {}) if teacher_state is not None else {}
    sharded = _sharded_state(policy, optimizer, ema)
    with warnings.catch_warnings():  # one process reading shards is meant (it says so)
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(  # in place, resharded to this run's processes (one: no process group)
            sharded, checkpoint_id=path / SHARDED_DIR, no_dist=not dist.is_initialized()
        )
    set_model_state_dict(policy, sharded["model"])
    set_optimizer_state_dict(policy, optimizer, sharded["optimizer"])
    trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    _restore_rest(trainer_state, scheduler, teacher, sharded["teacher"])
    return json.loads((path / STATE_JSON).read_text())


def load_whole_into_sharded(
    path: str | Path,
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
) -> dict:
    """Resume a sharded policy from a checkpoint written by one process."""
    path = Path(path)
    whole = StateDictOptions(full_state_dict=True, strict=False)  # tied aliases are not saved
    set_model_state_dict(policy, _whole_weights(policy, path), options=whole)
    trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    saved = trainer_state["optimizer"]  # tensors numbered in the order of the trainable ones
    names = [name for name, p in policy.named_parameters() if p.requires_grad]
    by_name = {
        "state": {names[i]: tensors for i, tensors in saved["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in saved["param_groups"]
        ],
    }
    set_optimizer_state_dict(policy, optimizer, by_name, options=whole)
    ema = (trainer_state["teacher"] or {}).get("ema", {})
    _restore_rest(trainer_state, scheduler, teacher, ema)
    return json.loads((path / STATE_JSON).read_text())


def _save_whole_policy(policy: nn.Module, whole: dict[str, torch.Tensor], directory: Path) -> None:
    """What trainer/checkpoint.py writes for the policy, from its gathered state dict."""
    if not isinstance(policy, PeftModel):
        policy.save_pretrained(directory, state_dict=whole)
        return
    adapter = lora_adapter(policy)
    base = policy.get_base_model()
    base_whole = {key.removeprefix(PEFT_PREFIX): tensor for key, tensor in whole.items()}
    base.save_pretrained(directory, state_dict=merged_state_dict(base, adapter, base_whole))
    policy.save_pretrained(directory / ADAPTER_DIR, selected_adapters=[adapter], state_dict=whole)


def _whole_weights(policy: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The policy's weights in a one-process checkpoint, by the policy's names: the model,
    or for LoRA the policy's own base weights with the saved adapter."""
    if not isinstance(policy, PeftModel):
        return read_weights(path)
    adapter = policy.active_adapter
    folder = path / ADAPTER_DIR if adapter == "default" else path / ADAPTER_DIR / adapter
    saved = load_file(folder / "adapter_model.safetensors")  # peft's names: no adapter name
    whole = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
    for key, tensor in saved.items():
        name = re.sub(r"\.(lora_[AB])\.", rf".\1.{adapter}.", key)
        if name not in whole:
            raise CheckpointError(f"adapter does not fit the policy: unexpected {key}")
        whole[name] = tensor
    return whole


def _restore_rest(
    trainer_state: dict,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
    ema: dict[str, torch.Tensor],
) -> None:
    if scheduler is not None:
        scheduler.load_state_dict(trainer_state["scheduler"])
    if teacher is not None:
        saved = dict(trainer_state["teacher"])
        if ema:
            saved["ema"] = ema
        teacher.load_state_dict(saved)
    set_rng_state(trainer_state["rng"])
