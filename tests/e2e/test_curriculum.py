"""`kdcl train curriculum=...` end to end: pacing visible in TensorBoard, scores saved, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import LEARNED, TINY, in_process, run_dir_of, summary_of

# pinned to the CPU: compared exactly with a resumed copy and with tiny_run's stored teacher outputs
CURRICULUM = [*TINY, "trainer=cpu", "trainer.max_epochs=3", "curriculum=linear", "curriculum.start=0.25",
              "curriculum.full_at=0.6"]  # fmt: skip


def curriculum_args(tiny_run: Path) -> list[str]:
    """CURRICULUM with tiny_run's teacher (the one CURRICULUM would train: same model, data, seed and
    epochs), tested instead of trained again."""
    return [*CURRICULUM, f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}"]


@pytest.fixture(scope="module")
def curriculum_run(tiny_run, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("curriculum")
    proc = in_process(["train", *curriculum_args(tiny_run)], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[student] curriculum: scoring" in proc.stdout
    assert "[student] teacher outputs: one pass over" in proc.stdout  # the scoring pass fills the store
    return run_dir_of(proc)


def test_fraction_rises_from_start_to_one_in_tensorboard(curriculum_run):
    events = EventAccumulator(str(curriculum_run / "tensorboard" / "01-student"), size_guidance={"images": 4})
    events.Reload()
    fractions = [e.value for e in events.Scalars("curriculum/fraction")]
    assert fractions[0] == pytest.approx(0.25) and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False)) and len(set(fractions)) > 3
    difficulty = [e.value for e in events.Scalars("curriculum/batch_difficulty")]
    # easy batches first: the first batch is drawn from the easiest quarter (ceil(0.25·N) examples), whatever
    # the teacher's scores are on this machine
    scores = torch.load(curriculum_run / "stages/01-student/scores.pt", weights_only=True)["scores"]
    easiest = scores.sort().values[: math.ceil(0.25 * len(scores))]
    assert difficulty[0] <= float(easiest.max()) + 1e-6 and difficulty[0] >= float(easiest.min()) - 1e-6
    assert "curriculum/scores" in events.Tags()["histograms"]
    assert {"curriculum/easiest", "curriculum/hardest"} <= set(events.Tags()["images"])
    assert (
        "curriculum/fraction"
        not in EventAccumulator(str(curriculum_run / "tensorboard" / "00-teacher")).Reload().Tags()["scalars"]
    )


def test_scores_and_pacing_plot_are_saved_in_the_stage_directory(curriculum_run):
    stage = curriculum_run / "stages" / "01-student"
    saved = torch.load(stage / "scores.pt", weights_only=True)
    assert saved["scorer"] == "teacher_confidence" and saved["source"] == "final"
    assert len(saved["scores"]) == len(saved["labels"]) and float(saved["scores"].min()) >= 0
    assert (stage / "pacing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scoring_pass_stores_the_logits_training_would_have_stored(curriculum_run, tiny_run):
    # the curriculum's pass before training (batches of data.eval_batch_size, in dataset order) and a
    # plain stage's first epoch (training batches, shuffled) store the same teacher's logits
    # (both from tiny_run's teacher)
    by_pass = torch.load(curriculum_run / "stages/01-student/teacher_logits.pt", weights_only=True)
    by_training = torch.load(tiny_run / "stages/01-student/teacher_logits.pt", weights_only=True)
    assert by_pass["filled"].all() and by_training["filled"].all()
    torch.testing.assert_close(by_pass["logits"], by_training["logits"], rtol=1e-5, atol=1e-4)  # other batch sizes


def test_a_killed_curriculum_stage_resumes_to_identical_metrics(curriculum_run, tiny_run, tmp_path, kdcl_main):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "kdcl.cli", "train", *curriculum_args(tiny_run), f"hydra.run.dir={run_dir}"]
    log = tmp_path / "killed.log"  # a file, not a pipe: a pipe nobody reads can fill up and stall the child
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    last = run_dir / "stages" / "01-student" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["stages"]["student"]["status"] == "running", log.read_text()[-3000:]
    resumed = kdcl_main(["train", f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[student] curriculum: scoring" not in resumed.stdout  # the saved scores are read back
    want, got = summary_of(curriculum_run)["stages"], summary_of(run_dir)["stages"]
    for key in ("test_acc", "test_loss", "best_val_acc"):
        assert [s[key] for s in got] == [s[key] for s in want], key


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory):
    """One sweep, two jobs: curriculum scores from the teacher's early checkpoint (job 0) and from
    out-of-fold teachers (job 1). Returns (the sweep's process, {source: job directory})."""
    cwd = tmp_path_factory.mktemp("sources")
    args = [*TINY, "trainer=cpu", "curriculum=linear", "curriculum.early_epoch=1", "curriculum.folds=2",
            "curriculum.fold_epochs=1", "latency.batches=[]"]  # fmt: skip
    proc = in_process(["train", "-m", *args, "curriculum.source=early,folds", f"hydra.sweep.dir={cwd / 'sweep'}"], cwd)
    return proc, {"early": cwd / "sweep" / "0", "folds": cwd / "sweep" / "1"}


def finished_with_scores(proc, run_dir: Path, source: str) -> torch.Tensor:
    assert (run_dir / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    student = summary_of(run_dir)["stages"][1]
    assert student["test_acc"] > LEARNED  # two curriculum epochs
    (scores_file,) = run_dir.glob("stages/*-student/scores.pt")  # out-of-fold stages come before the student
    saved = torch.load(scores_file, weights_only=True)
    assert saved["source"] == source and saved["scorer"] == "teacher_confidence"
    assert len(saved["scores"]) == len(saved["labels"]) == 1293  # every training example scored
    return saved["scores"]


def test_source_early_scores_with_the_teachers_checkpoint_after_early_epoch(source_runs):
    proc, runs = source_runs
    finished_with_scores(proc, runs["early"], "early")
    early = runs["early"] / "stages/00-teacher/checkpoints/epoch-1.ckpt"  # the plan's `teacher@1` reference
    final = runs["early"] / "stages/00-teacher/checkpoints/last.ckpt"
    steps = [torch.load(p, weights_only=True)["global_step"] for p in (early, final)]
    assert steps[0] > 0 and 2 * steps[0] == steps[1]  # saved after the first of two epochs


def test_source_folds_trains_out_of_fold_teachers_that_score_harder(source_runs, curriculum_run):
    proc, runs = source_runs
    scores = finished_with_scores(proc, runs["folds"], "folds")
    for fold in (1, 2):  # the plan's out-of-fold stages, trained like any stage before the student's
        assert f"[student_fold{fold}] training test_resnet for 1 epochs" in proc.stdout
        fold_result = json.loads((runs["folds"] / f"stages/0{fold}-student_fold{fold}/metrics.json").read_text())
        assert fold_result["trained"] and fold_result["teachers"] == []
    assert [s["name"] for s in summary_of(runs["folds"])["stages"]] == ["teacher", "student"]
    # a teacher that trained on the examples it scores calls nearly everything easy; teachers that never
    # saw them do not (curriculum_run: the final teacher's scores of the same examples)
    final = torch.load(curriculum_run / "stages/01-student/scores.pt", weights_only=True)["scores"]
    assert scores.mean() > final.mean()
