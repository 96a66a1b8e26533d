"""Self-distillation vs GRPO at an equal number of sampled responses.

Runs each algorithm's default configuration (trainer/presets.py) on the arithmetic
task with the tiny model for several seeds, then writes the accuracy curves as a table
and a PNG. Usage:

    python benchmarks/learning.py --steps 300 --seeds 0 1 2 --jobs 2
    python benchmarks/learning.py --report-only      # redraw from existing runs

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


def run_one(algorithm: str, seed: int, steps: int, every: int, overrides: dict) -> str:
    import torch

    torch.set_num_threads(1)
    from trainer.loop import train
    from trainer.presets import merge, preset

    out = RUNS / f"{algorithm}-seed{seed}"
    if (out / "summary.json").exists() and json.loads((out / "summary.json").read_text())["steps"] == steps:
        return str(out)
    cfg = preset(algorithm, merge({"steps": steps, "seed": seed, "eval": {"every": every}}, overrides))
    train(cfg, out)
    return str(out)


def load_curve(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {r["samples_seen"]: r["eval_accuracy"] for r in records if "eval_accuracy" in r}


def report(algorithms: list[str], seeds: list[int]) -> str:
    curves = {a: [load_curve(RUNS / f"{a}-seed{s}") for s in seeds] for a in algorithms}
    points = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    mean = {a: {p: statistics.mean(c[p] for c in runs) for p in points} for a, runs in curves.items()}
    lines = ["| samples | " + " | ".join(f"{a} (mean of {len(seeds)})" for a in algorithms) + " |"]
    lines.append("|" + " --- |" * (len(algorithms) + 1))
    for p in points:
        cells = []
        for a in algorithms:
            vals = [c[p] for c in curves[a]]
            cells.append(f"{mean[a][p]:.3f} ({min(vals):.2f}-{max(vals):.2f})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if "sdpo" in mean and "grpo" in mean:
        target = mean["grpo"][points[-1]]
        reached = next((p for p in points if mean["sdpo"][p] >= target), None)
        if reached:
            lines.append(
                f"\nsdpo reaches grpo's final accuracy ({target:.3f} at {points[-1]} samples) after "
                f"{reached} samples: {points[-1] / max(reached, 1):.1f}x fewer."
            )
        else:
            lines.append(f"\nsdpo does not reach grpo's final accuracy ({target:.3f}).")
    plot(curves, mean, points)
    return "\n".join(lines)


def plot(curves, mean, points) -> None:
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
    ax.set_title("arithmetic, tiny model: self-distillation vs GRPO")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "learning.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["sdpo", "grpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--set", dest="overrides", default="{}", help="JSON overrides applied to every run")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        overrides = json.loads(args.overrides)
        jobs = [(a, s) for s in args.seeds for a in args.algorithms]
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_one, a, s, args.steps, args.eval_every, overrides) for a, s in jobs]
            for f in futures:
                print("done", f.result(), flush=True)
    print(report(args.algorithms, args.seeds))


if __name__ == "__main__":
    main()
