"""What both tiny models share: the character-level tokenizer, the Llama architecture,
the generation config, and supervised pretraining on a corpus of masked documents.

`tiny` is a real `LlamaForCausalLM` with a `PreTrainedTokenizerFast`, saved as a Hugging
Face directory and loaded by the same code as any other model; tiny/arithmetic.py holds
its corpus and tiny/tools.py the corpus of `tiny-tools`; tiny/build.py builds either.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), plus four specials.

    Encoding adds the `<bos>` every training sequence starts with (a `TemplateProcessing`
    post-processor in tokenizer.json), so `tokenizer(prompt)` gives what the model expects,
    as with any Hugging Face model; the project's own encoder asks for the plain tokens
    (`add_special_tokens=False`) and adds `<bos>` itself.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=512,
        add_bos_token=True,
        padding_side="left",  # batched generation continues each row from its last token
    )


def build_generation_config(tokenizer, task: Literal["arithmetic", "tools"]) -> GenerationConfig:
    """Greedy decoding, as the project evaluates, with room for a whole answer: an
    arithmetic answer, or a whole `lookup` episode."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16 if task == "arithmetic" else 160,
    )


def build_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


@dataclass
class PretrainConfig:
    steps: int = 2000  # at most
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    plain_fraction: float = 0.3
    seed: int = 0
    # Stop once greedy accuracy on plain *training* problems reaches this: the model then
    # adds poorly but is close to learning how, which is where feedback can teach it.
    stop_at_plain_accuracy: float | None = 0.2
    check_every: int = 25


Example = tuple[list[int], list[int]]  # token ids, labels (IGNORE: no loss at that position)
IGNORE = -100


def collate(
    examples: list[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (row, row_labels) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, : len(row)] = torch.tensor(row_labels)
    return ids, mask, labels


@dataclass
class Corpus:
    """What pretraining reads: `example(rng, tokenizer, step)` draws one document for
    optimiser step `step`; `done(model, tokenizer)`, checked every `check_every` steps,
    stops pretraining early when true."""

    example: Callable[[random.Random, object, int], Example]
    done: Callable[[LlamaForCausalLM, object], bool] | None = None


def pretrain(
    model: LlamaForCausalLM,
    tokenizer,
    cfg: PretrainConfig,
    corpus: Corpus,
    on_step: Callable[[int, float], None] | None = None,
) -> int:
    """Supervised pretraining on the masked documents of `corpus`.

    Returns the number of steps taken (fewer than cfg.steps when `corpus.done` stops it;
    it looks at training problems only).
    """
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    for step in range(cfg.steps):
        batch = [corpus.example(rng, tokenizer, step) for _ in range(cfg.batch_size)]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step:
            on_step(step, loss.item())
        if corpus.done is not None and (step + 1) % cfg.check_every == 0:
            finished = corpus.done(model, tokenizer)
            model.train()
            if finished:
                log.info("pretraining done after %d steps", step + 1)
                return step + 1
    return cfg.steps
