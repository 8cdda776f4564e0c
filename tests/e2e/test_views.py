"""Stored teacher views end to end: a sweep with augmentation runs the teacher's view pass and its test
once for all jobs (the log says which job built and which reused), records the store in the summary
and TensorBoard, a changed K builds a new store, and `kdcl cache list|clear` shows and frees them."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import SEED, TINY, run_dir_of, summary_of

SHORT = ["trainer=cpu", "trainer.limit_train_batches=4", "latency.batches=[]", "data.augment=true",
         "distill.teacher_outputs=views"]  # fmt: skip


def stage_of(run_dir, name: str) -> dict:
    return next(s for s in summary_of(run_dir)["stages"] if s["name"] == name)


def test_a_sweep_with_augmentation_shares_one_view_pass_and_one_teacher_test(tiny_run, tmp_path, kdcl_main):
    teacher = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    sweep = ["train", "-m", *TINY, *SHORT, f"teacher.checkpoint={teacher}", "data.views=2", "distill.temperature=2,4",
             f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    result = kdcl_main(sweep, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for kind in ("views", "test"):  # the view pass, the teacher's test (its report card reads the test's logits)
        assert out.count(f"built the shared store outputs/cache/{kind}-") == 1, out[-3000:]
        assert out.count(f"reused the shared store outputs/cache/{kind}-") == 1, out[-3000:]
    assert "outputs/cache/predictions-" not in out  # no second pass of the teacher over the test set
    assert f"built by {tmp_path / 'sweep' / '0'} (host" in out  # the second job names the one that built it
    first, second = stage_of(tmp_path / "sweep/0", "student"), stage_of(tmp_path / "sweep/1", "student")
    assert first["teacher_store"]["built"] and not second["teacher_store"]["built"]
    assert first["teacher_store"]["stores"][0]["file"] == second["teacher_store"]["stores"][0]["file"]
    assert first["teacher_store"]["size_mb"] > 0 and first["teacher_store"]["pass_s"] > 0
    assert second["teacher_store"]["pass_s"] == 0 and second["teacher_store"]["views"] == 2
    # the job's time line puts the view pass under the student's "teacher outputs", not in "prepare"
    timing = summary_of(tmp_path / "sweep/0")["timing"]["stages"]["student"]
    assert timing["teacher outputs"] >= first["teacher_store"]["pass_s"] - 0.01 > 0
    assert stage_of(tmp_path / "sweep/1", "teacher")["test_reused"].startswith("test-test_resnet-")
    assert stage_of(tmp_path / "sweep/1", "teacher")["test_acc"] == summary_of(tiny_run)["stages"][0]["test_acc"]
    events = EventAccumulator(str(tmp_path / "sweep/0/tensorboard/01-student")).Reload()
    assert events.Scalars("student/teacher_store/size_mb")[0].value > 0

    # another K is another store: built, not the old one read; never more views than the stage has epochs
    single = kdcl_main(["train", *TINY, *SHORT, f"teacher.checkpoint={teacher}", "data.views=5",
                        "trainer.max_epochs=3"], tmp_path)  # fmt: skip
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert stage_of(run_dir_of(single), "student")["teacher_store"]["views"] == 3
    assert "built the shared store outputs/cache/views-" in single.stdout
    assert "reused the shared store outputs/cache/test-" in single.stdout

    listed = kdcl_main(["cache", "list"], tmp_path)
    assert listed.returncode == 0 and "outputs/cache: 3 shared stores" in listed.stdout, listed.stdout
    assert f"views digits K=2 seed={SEED}" in listed.stdout and f"views digits K=3 seed={SEED}" in listed.stdout
    cleared = kdcl_main(["cache", "clear", "outputs/cache"], tmp_path)
    assert cleared.returncode == 0 and "removed 3 shared stores" in cleared.stdout
    assert not list((tmp_path / "outputs/cache").iterdir())
    assert kdcl_main(["cache", "list"], tmp_path).stdout.strip() == "outputs/cache: no shared stores"
    assert json.loads((tmp_path / "sweep/0/run.json").read_text())["stages"]["student"]["status"] == "done"
