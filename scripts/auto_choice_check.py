"""Does `distill.teacher_outputs=auto` pick the fastest way to read the teacher? Checked on a folder of JPEGs.

The case of issue 28: a user's folder of 3 000 JPEGs at 224 px, the `image_folder` defaults (augmentation on:
random crop with padding and flip; ResNet-18 teacher trained in the job, MobileNetV3 student), read at
`data.image_size=96`. For each student budget (2 and 20 epochs), the job runs once with `auto`, then once
forcing each other mode that is exact with augmentation (`online`, `views`). The teacher trains 1 epoch in
every run (its time is not compared); then, at the smallest budget, the first job's teacher is given as a
checkpoint (`teacher.checkpoint=`), as the jobs of a sweep share one. Compared: the student stage's wall time (its teacher pass before
training, under "teacher outputs", training, test, latency), from summary.json's `timing`. One job at a time.

The folder is made here: 10 classes, each a smooth random colour pattern, each image a shifted noisy copy
(learnable, and decoded from JPEG like a user's photos).

    python scripts/auto_choice_check.py OUT [--epochs 2 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES, PER_CLASS, SIZE = 10, 300, 224
MODES = ("online", "views")  # exact with augmentation; `cached` would pair one logit with every random view


def make_folder(root: Path) -> Path:
    """CLASSES × PER_CLASS JPEGs at SIZE px in class sub-folders (seeded: the same files on every machine)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == CLASSES * PER_CLASS:
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        freq, phase = rng.uniform(1, 6, (3, 2)), rng.uniform(0, 2 * np.pi, (3, 2))
        base = np.stack([np.sin(2 * np.pi * freq[k, 0] * xx + phase[k, 0]) * np.cos(2 * np.pi * freq[k, 1] * yy + phase[k, 1])
                         for k in range(3)], -1)  # fmt: skip
        for i in range(PER_CLASS):
            dx, dy = rng.integers(-20, 21, 2)
            image = np.roll(base, (dy, dx), (0, 1)) + rng.normal(0, 0.6, base.shape)
            pixels = np.clip((image + 1.5) * 85, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:04d}.jpg", quality=90)
    return root


def run(folder: Path, out: Path, epochs: int, mode: str, teacher: Path | None) -> dict:
    """One job; the student stage's time, the mode it used and auto's reason (from its log)."""
    name = f"e{epochs}-{'given-' if teacher else ''}{mode}"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [str(Path(sys.executable).parent / "kdcl"), "train", "data=image_folder", f"data.root={folder}",
               "data.image_size=96", "pipeline.stages.teacher.epochs=1", f"pipeline.stages.student.epochs={epochs}",
               f"distill.teacher_outputs={mode}", f"paths.cache_dir={out / 'cache'}", f"hydra.run.dir={run_dir}",
               "progress_bar=lines", *([f"teacher.checkpoint={teacher}"] if teacher else [])]  # fmt: skip
    shutil.rmtree(out / "cache", ignore_errors=True)  # nothing reused from an earlier job
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    line = re.search(r"\[student\] teacher outputs: (\w+)(?: \(auto: (.*)\))?", proc.stdout)
    student = json.loads((run_dir / "summary.json").read_text())["timing"]["stages"]["student"]
    used = line.group(1) if line else mode
    return {"epochs": epochs, "teacher": "given" if teacher else "trained in the job", "asked": mode, "used": used,
            "why": (line.group(2) or "") if line else "", "stage_s": student["seconds"],
            "before_s": sum(v for k, v in student.items() if k not in ("seconds", "train", "test", "latency")),
            "teacher_outputs_s": student.get("teacher outputs", 0.0), "train_s": student.get("train", 0.0), "wall_s": wall,
            "run_dir": str(run_dir)}  # fmt: skip


def check(folder: Path, out: Path, epochs: int, teacher: Path | None = None) -> list[dict]:
    chosen = run(folder, out, epochs, "auto", teacher)
    rows = [chosen] + [run(folder, out, epochs, m, teacher) for m in MODES if m != chosen["used"]]
    fastest = min(r["stage_s"] for r in rows)
    for r in rows:
        r["vs_fastest"] = r["stage_s"] / fastest
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| teacher | student epochs | teacher outputs | student stage (s) | before training (s) | of which the "
             "teacher outputs (s) | training (s) | ÷ fastest | auto's reason |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        name = f"**{r['used']}** (auto)" if r["asked"] == "auto" else r["used"]
        lines.append(f"| {r['teacher']} | {r['epochs']} | {name} | {r['stage_s']:.1f} | {r['before_s']:.1f} "
                     f"| {r['teacher_outputs_s']:.1f} | {r['train_s']:.1f} | {r['vs_fastest']:.2f} | {r['why']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--no-given", dest="given", action="store_false",
                        help="skip the runs with the teacher given as a checkpoint (at the smallest budget)")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = make_folder(args.out / "images")
    rows = [r for e in args.epochs for r in check(folder, args.out, e)]
    if args.given:  # the first job's teacher, given as a checkpoint (as a sweep's jobs share one)
        teacher = Path(rows[0]["run_dir"]) / "stages" / "00-teacher" / "checkpoints" / "best.ckpt"
        rows += check(folder, args.out, min(args.epochs), teacher)
    (args.out / "auto_choice_check.json").write_text(json.dumps(rows, indent=1))
    print(f"{platform.processor() or platform.machine()}, {CLASSES * PER_CLASS} JPEGs at {SIZE} px")
    print(table(rows))


if __name__ == "__main__":
    main()
