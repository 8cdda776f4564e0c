"""A 3-stage run killed (SIGKILL) at a random step of its second stage resumes to the same results; while
it runs, no second process may train it. It trains with timm's RandomResizedCrop, mixup and cutmix, so the
distilled stages replay stored teacher views (distill.teacher_outputs=auto → views): the resumed stage reads
the same store and draws the same views and partners, or its results would differ."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from tests.conftest import TINY, run_dir_of, summary_of
from tests.unit.test_data import write_image_folder

# teacher → assistant1 → student: three stages, four epochs each, on half the training set, augmented
ARGS = [*TINY, "trainer=cpu", "trainer.max_epochs=4", "pipeline=takd", "pipeline.assistants=[test_resnet]",
        "data.fraction=0.5", "latency.batches=[]", "augment=rrc", "augment.mixup_alpha=0.4", "augment.cutmix_alpha=1.0",
        "data.views=2"]  # fmt: skip
METRICS = ("name", "test_acc", "test_loss", "best_val_acc", "checkpoint")


def test_sigkill_at_a_random_step_of_the_second_stage_then_resume_equals_an_uninterrupted_run(tmp_path, kdcl_main):
    reference = kdcl_main(["train", *ARGS, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "kdcl.cli", "train", *ARGS, f"hydra.run.dir={run_dir}"]
    log = tmp_path / "killed.log"  # a file, not a pipe: a pipe nobody reads can fill up and stall the child
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    last = run_dir / "stages" / "01-assistant1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert last.is_file(), log.read_text()[-3000:]
    proc.send_signal(signal.SIGSTOP)  # held at epoch 2 while the checks below run (they take a while on a busy CPU)
    # while it trains, the run is its alone: a second trainer is refused (one line naming the holder),
    # reading it is not
    second = kdcl_main(["train", f"resume={run_dir}"], tmp_path)
    assert second.returncode == 2 and f"in use by another kdcl process (PID {proc.pid} on host" in second.stderr
    assert not list(run_dir.glob("environment-resume-*"))  # the refused process wrote nothing
    again = kdcl_main(["train", *ARGS, f"hydra.run.dir={run_dir}"], tmp_path)  # a new run into it: refused too
    assert again.returncode == 2 and f"in use by another kdcl process (PID {proc.pid} on host" in again.stderr
    assert kdcl_main(["eval", str(run_dir), "stage=teacher"], tmp_path).returncode == 0
    assert proc.poll() is None, log.read_text()[-3000:]
    first = last.stat().st_mtime_ns  # epoch 1 saved; time epoch 2 to learn how long an epoch takes here
    proc.send_signal(signal.SIGCONT)
    started = time.time()
    while last.stat().st_mtime_ns == first and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    epoch = time.time() - started
    delay = random.Random(7).uniform(0.0, 0.9 * epoch)  # a step of epoch 3 of 4 (seeded: a failure can be rerun)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = f"killed {delay:.2f}s after epoch 2 (epoch {epoch:.2f}s); its output:\n{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, killed
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["stages"]["teacher"]["status"] == "done", killed
    assert manifest["stages"]["assistant1"]["status"] == "running", killed
    assert "student" not in manifest["stages"]
    teacher_ckpt = run_dir / "stages/00-teacher/checkpoints/best.ckpt"
    teacher_mtime = teacher_ckpt.stat().st_mtime_ns

    resumed = kdcl_main(["train", f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert run_dir_of(resumed) == run_dir
    out = resumed.stdout
    assert "[teacher] already done" in out and "[teacher] epoch" not in out
    assert "[assistant1] epoch 1/4" not in out  # continued, not restarted
    if "[assistant1] epoch 4/4" not in log.read_text():  # killed before its last epoch (a busy CPU may be later)
        assert "[assistant1] epoch 4/4" in out
    assert "[assistant1] reused the shared store outputs/cache/views-" in out  # no second pass
    assert "[student] reused the shared store outputs/cache/views-" in out  # the reference run's (same cwd)
    assert teacher_ckpt.stat().st_mtime_ns == teacher_mtime  # a finished stage is never rewritten
    expected = [{k: s[k] for k in METRICS} for s in summary_of(tmp_path / "reference")["stages"]]
    got = [{k: s[k] for k in METRICS} for s in summary_of(run_dir)["stages"]]
    assert got == expected, killed


def test_a_run_with_relative_paths_resumes_and_evaluates_from_another_directory(tmp_path, kdcl_main):
    """`data.root=photos` and the default outputs/ are relative to where the run started; `resume=` and
    `kdcl eval` from anywhere else read them there (both refused the run before: 'photos' not found)."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_image_folder(project / "photos", per_class=8)
    elsewhere.mkdir()
    args = [*TINY, "trainer.max_epochs=1", "latency.batches=[]", "data=image_folder", "data.root=photos",
            "data.num_workers=0", "hydra.run.dir=run"]  # fmt: skip
    first = kdcl_main(["train", *args], project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = kdcl_main(["train", "resume=../project/run"], elsewhere)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming {project / 'run'} (from {project}, where it started" in again.stdout
    tested = kdcl_main(["eval", "../project/run"], elsewhere)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    recorded, evaluated = summary_of(project / "run")["stages"][-1], json.loads(tested.stdout.splitlines()[-1])
    # the same test images as the run's own test: the same accuracy and loss
    assert evaluated["test_acc"] == recorded["test_acc"]
    assert abs(evaluated["test_loss"] - recorded["test_loss"]) < 1e-4
