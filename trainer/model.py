"""Loading a policy: any Hugging Face causal LM directory, or `tiny` / `tiny-tools`, the
models shipped here. Which names may be loaded is trainer.model_names' (one resolver and
its ModelAccess); loading is serialised across threads (see `LOADING`)."""

from __future__ import annotations

import logging
import threading

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trainer.config import LoraConfig
from trainer.model_names import (
    ALIASES,
    TINY_MODEL_DIR,
    TINY_TOOLS_MODEL_DIR,
    UNRESTRICTED,
    ModelAccess,
    ModelNotFound,
    resolve_model,
)

log = logging.getLogger(__name__)

# transformers' `from_pretrained` patches process-wide state while it builds a model
# (parameters are created on the meta device, then filled in). Two threads loading at
# once can leave that patch in place for good, and every later load fails with "Cannot
# copy out of meta tensor". Every load in this process goes through this lock.
LOADING = threading.RLock()

__all__ = [
    "ALIASES",
    "LOADING",
    "UNRESTRICTED",
    "TINY_MODEL_DIR",
    "TINY_TOOLS_MODEL_DIR",
    "ModelNotFound",
    "ModelAccess",
    "load_policy",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(bf16: bool | str, device: torch.device) -> torch.dtype:
    """bf16 when asked for, or on `auto` when the device supports it; else float32."""
    if bf16 == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def unloadable(name: str, path: str, exc: Exception, access: ModelAccess) -> ModelNotFound:
    """The error for files that do not load; the server's paths only for the operator."""
    log.warning("cannot load model %r from %s: %s", name, path, exc)
    detail = f": {exc}" if access.local_paths else " (its files do not load)"
    return ModelNotFound(f"cannot load model {name!r}{detail}")


def load_tokenizer(name: str, access: ModelAccess = UNRESTRICTED):
    path = resolve_model(name, access)
    try:
        with LOADING:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise unloadable(name, path, exc, access) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name: str,
    *,
    lora: LoraConfig | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    access: ModelAccess = UNRESTRICTED,
) -> tuple[PreTrainedModel, object]:
    """The trainable policy and its tokenizer; with `lora`, a peft model around the base.
    `access`: which names may be loaded (default: any, as the operator may)."""
    path = resolve_model(name, access)
    try:
        with LOADING:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:  # no weights, an unknown model_type, ...
        raise unloadable(name, path, exc, access) from exc
    model.to(device or pick_device())
    if lora is not None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        with LOADING:
            model = get_peft_model(model, peft_cfg)
    log.info("loaded %s (%.2fM parameters)", name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, load_tokenizer(name, access)
