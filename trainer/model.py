"""Loading a policy: any Hugging Face causal LM directory, or `tiny` / `tiny-tools`, the
models shipped here."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trainer.config import LoraConfig

log = logging.getLogger(__name__)

TINY_MODEL_DIR = Path(__file__).parent / "tiny_model"
TINY_TOOLS_MODEL_DIR = Path(__file__).parent / "tiny_tools_model"
ALIASES = {"tiny": TINY_MODEL_DIR, "tiny-tools": TINY_TOOLS_MODEL_DIR}


class ModelNotFound(FileNotFoundError):
    """The model name is neither an alias, a local directory, nor loadable from a hub."""


def resolve_model(name: str) -> str:
    """Map an alias (`tiny`, `tiny-tools`) to its directory; anything else is passed to
    transformers."""
    if name in ALIASES:
        path = ALIASES[name]
        if not (path / "config.json").exists():
            build = "opsd tiny-model build" + (" --task tools" if name == "tiny-tools" else "")
            raise ModelNotFound(f"{name!r} is not built yet: run `{build}`")
        return str(path)
    looks_local = name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()
    if looks_local and not (Path(name).expanduser() / "config.json").exists():
        raise ModelNotFound(f"no Hugging Face model directory at {name!r} (config.json missing)")
    return str(Path(name).expanduser()) if looks_local else name


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(bf16: bool | str, device: torch.device) -> torch.dtype:
    """bf16 when asked for, or on `auto` when the device supports it; else float32."""
    if bf16 == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def load_tokenizer(name: str):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name: str,
    *,
    lora: LoraConfig | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, object]:
    """The trainable policy and its tokenizer; with `lora`, a peft model around the base."""
    path = resolve_model(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise ModelNotFound(f"cannot load model {name!r}: {exc}") from exc
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
        model = get_peft_model(model, peft_cfg)
    log.info("loaded %s (%.2fM parameters)", name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, load_tokenizer(name)
