"""Wall time of one four-job sweep (seed=0,1,2,3) under three launch settings, side by side in one run:

  (a) Hydra's basic launcher: one job after another, each with torch's default threads (every core)
  (b) hydra/launcher=joblib: n_jobs = cores jobs at once, each with cores ÷ n_jobs threads (kdcl's share)
  (c) hydra/launcher=joblib speed.threads=<cores>: the same jobs at once, each with every core

Every job is the same small run (tiny teacher → tiny student on digits, CPU); each setting runs `--rounds`
times in a rotated order and the median wall time counts (from start to exit, interpreter start-up and
imports included, as a user waits). Prints a Markdown table and writes JSON.

    python scripts/bench_launchers.py --out bench_launchers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = ["teacher=tiny", "student=tiny", "trainer=cpu", "trainer.max_epochs=2", "latency.batches=[]",
       "progress_bar=none", "seed=0,1,2,3"]  # fmt: skip


def settings(cores: int) -> dict[str, list[str]]:
    return {
        "basic launcher (one job at a time, default threads)": [],
        f"joblib, {cores} jobs × 1 thread (kdcl's share: cores ÷ n_jobs)": ["hydra/launcher=joblib"],
        f"joblib, {cores} jobs × {cores} threads (speed.threads={cores})": [
            "hydra/launcher=joblib",
            f"speed.threads={cores}",
        ],
    }


def sweep_seconds(extra: list[str], workdir: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdcl", "train", "-m", *JOB, *extra], cwd=workdir,
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep {extra} failed: {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_launchers.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    named = settings(cores)
    times: dict[str, list[float]] = {name: [] for name in named}
    names = list(named)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(sweep_seconds(named[name], Path(tmp)))
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    base = statistics.median(times[names[0]])
    print(f"\n4 jobs ({' '.join(JOB)}), {cores} cores, {platform.processor() or platform.machine()}\n")
    print("| launch | wall time (s) | vs basic |\n|---|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.1f} | {median / base:.2f}× |")
    args.out.write_text(json.dumps({"job": JOB, "cores": cores, "seconds": times}, indent=2))


if __name__ == "__main__":
    main()
