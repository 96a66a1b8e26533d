"""Checkpoints: a loadable Hugging Face model directory that also resumes training exactly.

Layout of one checkpoint directory (`step-000050`, see `checkpoint_path`):
    config.json, model.safetensors, ...   the policy; for LoRA the adapter merged into the
                                          base weights, so `AutoModelForCausalLM.from_pretrained`
                                          loads it as a plain model
    adapter/                              LoRA only: the trainable adapter (peft format)
    tokenizer files                       `tokenizer.save_pretrained`
    trainer_state.pt                      optimiser, scheduler, teacher (docs/algorithm.md
                                          "Teacher weights") and the torch / python / numpy RNG states
    state.json                            the caller's `state` (step, batch ids trained, ...)
A checkpoint is written into a temporary sibling directory and renamed into place, so a
directory named `step-*` is always complete.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase

from trainer.teacher import Teacher

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
STATE_JSON = "state.json"
ADAPTER_DIR = "adapter"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the objects it is loaded into."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step-{step:06d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint directory named by `checkpoint_path`; None for any other name."""
    match = _STEP_DIR.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the complete checkpoints under `run_dir`, in order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(
        step
        for path in run_dir.iterdir()
        if (step := checkpoint_step(path)) is not None and (path / STATE_JSON).is_file()
    )


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete `step-*` checkpoint with the highest step under `run_dir`, if any."""
    steps = checkpoint_steps(run_dir)
    return checkpoint_path(run_dir, steps[-1]) if steps else None


def save_checkpoint(
    path: str | Path,
    *,
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
    state: dict,
) -> Path:
    """Write a checkpoint directory at `path` atomically (replacing an existing one)."""
    path = Path(path)
    state_json = json.dumps(state, indent=2)  # fails before anything is written
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _save_policy(policy, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "teacher": teacher.state_dict() if teacher is not None else None,
            "rng": rng_state(),
        }
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / STATE_JSON).write_text(state_json)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, path)
    return path


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete directory `tmp` to `path`, replacing what is there."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", path)


def load_checkpoint(
    path: str | Path,
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    teacher: Teacher | None,
) -> dict:
    """Restore policy weights, optimiser, scheduler, teacher and RNGs; return the saved state.

    Build `policy`, `teacher`, `optimizer` and `scheduler` the usual way (from the initial
    weights) first; this loads the trained weights into them.
    """
    path = Path(path)
    load_weights(policy, path)
    trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer_state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(trainer_state["scheduler"])
    if teacher is not None:
        teacher.load_state_dict(trainer_state["teacher"])
    set_rng_state(trainer_state["rng"])
    logger.info("loaded checkpoint %s", path)
    return json.loads((path / STATE_JSON).read_text())


def _save_policy(policy: nn.Module, directory: Path) -> None:
    if not isinstance(policy, PeftModel):
        policy.save_pretrained(directory)
        return
    adapter = lora_adapter(policy)
    base = policy.get_base_model()
    base.save_pretrained(directory, state_dict=merged_state_dict(base, adapter))
    policy.save_pretrained(directory / ADAPTER_DIR, selected_adapters=[adapter])


def lora_adapter(policy: PeftModel) -> str:
    """The trainable adapter of a LoRA policy, if a merged checkpoint can hold it."""
    adapter = policy.active_adapter
    peft_cfg = policy.peft_config[adapter]
    if getattr(peft_cfg, "use_dora", False) or getattr(peft_cfg, "lora_bias", False):
        raise CheckpointError("merged checkpoints support plain LoRA only (no DoRA, no lora_bias)")
    if getattr(peft_cfg, "modules_to_save", None):
        raise CheckpointError("merged checkpoints do not support modules_to_save")
    return adapter


@torch.no_grad()
def merged_state_dict(
    base: nn.Module, adapter: str, whole: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The base model's state dict with `adapter` merged in (as `merge_and_unload` would),
    built tensor by tensor so that the policy itself is never modified. `whole`: the
    base model's state dict gathered from a sharded model (trainer/sharded_checkpoint.py),
    merged from its own tensors."""
    state = base.state_dict() if whole is None else dict(whole)
    merged = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefix, base_prefix = f"{name}.", f"{name}.base_layer."
        own = {}
        for key in [k for k in state if k.startswith(prefix)]:
            own[key] = tensor = state.pop(key)
            if key.startswith(base_prefix):
                merged[prefix + key.removeprefix(base_prefix)] = tensor
        if whole is None:
            weight = module.get_base_layer().weight
            delta = module.get_delta_weight(adapter)
        else:
            weight = merged[f"{name}.weight"]
            lora_a = own[f"{prefix}lora_A.{adapter}.weight"]  # [r, in]
            lora_b = own[f"{prefix}lora_B.{adapter}.weight"]  # [out, r]
            delta = lora_b.float() @ lora_a.float()  # [out, in]
            delta = (delta.T if module.fan_in_fan_out else delta) * module.scaling[adapter]
        merged[f"{name}.weight"] = (weight + delta).to(weight.dtype).cpu()
    return {**state, **merged}


def load_weights(policy: nn.Module, path: str | Path) -> None:
    """Load only the policy weights of a checkpoint (what a sampler needs to catch up)."""
    path = Path(path)
    if isinstance(policy, PeftModel):
        adapter = policy.active_adapter
        adapter_dir = path / ADAPTER_DIR if adapter == "default" else path / ADAPTER_DIR / adapter
        weights = load_file(adapter_dir / "adapter_model.safetensors")
        missing = get_peft_model_state_dict(policy, adapter_name=adapter).keys() - weights.keys()
        result = set_peft_model_state_dict(policy, weights, adapter_name=adapter)
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"adapter does not fit the policy: missing {sorted(missing)[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return
    weights = read_weights(path)
    result = policy.load_state_dict(weights, strict=False)
    # safetensors drops tied aliases (e.g. lm_head.weight = embed_tokens.weight)
    own = policy.state_dict(keep_vars=True)
    untied = [k for k in result.missing_keys if not any(own[k] is own[j] for j in weights)]
    if result.unexpected_keys or untied:
        raise CheckpointError(
            f"checkpoint does not fit the policy: missing {untied[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a Hugging Face directory (one safetensors file or several)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    weights = {}
    for file in files:
        weights.update(load_file(path / file))
    return weights


def rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    numpy_state = rng["numpy"]
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
