"""MLflow and W&B through Lightning's loggers, with TensorBoard, in one tiny run (`logger=[...]`)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import TINY, in_process, run_dir_of, summary_of

pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'kdcl[mlflow]'")
pytest.importorskip("wandb", reason="the wandb extra: pip install 'kdcl[wandb]'")

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "latency.batches=[]"]  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tiny_run, tmp_path_factory):
    """(run directory, MLflow tracking URI): a student trained briefly from tiny_run's teacher, logged to
    TensorBoard, MLflow (SQLite under outputs/) and W&B (offline), W&B's files kept in the test's folder."""
    cwd = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as patch:
        for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
            patch.setenv(var, str(cwd / "wandb-home" / sub))
        patch.setenv("WANDB_MODE", "offline")  # Lightning sets it for an offline logger: restored afterwards
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("WANDB_API_KEY", raising=False)
        proc = in_process(["train", *TINY, *SHORT, "logger=[tensorboard,mlflow,wandb]",
                           f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}"], cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir_of(proc), f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}"


def test_mlflow_search_runs_reads_back_the_run_its_stages_and_the_report_card(tracked, monkeypatch):
    import mlflow

    run_dir, uri = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=["kdcl"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1
    parent = parent.iloc[0]
    summary = summary_of(run_dir)
    student = summary["stages"][1]
    assert parent["metrics.student/test/acc"] == pytest.approx(student["test_acc"])
    assert parent["metrics.student/test/agreement"] == pytest.approx(student["agreement"])
    assert parent["metrics.student/test/ece"] == pytest.approx(student["ece"])
    assert parent["params.data.name"] == "digits" and parent["status"] == "FINISHED"
    stages = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]].set_index("tags.mlflow.runName")
    assert set(stages.index) == {"00-teacher", "01-student"}
    child = stages.loc["01-student"]  # the stage's own metrics and hyper-parameters
    assert child["metrics.student/test/acc"] == pytest.approx(student["test_acc"])
    assert child["metrics.student/val/acc"] > 0 and child["metrics.student/train/loss_epoch"] > 0
    assert child["params.stage"] == "student"
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(parent["run_id"])}
    assert {"summary.md", "summary.json", "reliability.png"} <= artifacts


def test_wandb_runs_offline_and_leaves_its_run_directory(tracked):
    run_dir, _ = tracked
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    # wandb keeps an offline run as protobuf records (read back by `wandb sync`, no Python reader): the
    # metric names are in it as text, and the report card's diagram is among the run's media files
    records = next(offline[0].glob("*.wandb")).read_bytes()
    for key in (b"student/train/loss_epoch", b"student/val/acc", b"student/test/acc_last", b"student/test/agreement"):
        assert key in records, key
    assert list((offline[0] / "files" / "media" / "images" / "report_card").glob("reliability*.png"))
    assert (run_dir / "tensorboard" / "01-student").is_dir()  # the loggers ran side by side


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, kdcl_main, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    proc = kdcl_main(["train", *TINY, "logger=[tensorboard,mlflow]"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip() == "error: logger.mlflow needs mlflow, which is not installed: pip install 'kdcl[mlflow]'"
    )
    assert not (tmp_path / "outputs").exists()
