"""Options with a path of their own, end to end: a reused teacher checkpoint, the CSV logger, SGD with a
cosine schedule, augmentation through the DataLoader path, and the self-paced (student_loss) curriculum."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import LEARNED, TINY, in_process, run_dir_of, summary_of


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def column(table: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in table if r.get(key)]


@pytest.fixture(scope="module")
def reused_teacher(tiny_run, tmp_path_factory):
    """(process, run directory, the teacher checkpoint it reused): tiny_run's teacher, the CSV logger
    instead of TensorBoard, SGD with cosine annealing."""
    cwd = tmp_path_factory.mktemp("reused")
    ckpt = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    # checkpoint.keep=resumable: the test reads the finished student's optimizer and scheduler state
    proc = in_process(["train", *TINY, "trainer=cpu", f"teacher.checkpoint={ckpt}", "logger=csv", "optim=sgd",
                     "optim.scheduler=cosine", "latency.batches=[]", "checkpoint.keep=resumable"], cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run_dir_of(proc), ckpt


def test_a_teacher_checkpoint_is_tested_not_trained(reused_teacher, tiny_run):
    proc, run_dir, ckpt = reused_teacher
    teacher, student = summary_of(run_dir)["stages"]
    assert "[teacher] testing test_resnet" in proc.stdout and "[teacher] epoch" not in proc.stdout
    assert teacher["epochs"] == 0 and not (run_dir / "stages/00-teacher/checkpoints").exists()
    # the very weights of tiny_run's teacher: the same test accuracy, and the student learned from them
    assert teacher["test_acc"] == summary_of(tiny_run)["stages"][0]["test_acc"]
    assert Path(teacher["checkpoint"]) == ckpt.resolve() and student["teachers"] == ["teacher"]
    assert student["test_acc"] > LEARNED


def test_csv_logger_writes_each_stages_metrics(reused_teacher):
    _, run_dir, _ = reused_teacher
    assert not (run_dir / "tensorboard").exists()
    teacher = rows(run_dir / "csv/00-teacher/metrics.csv")
    assert column(teacher, "teacher/test/acc") == [pytest.approx(summary_of(run_dir)["stages"][0]["test_acc"])]
    student = rows(run_dir / "csv/01-student/metrics.csv")
    assert len(column(student, "student/val/acc")) == 2  # one validation point per epoch
    assert column(student, "student/train/loss_kd_epoch") and column(student, "student/test/acc")


def test_sgd_with_cosine_annealing_follows_the_cosine_from_lr_to_zero(reused_teacher):
    _, run_dir, _ = reused_teacher
    ckpt = torch.load(run_dir / "stages/01-student/checkpoints/last.ckpt", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["nesterov"] and group["momentum"] == 0.9  # SGD with Nesterov momentum
    total = ckpt["lr_schedulers"][0]["T_max"]  # CosineAnnealingLR over the stage's steps
    assert total == ckpt["global_step"] == 2 * 21  # two epochs of ceil(1293 / 64) batches
    logged = [(int(r["step"]), float(r["student/lr"])) for r in rows(run_dir / "csv/01-student/metrics.csv")
              if r.get("student/lr")]  # fmt: skip
    assert len(logged) >= 3
    for step, lr in logged:  # optim.lr=0.05 annealed to 0 along half a cosine
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * step / total)) / 2), step


def test_augmentation_through_the_dataloader_with_a_self_paced_curriculum(tmp_path, kdcl_main):
    # data.on_device=false: batches come from a DataLoader (random crops made per example there), ordered
    # by the curriculum's batch sampler; scorer=student_loss: the student itself scores the examples;
    # teacher_outputs=online: the teacher runs on every augmented batch (auto would store teacher views)
    proc = kdcl_main(["train", *TINY, "data.augment=true", "data.on_device=false", "distill.teacher_outputs=online",
                     "curriculum=linear", "curriculum.scorer=student_loss", "latency.batches=[]"],
                     tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    teacher, student = summary_of(run_dir)["stages"]
    assert teacher["test_acc"] > LEARNED and student["test_acc"] > LEARNED
    stage = run_dir / "stages/01-student"
    hparams = torch.load(stage / "checkpoints/last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["teacher_outputs"] == "online" and student.get("teacher_store") is None
    assert "teacher views" not in proc.stdout and not (stage / "teacher_logits.pt").exists()
    saved = torch.load(stage / "scores.pt", weights_only=True)
    assert saved["scorer"] == "student_loss" and len(saved["scores"]) == 1293
    assert "[student] curriculum: scoring 1293 examples (student_loss" in proc.stdout
