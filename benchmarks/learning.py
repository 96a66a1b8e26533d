"""Self-distillation vs GRPO at an equal number of sampled responses.

Runs each algorithm's default configuration (trainer/presets.py) on a task with a tiny
model for several seeds, then writes the accuracy curves as a table and a PNG, and the
samples each algorithm needs to reach GRPO's best accuracy. Tasks: `arithmetic` (single
turn, `tiny`), `sparse` (operands up to 99: rare successes) and `tools` (multi-turn
`lookup` episodes, `tiny-tools`). Usage:

    python benchmarks/learning.py --steps 300 --seeds 0 1 2 --jobs 2
    python benchmarks/learning.py --task sparse --steps 600 --eval-every 50
    python benchmarks/learning.py --task tools --steps 40 --eval-every 5
    python benchmarks/learning.py --report-only      # redraw from existing runs
    python benchmarks/learning.py --ablation --seeds 0   # self-distillation variants
    python benchmarks/learning.py --shapes 4x16 8x8 16x4 32x2 64x1 --jobs 1
                                    # prompts x samples per prompt at 64 samples per step


Each run is an ordinary `trainer.loop.train` call writing to benchmarks/runs/learning/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
RUNS = HERE / "runs" / "learning"


# Self-distillation variants, each a change from the sdpo preset; their results are in
# docs/algorithm.md "Measured behaviour".
ABLATION: dict[str, tuple[str, dict]] = {
    "reverse-kl": ("sdpo", {"loss": {"distill": {"alpha": 1.0}}}),
    "forward-kl": ("sdpo", {"loss": {"distill": {"alpha": 0.0}}}),
    "jsd-0.5": ("sdpo", {"loss": {"distill": {"alpha": 0.5}}}),
    "topk-20-tail": ("sdpo", {"loss": {"distill": {"support": "topk_logits", "topk": 20}}}),
    "sampled-token": ("sdpo", {"loss": {"distill": {"support": "sampled_token"}}}),
    "ema-0.05": ("sdpo", {"teacher": {"weights": "ema", "rate": 0.05}}),
    "trust-region-0.05": ("sdpo", {"teacher": {"weights": "trust_region", "rate": 0.05}}),
    "grpo": ("grpo", {}),
}

# What each task changes in the presets, and the prefix of its run directories.
TASKS: dict[str, tuple[str, dict]] = {
    "arithmetic": ("", {}),
    # Sparse reward: two-digit operands up to 99, where the tiny model starts at 0.035
    # held out and most of GRPO's groups hold no success to compare against.
    "sparse": ("sparse-", {"env_config": {"high": 99}}),
    "tools": (
        "tools-",
        {
            "env": "lookup",
            "model": "tiny-tools",
            "sampling": {"max_new_tokens": 160},  # a whole episode: call, observation, answer
            "eval": {"size": 64},  # lookup's held-out names
        },
    ),
}
TITLES = {
    "arithmetic": "arithmetic, tiny model",
    "sparse": "operands up to 99, tiny model",
    "tools": "lookup tool episodes, tiny-tools model",
}


NOISE = 0.01  # a rise in held-out accuracy below this is no rise (256 problems: 2.6 of them)


def run_one(name: str, algorithm: str, seed: int, steps: int, every: int, overrides: dict) -> str:
    import torch

    torch.set_num_threads(1)
    from trainer.loop import train
    from trainer.presets import merge, preset

    out = RUNS / f"{name}-seed{seed}"
    if (out / "summary.json").exists() and json.loads((out / "summary.json").read_text())[
        "steps"
    ] == steps:
        return str(out)
    cfg = preset(
        algorithm, merge({"steps": steps, "seed": seed, "eval": {"every": every}}, overrides)
    )
    train(cfg, out)
    return str(out)


def parse_shape(text: str) -> tuple[int, int]:
    """`8x8` -> (prompts_per_step, samples_per_prompt)."""
    prompts, sep, samples = text.partition("x")
    if not sep or not prompts.isdigit() or not samples.isdigit():
        raise argparse.ArgumentTypeError(f"expected PROMPTSxSAMPLES (e.g. 8x8), got {text!r}")
    return int(prompts), int(samples)


def shape_arg(text: str) -> str:
    """`--shapes` items, checked by argparse (a bad one is a usage error)."""
    parse_shape(text)
    return text


def shape_runs(
    algorithms: list[str], shapes: list[str], prefix: str, tag: str, extra: dict
) -> dict[str, tuple[str, dict]]:
    """One run name per (algorithm, shape), `{prefix}{algorithm}-{shape}{tag}`. GRPO
    compares the samples of one prompt with each other, so it needs at least 2 per prompt."""
    from trainer.presets import merge

    runs = {}
    for a in algorithms:
        for shape in shapes:
            prompts, samples = parse_shape(shape)
            if a == "grpo" and samples < 2:
                print(
                    f"skipping grpo {shape}: GRPO's advantage compares samples of the same "
                    "prompt, so it needs >= 2 samples per prompt",
                    flush=True,
                )
                continue
            shape_overrides = {"prompts_per_step": prompts, "samples_per_prompt": samples}
            runs[f"{prefix}{a}-{shape}{tag}"] = (a, merge(extra, shape_overrides))
    return runs


def shape_report(names: list[str], seeds: list[int], at_steps: list[int]) -> str:
    """Per run name: held-out accuracy at `at_steps` (median over seeds, then per seed),
    the mean over all evaluations and the mean `teacher_signal_frac`. Missing runs and
    points not reached yet show as '-'."""
    head = " | ".join(f"step {s}: median (per seed)" for s in at_steps)
    lines = [f"| run | seeds | {head} | mean over evals (median) | teacher_signal_frac |"]
    lines.append("|" + " --- |" * (len(at_steps) + 4))
    for name in names:
        runs = {s: RUNS / f"{name}-seed{s}" for s in seeds}
        records = {s: load_records(r) for s, r in runs.items() if (r / "metrics.jsonl").exists()}
        if not records:
            lines.append(f"| {name} | - |" + " - |" * (len(at_steps) + 2))
            continue
        evals = {
            s: {r["step"]: r["eval_accuracy"] for r in recs if "eval_accuracy" in r}
            for s, recs in records.items()
        }
        cells = []
        for step in at_steps:
            vals = {s: e[step] for s, e in evals.items() if step in e}
            if not vals:
                cells.append("-")
                continue
            per_seed = ", ".join(f"{v:.2f}" for v in vals.values())
            cells.append(f"{statistics.median(vals.values()):.3f} ({per_seed})")
        means = [statistics.mean(e.values()) for e in evals.values() if len(e) > 1]
        cells.append(f"{statistics.median(means):.3f}" if means else "-")
        frac = mean_metric(list(records.values()), "teacher_signal_frac")
        cells.append(f"{frac:.3f}" if frac is not None else "-")
        seeds_done = ",".join(str(s) for s in records)
        lines.append(f"| {name} | {seeds_done} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def curve(records: list[dict], metric: str) -> dict[int, float]:
    """`metric` by samples seen, over the records that have it."""
    return {r["samples_seen"]: r[metric] for r in records if metric in r}


def report(
    algorithms: list[str],
    seeds: list[int],
    png: str = "learning.png",
    prefix: str = "",
    title: str = TITLES["arithmetic"],
    tag: str = "",
) -> str:
    records = {
        a: [load_records(RUNS / f"{prefix}{a}{tag}-seed{s}") for s in seeds] for a in algorithms
    }
    curves = {a: [curve(r, "eval_accuracy") for r in runs] for a, runs in records.items()}
    points = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    mean = {
        a: {p: statistics.mean(c[p] for c in runs) for p in points} for a, runs in curves.items()
    }
    lines = ["| samples | " + " | ".join(f"{a} (mean of {len(seeds)})" for a in algorithms) + " |"]
    lines.append("|" + " --- |" * (len(algorithms) + 1))
    for p in points:
        cells = []
        for a in algorithms:
            vals = [c[p] for c in curves[a]]
            cells.append(f"{mean[a][p]:.3f} ({min(vals):.2f}-{max(vals):.2f})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if "sdpo" in mean and "grpo" in mean:
        target = max(mean["grpo"].values())
        reach = {a: samples_to_reach(mean[a], target) for a in mean}
        start = mean["grpo"][points[0]]
        if target < start + NOISE:
            lines.append(
                f"\ngrpo never rises a point above where it starts ({start:.3f}; best "
                f"{target:.3f}): there is no accuracy of its for sdpo to reach."
            )
        elif reach["sdpo"] is not None:
            lines.append(
                f"\ngrpo's best accuracy ({target:.3f}, mean of seeds) is reached after "
                f"{reach['sdpo']:,.0f} samples by sdpo and {reach['grpo']:,.0f} by grpo: "
                f"sdpo needs {reach['sdpo'] / reach['grpo']:.2f} of grpo's samples."
            )
        else:
            lines.append(f"\nsdpo does not reach grpo's best accuracy ({target:.3f}).")
    health = {
        a: {m: mean_metric(runs, m) for m in ("teacher_signal_frac", "teacher_gap", "entropy")}
        for a, runs in records.items()
    }
    lines.append(
        "\nmean over steps and seeds: "
        + "; ".join(
            f"{a} " + ", ".join(f"{m} {v:.3f}" for m, v in h.items() if v is not None)
            for a, h in health.items()
        )
    )
    lines += ["", reward_table(records, points)]
    plot(curves, mean, points, png, title)
    return "\n".join(lines)


def mean_metric(runs: list[list[dict]], metric: str) -> float | None:
    """`metric` averaged over every step of every run that records it."""
    values = [r[metric] for recs in runs for r in recs if r.get(metric) is not None]
    return statistics.mean(values) if values else None


def samples_to_reach(curve: dict[int, float], target: float) -> float | None:
    """Samples at which `curve` (accuracy by samples seen) first reaches `target`, linearly
    interpolated between the two evaluations around the crossing; None if it never does."""
    points = sorted(curve)
    if not points or curve[points[0]] >= target:
        return float(points[0]) if points else None
    for low, high in zip(points, points[1:], strict=False):
        if curve[high] >= target:
            share = (target - curve[low]) / (curve[high] - curve[low])
            return low + share * (high - low)
    return None


def reward_table(records: dict[str, list[list[dict]]], points: list[int]) -> str:
    """Mean training reward (the sampled responses' success) between consecutive eval
    points: how the whole sampling distribution moves, where greedy accuracy shows its mode."""
    rewards = {a: [curve(r, "reward_mean") for r in runs] for a, runs in records.items()}
    lines = ["| samples | " + " | ".join(f"{a} training reward" for a in records) + " |"]
    lines.append("|" + " --- |" * (len(records) + 1))
    for low, high in zip(points, points[1:], strict=False):
        cells = []
        for a in records:
            window = [r for c in rewards[a] for n, r in c.items() if low < n <= high]
            cells.append(f"{statistics.mean(window):.3f}" if window else "-")
        lines.append(f"| {low + 1}-{high} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves, mean, points, png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a, runs in curves.items():
        line = ax.plot(points, [mean[a][p] for p in points], label=f"{a} (mean)", linewidth=2)[0]
        for c in runs:
            ax.plot(points, [c[p] for p in points], color=line.get_color(), alpha=0.25, linewidth=1)
    ax.set_xlabel("sampled responses")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"{title}: self-distillation vs GRPO")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="arithmetic")
    parser.add_argument("--algorithms", nargs="+", default=["sdpo", "grpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--set", dest="overrides", default="{}", help="JSON overrides applied to every run"
    )
    parser.add_argument(
        "--tag", default="", help="appended to the run directories and the PNG (e.g. --tag=-g2)"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=shape_arg,
        help="batch shapes PROMPTSxSAMPLES (e.g. 4x16 8x8 16x4): one run per algorithm and "
        "shape, reported as a table of accuracy at --report-steps (grpo skips 1 sample)",
    )
    parser.add_argument("--report-steps", nargs="+", type=int, default=[50, 100, 300])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--ablation", action="store_true", help="run the self-distillation variants"
    )
    args = parser.parse_args()
    from trainer.presets import merge

    prefix, task_overrides = TASKS[args.task]
    extra = merge(task_overrides, json.loads(args.overrides))
    if args.shapes:
        runs = shape_runs(args.algorithms, args.shapes, prefix, args.tag, extra)
    elif args.ablation:
        runs = {
            f"{prefix}{name}{args.tag}": (alg, merge(o, extra))
            for name, (alg, o) in ABLATION.items()
        }
    else:
        runs = {f"{prefix}{a}{args.tag}": (a, extra) for a in args.algorithms}
    if not args.report_only:
        jobs = [(name, alg, s, o) for s in args.seeds for name, (alg, o) in runs.items()]
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_one, n, a, s, args.steps, args.eval_every, o) for n, a, s, o in jobs
            ]
            for f in futures:
                print("done", f.result(), flush=True)
    if args.shapes:
        print(shape_report(list(runs), args.seeds, args.report_steps))
        return
    png = f"{prefix}{'ablation' if args.ablation else 'learning'}{args.tag}.png"
    names = [name.removeprefix(prefix).removesuffix(args.tag) for name in runs]
    print(report(names, args.seeds, png, prefix, TITLES[args.task], args.tag))


if __name__ == "__main__":
    main()
