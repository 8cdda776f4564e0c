"""`kdcl train … --dry-run` against the real runs (docs/benchmarks.md, issue 27): for each command, the dry
run's time and disk estimates, then the real run's wall time (the whole `kdcl train` process) and bytes
(its run or sweep directory, and the shared cache it filled). One job at a time: never time two at once.

    python scripts/dry_run_check.py OUT_DIR     # about 15 minutes on a 2-core VM; writes OUT_DIR/dry_run_check.json

Commands: the default job; `pipeline=takd curriculum=linear curriculum.source=folds`; an augmented views
run; a 6-job sweep sharing the default run's teacher (as a given checkpoint). Each uses its own fresh
`paths.cache_dir`, so the dry run's "built here" is what the real run does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

DURATION = r"([\d.]+) (s|min|h)"
UNIT_S = {"s": 1, "min": 60, "h": 3600}
MB = 2**20


def kdcl(args: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Run `python -m kdcl ARGS` (this interpreter, this checkout); (wall seconds, stdout)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdcl", *args], cwd=cwd, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"kdcl {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - started, proc.stdout


def estimates(preview: str, sweep: bool) -> tuple[float, float, float]:
    """(seconds, run-directory bytes, cache bytes) the dry run printed."""
    if sweep:
        m = re.search(rf"one after another: ≈ {DURATION}, ([\d.]+) MB of run directories, ([\d.]+) MB added", preview)
        return float(m[1]) * UNIT_S[m[2]], float(m[3]) * MB, float(m[4]) * MB
    t = re.search(rf"time ≈ {DURATION}", preview)
    d = re.search(r"disk ≈ ([\d.]+) MB in the run directory .*?, ([\d.]+) MB added", preview)
    return float(t[1]) * UNIT_S[t[2]], float(d[1]) * MB, float(d[2]) * MB


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def compare(out: Path, name: str, args: list[str], sweep: bool = False) -> dict:
    cache, target = out / f"cache-{name}", out / f"runs-{name}"
    args = [*(["-m"] if sweep else []), *args, f"paths.cache_dir={cache}"]
    _, preview = kdcl(["train", "--dry-run", *args], out, out / f"{name}.dry-run.log")
    est_s, est_run, est_cache = estimates(preview, sweep)
    where = f"hydra.sweep.dir={target}" if sweep else f"hydra.run.dir={target}"
    real_s, _ = kdcl(["train", *args, where], out, out / f"{name}.log")
    row = {"command": name, "args": " ".join(args), "time_est_s": round(est_s), "time_real_s": round(real_s, 1),
           "run_est_mb": round(est_run / MB, 1), "run_real_mb": round(size(target) / MB, 1),
           "cache_est_mb": round(est_cache / MB, 2), "cache_real_mb": round(size(cache) / MB, 2)}  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [compare(out, "default", [])]
    teacher = out / "runs-default/stages/00-teacher/checkpoints/best.ckpt"
    rows.append(compare(out, "takd-linear-folds", ["pipeline=takd", "curriculum=linear", "curriculum.source=folds"]))
    rows.append(compare(out, "augmented-views", ["data.augment=true", "distill.teacher_outputs=views"]))
    rows.append(compare(out, "sweep-6-jobs-one-teacher", [f"teacher.checkpoint={teacher}",
                        "distill.temperature=1,2,4", "optim.lr=0.003,0.006"], sweep=True))  # fmt: skip
    (out / "dry_run_check.json").write_text(json.dumps(rows, indent=1))
    print("| command | time est. | time real | real/est. | run dir est. | run dir real | cache est. | cache real |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['command']} | {r['time_est_s']} s | {r['time_real_s']:.0f} s | {r['time_real_s'] / r['time_est_s']:.2f} "
            f"| {r['run_est_mb']} MB | {r['run_real_mb']} MB | {r['cache_est_mb']} MB | {r['cache_real_mb']} MB |"
        )


if __name__ == "__main__":
    main()
