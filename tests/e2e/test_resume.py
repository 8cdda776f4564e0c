"""A run killed (SIGKILL) during its second stage resumes where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import TINY, run_dir_of, run_kdcl, summary_of


def test_sigkill_in_the_student_stage_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "kdcl.cli", "train", *TINY, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    last = run_dir / "stages" / "01-student" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-stage: the student has finished one or more of its 4 epochs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["stages"]["teacher"]["status"] == "done"
    assert manifest["stages"]["student"]["status"] == "running"
    teacher_ckpt = run_dir / "stages/00-teacher/checkpoints/best.ckpt"
    teacher_mtime = teacher_ckpt.stat().st_mtime_ns

    resumed = run_kdcl(["train", f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert run_dir_of(resumed) == run_dir
    out = resumed.stdout
    assert "[teacher] already done" in out
    assert "[student] epoch 1/4" not in out and "[student] epoch 4/4" in out  # continued, not restarted
    assert teacher_ckpt.stat().st_mtime_ns == teacher_mtime
    stages = summary_of(run_dir)["stages"]
    assert [s["name"] for s in stages] == ["teacher", "student"] and stages[1]["test_acc"] > 0.5
