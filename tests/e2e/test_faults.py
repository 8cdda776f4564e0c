"""Faults a long run meets: a diverging loss, a full disk, a torn checkpoint (a second process on one run:
tests/e2e/test_resume.py, while its run trains)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import types
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from kdcl.common import io as kdcl_io
from kdcl.run import stage as stage_module
from tests.conftest import LEARNED, TINY, summary_of

SMALL = [*TINY, "trainer=cpu", "data.fraction=0.3", "latency.batches=[]"]
METRICS = ("name", "test_acc", "test_loss", "best_val_acc", "checkpoint")


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_diverging_stage_stops_with_exit_3_and_a_resume_with_a_lower_lr_finishes(tmp_path, kdcl_main):
    run = tmp_path / "run"
    failed = kdcl_main(["train", *TINY, "trainer=cpu", "latency.batches=[]", "optim.lr=1e4",
                        f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
    assert failed.returncode == 3, failed.stdout[-2000:] + failed.stderr[-2000:]
    (line,) = error_lines(failed.stderr)
    # nan or ±inf: which one an overflow gives first depends on the CPU's arithmetic
    assert re.search(r"\[teacher\] the training loss became (nan|inf|-inf) at epoch 1, step \d+", line), line
    assert "optim.lr" in line and f"resume={run}" in line
    stages = manifest_of(run)["stages"]
    assert stages["teacher"]["status"] == "failed" and "became " in stages["teacher"]["reason"]
    assert "student" not in stages and not (run / "stages/01-student").exists()  # no later stage ran
    assert "[student]" not in failed.stdout

    resumed = kdcl_main(["train", f"resume={run}", "optim.lr=0.006"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = manifest_of(run)
    assert [s["status"] for s in manifest["stages"].values()] == ["done", "done"]
    (change,) = manifest["resumed_with_changes"]
    assert change["changes"] == {"optim.lr": {"from": 1e4, "to": 0.006}} and change["from_stage"] == "teacher"
    assert all(s["test_acc"] > LEARNED for s in summary_of(run)["stages"])  # both learned


def test_resume_refuses_to_change_anything_but_the_remedies_for_divergence(tmp_path, tiny_run, kdcl_main):
    result = kdcl_main(["train", f"resume={tiny_run}", "data.batch_size=8"], tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "data.batch_size=8" in line and "optim.lr" in line


class ScriptedValAcc(pl.Callback):
    """Sets the student's validation accuracy after each epoch, before ModelCheckpoint reads it (Lightning runs
    checkpoint callbacks last): which epoch is best is the test's choice, not one CPU's training trajectory."""

    def __init__(self, values: list[float]):
        self.values = values

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.callback_metrics["student/val/acc"] = torch.tensor(self.values[trainer.current_epoch])


def script_student_val_acc(monkeypatch, values: list[float]) -> None:
    original = stage_module.stage_callbacks

    def with_script(ctx, stage):
        best, callbacks = original(ctx, stage)
        return best, [*callbacks, ScriptedValAcc(values)] if stage.name == "student" else callbacks

    monkeypatch.setattr(stage_module, "stage_callbacks", with_script)


def training_state(path: Path) -> tuple:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # raises if unreadable
    return checkpoint["epoch"], checkpoint["global_step"], checkpoint["state_dict"]


@pytest.mark.parametrize(
    ("val_acc", "first_recovery"),
    [
        ([0.5, 0.9, 0.7], "resumed from best.ckpt"),  # best (epoch 2) < last: epoch 3 is trained again
        ([0.5, 0.7, 0.9], "resumed from best.ckpt; best.ckpt was at the stage's end: copied to last.ckpt"),
    ],
    ids=["best-before-last", "best-is-last"],
)
def test_a_torn_checkpoint_is_passed_over_and_the_stage_still_ends_as_an_uninterrupted_one(
    tmp_path, kdcl_main, monkeypatch, val_acc, first_recovery
):
    script_student_val_acc(monkeypatch, val_acc)
    run = tmp_path / "run"  # the student alone (pipeline=baseline): a torn checkpoint needs no teacher
    # checkpoint.keep=resumable: the finished stage is then handled as if killed, so it must still be resumable
    args = ["train", *SMALL, "pipeline=baseline", "trainer.max_epochs=3", "checkpoint.keep=resumable",
            f"hydra.run.dir={run}"]  # fmt: skip
    assert kdcl_main(args, tmp_path).returncode == 0
    expected = [{k: s[k] for k in METRICS} for s in summary_of(run)["stages"]]
    checkpoints = run / "stages/00-student/checkpoints"
    best_epoch = val_acc.index(max(val_acc))
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == best_epoch  # the situation built
    epoch, step, weights = training_state(checkpoints / "last.ckpt")
    assert epoch == 2
    for torn, recovery in ((["last.ckpt"], first_recovery), (["last.ckpt", "best.ckpt"], "stage restarted")):
        manifest = manifest_of(run)
        manifest["stages"]["student"] = {"status": "running"}  # as if killed while the student trained
        (run / "run.json").write_text(json.dumps(manifest))
        for name in torn:  # a copy cut short (what a non-atomic write or a kill mid-copy leaves)
            data = (checkpoints / name).read_bytes()
            (checkpoints / name).write_bytes(data[: len(data) // 2])
        result = kdcl_main(["train", f"resume={run}"], tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        said = manifest_of(run)["stages"]["student"]["result"]["recovery"]
        assert said.startswith("last.ckpt unreadable (") and said.endswith(recovery), said
        assert f"[student] {said.split('; ')[0]}" in result.stdout
        assert (checkpoints / "last.ckpt.unreadable").is_file()  # kept aside, not deleted
        assert [{k: s[k] for k in METRICS} for s in summary_of(run)["stages"]] == expected
        # a readable last.ckpt of the final epoch, the same model as the uninterrupted run's
        again_epoch, again_step, again_weights = training_state(checkpoints / "last.ckpt")
        assert (again_epoch, again_step) == (epoch, step)
        assert again_weights.keys() == weights.keys()
        assert all(torch.equal(again_weights[k], weights[k]) for k in weights)


def test_a_moved_run_directory_resumes_as_if_it_had_stayed(tmp_path, kdcl_main):
    run = tmp_path / "run"  # the student alone; its stage is then handled as if killed: it must stay resumable
    args = ["train", *SMALL, "pipeline=baseline", "checkpoint.keep=resumable", f"hydra.run.dir={run}"]
    assert kdcl_main(args, tmp_path).returncode == 0
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)  # a run copied to another disk, or its folder renamed
    manifest = manifest_of(moved)
    manifest["stages"]["student"] = {"status": "running"}  # as if killed while the student trained
    (moved / "run.json").write_text(json.dumps(manifest))
    result = kdcl_main(["train", f"resume={moved}"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "[student] epoch" not in result.stdout  # continued from its last checkpoint (at the end), not restarted
    # the best score and the chosen checkpoint are the moved run's own, not lost or left in the old folder
    assert [{k: s[k] for k in METRICS} for s in summary_of(moved)["stages"]] == [
        {k: s[k] for k in METRICS} for s in summary_of(run)["stages"]
    ]


class NoRoomFile:
    """A file on a disk with room for the run's records but not for a checkpoint: writing past ROOM bytes
    fails as the kernel fails it, with ENOSPC (what a full disk gives)."""

    ROOM = 1_000_000

    def __init__(self, file):
        self.file, self.written = file, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.ROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def fill_the_disk(monkeypatch) -> None:
    """kdcl's writer (every checkpoint, record and store goes through it) on a full disk, in this process:
    no root and no tmpfs needed, so the test runs on any machine."""
    full_os = types.ModuleType("os")
    full_os.__dict__.update(os.__dict__)
    full_os.fdopen = lambda fd, *args, **kwargs: NoRoomFile(os.fdopen(fd, *args, **kwargs))
    monkeypatch.setattr(kdcl_io, "os", full_os)


def test_a_full_disk_is_one_line_and_the_run_finishes_once_space_is_freed(tmp_path, kdcl_main, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as disk:
        fill_the_disk(disk)
        full = kdcl_main(["train", *SMALL, f"hydra.run.dir={run}"], tmp_path)
    assert full.returncode == 4, full.stdout[-2000:] + full.stderr[-2000:]
    (line,) = error_lines(full.stderr)
    assert "No space left on device" in line and str(run / "stages/00-teacher") in line, line
    assert f"resume={run}" in line
    assert manifest_of(run)["stages"]["teacher"]["status"] in ("failed", "running")
    assert not list(run.rglob("*.tmp"))  # no half-written file left behind

    resumed = kdcl_main(["train", f"resume={run}"], tmp_path)  # space freed
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert [s["status"] for s in manifest_of(run)["stages"].values()] == ["done", "done"]
