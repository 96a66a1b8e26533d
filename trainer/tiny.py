"""Build `tiny`: a character-level Llama small enough to train on a laptop CPU.

The model is a real `LlamaForCausalLM` with a `PreTrainedTokenizerFast`, saved as a
Hugging Face directory and loaded by the same code as any other model. It is
pretrained on arithmetic problems, most of them with a teacher context (built by
the project's own context builder from the default templates) that holds the
answer, so that it can read hints in context but cannot yet add well on its own:
exactly the gap self-distillation closes.

`tiny-tools` is the same model pretrained further on episodes of the `lookup` tool
task (`task="tools"`, corpus in trainer/tiny_tools.py): alone it rarely uses the tool
well, with a successful sibling or feedback in its context it nearly always does.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from envs.arithmetic import ArithmeticEnv, feedback_for
from envs.base import Task
from trainer.config import ContextConfig
from trainer.context import Attempt, encode_prompt, render_teacher_texts

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


def hinted_context(task: Task, rng: random.Random, cfg: ContextConfig) -> str:
    """A teacher context for `task`, from a successful sibling or from wrong-answer feedback."""
    wrong = str(int(task.reference[::-1]) + rng.choice([-11, -10, -2, -1, 1, 2, 10, 11]))[::-1]
    _, feedback = feedback_for(wrong, task)
    failed = Attempt(response=wrong, reward=0.0, feedback=feedback)
    if rng.random() < 0.5:
        attempts = [failed, Attempt(response=task.reference, reward=1.0, feedback=None)]
    else:
        attempts = [failed]
    text = render_teacher_texts(task.prompt, attempts, cfg)[0]
    assert text is not None
    return text


Example = tuple[list[int], list[int]]  # token ids, labels (IGNORE: no loss at that position)
IGNORE = -100


def make_example(task: Task, rng: random.Random, plain_fraction: float, tokenizer) -> Example:
    """Token ids (bos + context + answer + eos), with the loss on the answer."""
    context = (
        task.prompt if rng.random() < plain_fraction else hinted_context(task, rng, ContextConfig())
    )
    ctx_ids = encode_prompt(tokenizer, context)
    answer_ids = tokenizer(task.reference, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    return ctx_ids + answer_ids, [IGNORE] * len(ctx_ids) + answer_ids


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


def plain_accuracy(model: LlamaForCausalLM, tokenizer, tasks: list[Task]) -> float:
    """Greedy exact-match accuracy on plain prompts (no hint)."""
    from trainer.config import SamplingConfig
    from trainer.sampler import TransformersSampler

    prompts = [encode_prompt(tokenizer, t.prompt) for t in tasks]
    out = TransformersSampler(model, tokenizer).sample(
        prompts, 1, SamplingConfig(max_new_tokens=6), greedy=True
    )
    answers = [tokenizer.decode(c[0].token_ids, skip_special_tokens=True) for c in out]
    return sum(a.strip() == t.reference for a, t in zip(answers, tasks, strict=True)) / len(tasks)


@dataclass
class Corpus:
    """What pretraining reads: `example(rng, tokenizer, step)` draws one document for
    optimiser step `step`; `done(model, tokenizer)`, checked every `check_every` steps,
    stops pretraining early when true."""

    example: Callable[[random.Random, object, int], Example]
    done: Callable[[LlamaForCausalLM, object], bool] | None = None


def arithmetic_corpus(cfg: PretrainConfig) -> Corpus:
    """Plain and hinted arithmetic problems; stops at `stop_at_plain_accuracy` on
    training problems."""
    tasks = ArithmeticEnv().dataset("train")
    probe = list(tasks[:256])

    def example(rng: random.Random, tokenizer, step: int) -> Example:
        return make_example(rng.choice(tasks), rng, cfg.plain_fraction, tokenizer)

    def done(model: LlamaForCausalLM, tokenizer) -> bool:
        accuracy = plain_accuracy(model, tokenizer, probe)
        log.info("plain accuracy on training problems %.3f", accuracy)
        return accuracy >= cfg.stop_at_plain_accuracy

    return Corpus(example, done if cfg.stop_at_plain_accuracy is not None else None)


def pretrain(
    model: LlamaForCausalLM,
    tokenizer,
    cfg: PretrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    corpus: Corpus | None = None,
) -> int:
    """Supervised pretraining on the masked documents of `corpus` (default: arithmetic).

    Returns the number of steps taken (fewer than cfg.steps when `corpus.done` stops it;
    it looks at training problems only).
    """
    rng = random.Random(cfg.seed)
    corpus = corpus or arithmetic_corpus(cfg)
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
    `trainer.tiny_tools.ToolPretrainConfig`, `max_steps` caps each of its phases.
    """
    tokenizer = build_tokenizer()
    started = time.monotonic()
    if task == "tools":
        from trainer.model import TINY_MODEL_DIR
        from trainer.tiny_tools import ToolPretrainConfig, pretrain_tools

        cfg = cfg or ToolPretrainConfig()
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM.from_pretrained(init or TINY_MODEL_DIR)
        steps = pretrain_tools(model, tokenizer, cfg, on_step, max_steps)
    else:
        cfg = cfg or PretrainConfig()
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(build_config(len(tokenizer)))
        steps = pretrain(model, tokenizer, cfg, on_step)
    log.info(
        "pretrained tiny %s model for %d steps in %.0fs", task, steps, time.monotonic() - started
    )
    model.generation_config = build_generation_config(tokenizer, task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
