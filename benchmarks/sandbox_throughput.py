"""Sandbox throughput: executions per second of a typical test program.

Each backend runs the same program (read numbers from stdin, compute, print) with
`workers` runs at a time, against bare `python3` subprocesses with no isolation at
the same width, measured in the same run. Rounds alternate between contenders;
the table shows the median over rounds and the ratio to the bare baseline.

    python benchmarks/sandbox_throughput.py [--backends bwrap docker process] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: this file must not shadow the sandbox package

from sandbox import (  # noqa: E402
    Limits,
    Program,
    SandboxSettings,
    Verdict,
    make_sandbox,
    unavailable,
)
from sandbox.pool import default_python  # noqa: E402

PROGRAM = """\
import sys

numbers = [int(x) for x in sys.stdin.read().split()]
numbers.sort()
print(sum(x * x for x in numbers) % 1_000_003, numbers[len(numbers) // 2])
"""
STDIN = " ".join(str((i * 7919) % 10007) for i in range(2000))
EXPECTED = subprocess.run(
    [default_python(), "-c", PROGRAM], input=STDIN, capture_output=True, text=True, check=True
).stdout


async def bare_rate(python: str, runs: int, width: int) -> float:
    """Executions per second of `python3 main.py` subprocesses, `width` at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "main.py")
        script.write_text(PROGRAM)
        gate = asyncio.Semaphore(width)

        async def one() -> None:
            async with gate:
                proc = await asyncio.create_subprocess_exec(
                    python,
                    str(script),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=tmp,
                )
                out, _ = await proc.communicate(STDIN.encode())
                assert out.decode() == EXPECTED, out

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        return runs / (time.perf_counter() - start)


async def sandbox_rate(sandbox, runs: int) -> float:
    program = Program(command=["python3", "main.py"], files={"main.py": PROGRAM}, stdin=STDIN)
    start = time.perf_counter()
    records = await sandbox.run_many([program] * runs, Limits(wall_seconds=10))
    rate = runs / (time.perf_counter() - start)
    bad = [r for r in records if r.verdict != Verdict.ok or r.stdout != EXPECTED]
    assert not bad, bad[0]
    return rate


async def main(backends: list[str], rounds: int, runs: int, width: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    python = default_python()
    sandboxes = {}
    for name in backends:
        reason = unavailable(name, SandboxSettings(backend=name))
        if reason:
            print(f"skipping {name}: {reason}")
            continue
        sandboxes[name] = make_sandbox(name, workers=width)
        await sandboxes[name].start()
        await sandbox_rate(sandboxes[name], width)  # warm up
    rates: dict[str, list[float]] = {"bare python3": []} | {name: [] for name in sandboxes}
    ratios: dict[str, list[float]] = {name: [] for name in sandboxes}
    for _ in range(rounds):
        bare = await bare_rate(python, runs, width)
        rates["bare python3"].append(bare)
        for name, sandbox in sandboxes.items():
            rate = await sandbox_rate(sandbox, runs)
            rates[name].append(rate)
            ratios[name].append(rate / bare)
    for sandbox in sandboxes.values():
        await sandbox.close()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "?")
    print(f"\n{os.cpu_count()} cores ({cpu}), {platform.platform()}, interpreter {python}")
    print(f"{rounds} rounds x {runs} runs, {width} at a time; median over rounds\n")
    print("| contender | executions / s | ratio to bare python3 |")
    print("|---|---:|---:|")
    print(
        f"| bare python3 (no isolation) | {statistics.median(rates['bare python3']):.0f} | 1.00 |"
    )
    for name in sandboxes:
        med_rate, med_ratio = statistics.median(rates[name]), statistics.median(ratios[name])
        print(f"| {name} | {med_rate:.0f} | {med_ratio:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["bwrap", "docker", "process"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--width", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    asyncio.run(main(args.backends, args.rounds, args.runs, args.width))
