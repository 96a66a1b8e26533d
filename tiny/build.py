"""Build a tiny model: create or load it, pretrain it on its corpus, save it as a Hugging
Face directory (`opsd tiny-model build`). The shipped ones live in tiny/models/."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaForCausalLM

from tiny.arithmetic import arithmetic_corpus
from tiny.pretrain import (
    PretrainConfig,
    build_config,
    build_generation_config,
    build_tokenizer,
    pretrain,
)
from tiny.tools import ToolPretrainConfig, pretrain_tools
from trainer.model_names import TINY_MODEL_DIR

log = logging.getLogger(__name__)


def build_tiny_model(
    out_dir: Path,
    cfg=None,
    on_step=None,
    *,
    task: Literal["arithmetic", "tools"] = "arithmetic",
    init: Path | None = None,
    max_steps: int | None = None,
) -> Path:
    """Create, pretrain and save a tiny model as a Hugging Face directory.

    `arithmetic` (`tiny`): random weights, `cfg` a `PretrainConfig`. `tools` (`tiny-tools`):
    the weights in `init` (default: the packaged `tiny`), `cfg` a
    `tiny.tools.ToolPretrainConfig`, `max_steps` caps each of its phases.
    """
    tokenizer = build_tokenizer()
    started = time.monotonic()
    if task == "tools":
        cfg = cfg or ToolPretrainConfig()
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM.from_pretrained(init or TINY_MODEL_DIR)
        steps = pretrain_tools(model, tokenizer, cfg, on_step, max_steps)
    else:
        cfg = cfg or PretrainConfig()
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(build_config(len(tokenizer)))
        steps = pretrain(model, tokenizer, cfg, arithmetic_corpus(cfg), on_step)
    log.info(
        "pretrained tiny %s model for %d steps in %.0fs", task, steps, time.monotonic() - started
    )
    model.generation_config = build_generation_config(tokenizer, task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
