"""Faults a long run meets: a diverging loss, a full disk, a torn checkpoint (a second process on one run:
tests/e2e/test_resume.py, while its run trains)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY, summary_of

SMALL = [*TINY, "trainer=cpu", "data.fraction=0.3", "report.latency_batches=[]"]
METRICS = ("name", "test_acc", "test_loss", "best_val_acc", "checkpoint")


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_diverging_stage_stops_with_exit_3_and_a_resume_with_a_lower_lr_finishes(tmp_path, kdcl_main):
    run = tmp_path / "run"
    failed = kdcl_main(["train", *TINY, "trainer=cpu", "report.latency_batches=[]", "optim.lr=1e4",
                        f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
    assert failed.returncode == 3, failed.stdout[-2000:] + failed.stderr[-2000:]
    (line,) = error_lines(failed.stderr)
    assert "[teacher] the training loss became nan at epoch 1, step" in line
    assert "optim.lr" in line and f"resume={run}" in line
    stages = manifest_of(run)["stages"]
    assert stages["teacher"]["status"] == "failed" and "became nan" in stages["teacher"]["reason"]
    assert "student" not in stages and not (run / "stages/01-student").exists()  # no later stage ran
    assert "[student]" not in failed.stdout

    resumed = kdcl_main(["train", f"resume={run}", "optim.lr=0.006"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = manifest_of(run)
    assert [s["status"] for s in manifest["stages"].values()] == ["done", "done"]
    (change,) = manifest["resumed_with_changes"]
    assert change["changes"] == {"optim.lr": {"from": 1e4, "to": 0.006}} and change["from_stage"] == "teacher"
    assert all(s["test_acc"] > 0.5 for s in summary_of(run)["stages"])  # both learned (chance: 0.1)


def test_resume_refuses_to_change_anything_but_the_remedies_for_divergence(tmp_path, tiny_run, kdcl_main):
    result = kdcl_main(["train", f"resume={tiny_run}", "data.batch_size=8"], tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "data.batch_size=8" in line and "optim.lr" in line


def test_a_torn_checkpoint_is_passed_over_and_the_stage_still_ends_as_an_uninterrupted_one(tmp_path, kdcl_main):
    run = tmp_path / "run"
    assert kdcl_main(["train", *SMALL, "trainer.max_epochs=3", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    expected = [{k: s[k] for k in METRICS} for s in summary_of(run)["stages"]]
    checkpoints = run / "stages/01-student/checkpoints"
    for torn, recovery in ((["last.ckpt"], "resumed from best.ckpt"), (["last.ckpt", "best.ckpt"], "stage restarted")):
        manifest = manifest_of(run)
        manifest["stages"]["student"] = {"status": "running"}  # as if killed while the student trained
        (run / "run.json").write_text(json.dumps(manifest))
        for name in torn:  # a copy cut short (what a non-atomic write or a kill mid-copy leaves)
            data = (checkpoints / name).read_bytes()
            (checkpoints / name).write_bytes(data[: len(data) // 2])
        result = kdcl_main(["train", f"resume={run}"], tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        said = manifest_of(run)["stages"]["student"]["result"]["recovery"]
        assert said.startswith("last.ckpt unreadable (") and said.endswith(recovery)
        assert f"[student] {said}" in result.stdout
        assert (checkpoints / "last.ckpt.unreadable").is_file()  # kept aside, not deleted
        assert [{k: s[k] for k in METRICS} for s in summary_of(run)["stages"]] == expected


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'})")


def test_a_full_disk_is_one_line_and_the_run_finishes_once_space_is_freed(tmp_path, kdcl_main):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "3m")  # room for the records, not for a checkpoint
    try:
        run = disk / "run"
        full = kdcl_main(["train", *SMALL, f"hydra.run.dir={run}"], tmp_path)
        assert full.returncode == 4, full.stdout[-2000:] + full.stderr[-2000:]
        (line,) = error_lines(full.stderr)
        assert "No space left on device" in line and str(run / "stages/00-teacher") in line, line
        assert f"resume={run}" in line
        assert manifest_of(run)["stages"]["teacher"]["status"] in ("failed", "running")
        assert not list(run.rglob("*.tmp"))  # no half-written file left behind

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        resumed = kdcl_main(["train", f"resume={run}"], tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        assert [s["status"] for s in manifest_of(run)["stages"].values()] == ["done", "done"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
