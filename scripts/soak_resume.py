"""Soak test of exact resume: SIGKILL a 3-stage run at random moments, resume it each time, and compare
its final summary with an uninterrupted run of the same config.

    python scripts/soak_resume.py [--kills 10] [--seed 0] [--workdir DIR]

The moments are drawn uniformly over an uninterrupted run's duration, so a kill can land anywhere: in
start-up, in the curriculum's scoring or the teacher-output pass, mid-epoch, inside a checkpoint write,
between stages. Run it on an otherwise idle machine (it runs one kdcl process at a time).
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
ARGS = ["teacher=tiny", "student=tiny", "trainer=cpu", "trainer.max_epochs=3", "pipeline=takd",
        "pipeline.assistants=[test_resnet]", "curriculum=linear", "data.fraction=0.5",
        "report.latency_batches=[]", "progress_bar=lines"]  # fmt: skip
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


def killed_run(run_dir: Path, kills: int, duration: float, rng: random.Random, workdir: Path) -> list[dict]:
    """Start the run, SIGKILL it `kills` times at random moments (resuming after each), then let it end."""
    events = []
    for attempt in range(kills + 1):
        log = workdir / f"attempt-{attempt}.log"
        args = [*ARGS, f"hydra.run.dir={run_dir}"] if attempt == 0 else [f"resume={run_dir}"]
        proc = kdcl(args, log)
        if attempt == kills:
            events.append({"attempt": attempt, "exit": proc.wait(), "last_output": last_line(log)})
            break
        delay = rng.uniform(0.0, duration)
        try:
            status = proc.wait(timeout=delay)  # it finished before the kill was due
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            status = proc.wait()
        events.append({"attempt": attempt, "killed_after_s": round(delay, 2), "exit": status,
                       "last_output": last_line(log)})  # fmt: skip
        print(f"kill {attempt + 1}/{kills} after {delay:5.1f}s: {events[-1]['last_output']}", flush=True)
    return events


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
    events = killed_run(workdir / "killed", args.kills, duration, random.Random(args.seed), workdir)
    expected, got = results(workdir / "reference"), results(workdir / "killed")
    leftovers = sorted(str(p.relative_to(workdir)) for p in (workdir / "killed").rglob("*.tmp"))
    verdict = "identical" if got == expected and events[-1]["exit"] == 0 else "DIFFERENT"
    report = {"kills": args.kills, "seed": args.seed, "uninterrupted_s": round(duration, 1), "events": events,
              "final_summary": verdict, "expected": expected, "got": got, "temporary_files_left": leftovers}  # fmt: skip
    (workdir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"final summary after {args.kills} kills: {verdict}; temporary files left: {len(leftovers)}; {workdir / 'soak.json'}")
    sys.exit(0 if verdict == "identical" else 1)


if __name__ == "__main__":
    main()
