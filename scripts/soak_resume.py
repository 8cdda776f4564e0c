"""Soak test of exact resume: SIGKILL a 3-stage run at random moments, resume it each time, and compare
its final summary with an uninterrupted run of the same config.

    python scripts/soak_resume.py [--kills 10] [--seed 0] [--workdir DIR]

Each kill is its own trial: a fresh run is killed at a moment drawn uniformly over an uninterrupted
run's duration — so a kill can land anywhere: in start-up, in the curriculum's scoring or the
teacher-output pass, mid-epoch, inside a checkpoint write, between stages — then resumed until it
ends, and its summary compared with the uninterrupted run's. Run it on an otherwise idle machine (it
runs one kdcl process at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# teacher → assistant → student with a curriculum (a scoring pass and a teacher-output pass per stage)
ARGS = ["teacher=tiny", "student=tiny", "trainer=cpu", "trainer.max_epochs=4", "pipeline=takd",
        "pipeline.assistants=[test_resnet]", "curriculum=linear",
        "latency.batches=[]", "progress_bar=lines"]  # fmt: skip
METRICS = ("name", "test_acc", "test_loss", "best_val_acc", "checkpoint", "epochs")


def kdcl(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe: nobody reads a pipe while the run trains
        return subprocess.Popen([sys.executable, "-m", "kdcl.cli", "train", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def results(run_dir: Path) -> list[dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{k: s.get(k) for k in METRICS} for s in summary["stages"]]


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1][:90] if lines else "(nothing printed yet: start-up)"


def trial(run_dir: Path, delay: float, workdir: Path, expected: list[dict]) -> dict:
    """Start a run, SIGKILL it after `delay` seconds, resume it to the end, compare with `expected`."""
    log = workdir / f"{run_dir.name}.log"
    proc = kdcl([*ARGS, f"hydra.run.dir={run_dir}"], log)
    try:
        proc.wait(timeout=delay)  # it finished before the kill was due
        killed_during = "(finished before the kill)"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_during = last_line(log)
    # killed before it claimed its directory (no run.json): nothing to resume, the same command starts it
    again = [f"resume={run_dir}"] if (run_dir / "run.json").is_file() else [*ARGS, f"hydra.run.dir={run_dir}"]
    resumed = kdcl(again, workdir / f"{run_dir.name}-resumed.log").wait()
    same = resumed == 0 and results(run_dir) == expected
    leftovers = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]
    return {"killed_after_s": round(delay, 2), "killed_during": killed_during, "resume_exit": resumed,
            "identical": same, "temporary_files_left": leftovers}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kdcl-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    reference = kdcl([*ARGS, f"hydra.run.dir={workdir / 'reference'}"], workdir / "reference.log")
    if reference.wait() != 0:
        sys.exit(f"the uninterrupted run failed; see {workdir / 'reference.log'}")
    duration = time.perf_counter() - started
    print(f"uninterrupted run: {duration:.1f}s", flush=True)
    expected = results(workdir / "reference")
    rng = random.Random(args.seed)
    trials = []
    for i in range(args.kills):
        trials.append(trial(workdir / f"killed-{i}", rng.uniform(0.0, duration), workdir, expected))
        t = trials[-1]
        print(f"kill {i + 1}/{args.kills} after {t['killed_after_s']:5.1f}s during: {t['killed_during'][:70]:<70} "
              f"→ {'identical' if t['identical'] else 'DIFFERENT'}", flush=True)  # fmt: skip
    same = sum(t["identical"] for t in trials)
    report = {"kills": args.kills, "seed": args.seed, "uninterrupted_s": round(duration, 1), "expected": expected,
              "trials": trials, "identical": same}  # fmt: skip
    (workdir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{same}/{args.kills} killed-and-resumed runs ended identical to the uninterrupted run; {workdir / 'soak.json'}"
    )
    sys.exit(0 if same == args.kills else 1)


if __name__ == "__main__":
    main()
