"""Seconds per optimiser step: self-distillation vs GRPO on the same sampled batch.

Samples a few batches once (8 prompts x 8 responses, arithmetic, tiny model), then times
`Learner.step` of the sdpo and grpo default configurations on exactly those batches,
interleaved, and reports medians and the ratio. The full step (sampling + scoring +
training) is reported too, since that is what a run pays per step.

    python benchmarks/step_time.py --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from trainer.loop import RunPolicy
    from trainer.presets import preset
    from trainer.step import Learner

    session = RunPolicy.open(preset("sdpo", {"model": args.model}))
    tasks = list(session.env.dataset("train"))
    rng = random.Random(0)
    rollout_seconds, batches = [], []
    for _ in range(args.repeats):
        began = time.perf_counter()
        batch, _ = session.rollout(rng.sample(tasks, 8), policy_version=0)
        rollout_seconds.append(time.perf_counter() - began)
        batches.append(batch)

    learners = {}
    for algorithm in ("sdpo", "grpo"):
        policy = copy.deepcopy(session.policy)
        learners[algorithm] = Learner(
            policy, session.tokenizer.pad_token_id, preset(algorithm, {"model": args.model})
        )
    seconds: dict[str, list[float]] = {a: [] for a in learners}
    for batch in [batches[0]] + batches:  # the first one warms up
        for algorithm, learner in learners.items():
            began = time.perf_counter()
            learner.step(batch)
            seconds[algorithm].append(time.perf_counter() - began)
    train = {a: statistics.median(s[1:]) for a, s in seconds.items()}
    teacher_pass = time_teacher_pass(learners["sdpo"], batches)
    rollout = statistics.median(rollout_seconds)
    unique = statistics.median(
        len({tuple(s.teacher_prompt_ids or s.prompt_ids) for s in b.samples}) for b in batches
    )

    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {args.threads}, repeats {args.repeats}"
    )
    print(f"distinct teacher prompts per 64-sample batch (median): {unique}")
    print("| part | sdpo (s) | grpo (s) | sdpo / grpo |")
    print("| --- | --- | --- | --- |")
    print(
        f"| training step (same batch) | {train['sdpo']:.4f} | {train['grpo']:.4f} | {train['sdpo'] / train['grpo']:.2f} |"
    )
    full = {a: rollout + t for a, t in train.items()}
    print(
        f"| full step (sampling + scoring + training) | {full['sdpo']:.4f} | {full['grpo']:.4f} | {full['sdpo'] / full['grpo']:.2f} |"
    )
    print(f"(sampling alone: {rollout:.4f} s)")
    shared, cached, full_rows = teacher_pass
    print(
        f"teacher pass: {shared:.4f} s packed (each distinct prompt once, one pass), "
        f"{cached:.4f} s with a copied prompt cache, {full_rows:.4f} s encoding every row"
    )


def time_teacher_pass(learner, batches) -> tuple[float, float, float]:
    """Median teacher-pass seconds: packed shared prompts, cached shared prompts, every row."""
    from trainer.batch import build_sequences
    from trainer.prefix import cached_prefix_logits, shared_prefix_logits

    shared, cached, full_rows = [], [], []
    for batch in batches:
        prompts = [s.teacher_prompt_ids or s.prompt_ids for s in batch.samples]
        responses = [s.response_ids for s in batch.samples]
        began = time.perf_counter()
        learner.teacher.score(
            lambda m, p=prompts, r=responses: shared_prefix_logits(m, p, r, learner.pad_id)
        )
        shared.append(time.perf_counter() - began)
        began = time.perf_counter()
        learner.teacher.score(
            lambda m, p=prompts, r=responses: cached_prefix_logits(m, p, r, learner.pad_id)
        )
        cached.append(time.perf_counter() - began)
        seqs = build_sequences(prompts, responses, learner.pad_id)
        began = time.perf_counter()
        learner.teacher.score(
            lambda m, s=seqs: (
                (
                    m(
                        input_ids=s.input_ids,
                        attention_mask=s.attention_mask,
                        position_ids=s.position_ids,
                    )
                ).logits
            )
        )
        full_rows.append(time.perf_counter() - began)
    return statistics.median(shared), statistics.median(cached), statistics.median(full_rows)


if __name__ == "__main__":
    main()
