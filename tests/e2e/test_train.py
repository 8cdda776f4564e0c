"""`kdcl train` end to end through the real CLI: outputs, TensorBoard, eval, determinism, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY, run_dir_of, run_kdcl, summary_of

METRICS = ("test_acc", "test_loss", "best_val_acc")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("tiny")
    proc = run_kdcl(["train", *TINY, "trainer.max_epochs=3"], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    assert run_dir.is_relative_to(cwd / "outputs" / "train")  # per-run directories under outputs/
    return run_dir


def test_summary_lists_every_stage_with_its_numbers(tiny_run):
    summary = summary_of(tiny_run)
    assert [s["name"] for s in summary["stages"]] == ["teacher", "student"]
    for stage, model in zip(summary["stages"], ["test_resnet", "test_efficientnet"], strict=True):
        assert stage["model"] == model
        assert isinstance(stage["params"], int) and stage["params"] > 1000
        assert 0.0 <= stage["test_acc"] <= 1.0
    teacher, student = summary["stages"]
    assert teacher["test_acc"] > 0.8 and student["test_acc"] > 0.7  # both learned (chance is 0.1)
    assert student["teachers"] == ["teacher"]
    assert (tiny_run / "summary.md").read_text().count("|") > 10


def test_each_stage_has_checkpoints_metrics_and_is_marked_done(tiny_run):
    manifest = json.loads((tiny_run / "run.json").read_text())
    for name in ("00-teacher", "01-student"):
        stage_dir = tiny_run / "stages" / name
        assert (stage_dir / "checkpoints" / "best.ckpt").is_file()
        assert (stage_dir / "checkpoints" / "last.ckpt").is_file()
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        assert manifest["stages"][metrics["name"]]["status"] == "done"
    for f in ("config.yaml", "environment.json", ".hydra/config.yaml"):
        assert (tiny_run / f).is_file(), f


def test_student_checkpoint_holds_the_student_only(tiny_run):
    ckpt = torch.load(tiny_run / "stages/01-student/checkpoints/best.ckpt", weights_only=True, map_location="cpu")
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("model.") for k in keys)
    n = sum(v.numel() for k, v in ckpt["state_dict"].items() if "running_" not in k and "num_batches" not in k)
    assert n == summary_of(tiny_run)["stages"][1]["params"]  # no teacher weights inside
    assert isinstance(ckpt["hyper_parameters"], dict) and ckpt["hyper_parameters"]["teachers"] == ["teacher"]


def test_tensorboard_holds_losses_accuracies_lr_and_hparams(tiny_run):
    expected = {
        "00-teacher": [
            "teacher/train/loss_epoch",
            "teacher/train/acc",
            "teacher/val/loss",
            "teacher/val/acc",
            "teacher/lr",
            "teacher/test/acc",
        ],  # fmt: skip
        "01-student": [
            "student/train/loss_epoch",
            "student/train/loss_kd_epoch",
            "student/train/loss_ce_epoch",
            "student/train/acc",
            "student/val/loss",
            "student/val/acc",
            "student/lr",
        ],  # fmt: skip
    }
    for stage, tags in expected.items():
        found, hparams = set(), False
        for events in (tiny_run / "tensorboard" / stage).glob("events.out.tfevents.*"):
            acc = EventAccumulator(str(events), size_guidance={"tensors": 0, "scalars": 0})
            acc.Reload()
            found |= set(acc.Tags()["scalars"])
            try:
                hparams |= "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
            except KeyError:  # this event file holds no hparams summary
                pass
        assert set(tags) | {"hparams/test_acc"} <= found, sorted(found)
        assert hparams, "the run's hyper-parameters must be in TensorBoard"
        acc_values = []
        for events in (tiny_run / "tensorboard" / stage).glob("events.out.tfevents.*"):
            acc = EventAccumulator(str(events))
            acc.Reload()
            if tags[3] in acc.Tags()["scalars"]:
                acc_values = [e.value for e in acc.Scalars(tags[3])]
        assert len(acc_values) == 3  # one validation point per epoch


def test_eval_reproduces_the_student_test_accuracy_exactly(tiny_run):
    proc = run_kdcl(["eval", str(tiny_run)], tiny_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    student = summary_of(tiny_run)["stages"][1]
    assert result["stage"] == "student" and result["test_acc"] == student["test_acc"]
    proc = run_kdcl(["eval", str(tiny_run), "stage=teacher"], tiny_run)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["test_acc"] == summary_of(tiny_run)["stages"][0]["test_acc"]


def test_same_seed_gives_identical_metrics_whether_teacher_outputs_are_cached_or_online(tiny_run, tmp_path):
    stored = torch.load(tiny_run / "stages/01-student/teacher_logits.pt", weights_only=True)
    assert stored["filled"].all()  # tiny_run (auto): the first epoch met and stored every example
    # A CPU's convolutions may round an example's logits differently (~1e-8) in a batch of another size,
    # and online KD computes each example in whatever batch it lands in. With equal batches (1293 training
    # images = 3 × 431) every teacher logit is computed the same way both ways, so the runs must agree.
    equal_batches = [*TINY, "trainer.max_epochs=3", "data.batch_size=431"]
    summaries = {}
    for mode in ("auto", "online"):
        (tmp_path / mode).mkdir()
        proc = run_kdcl(["train", *equal_batches, f"distill.teacher_outputs={mode}"], tmp_path / mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stored = run_dir_of(proc) / "stages/01-student/teacher_logits.pt"
        assert stored.exists() == (mode == "auto")
        summaries[mode] = summary_of(run_dir_of(proc))
    for first, second in zip(summaries["auto"]["stages"], summaries["online"]["stages"], strict=True):
        assert {k: first[k] for k in METRICS} == {k: second[k] for k in METRICS}


def test_resuming_a_finished_run_changes_nothing(tiny_run):
    before = (tiny_run / "summary.json").read_text()
    ckpt = tiny_run / "stages/01-student/checkpoints/best.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    proc = run_kdcl(["train", f"resume={tiny_run}"], tiny_run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete" in proc.stdout and "nothing to do" in proc.stdout
    assert (tiny_run / "summary.json").read_text() == before
    assert ckpt.stat().st_mtime_ns == mtime
    assert not list(tiny_run.glob("environment-resume-*"))


def test_multirun_gives_one_job_directory_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_kdcl(["train", "-m", *TINY, "trainer.max_epochs=1", "distill.temperature=2,4",
                     f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    temps = []
    for job in ("0", "1"):
        summary = summary_of(sweep / job)
        assert [s["name"] for s in summary["stages"]] == ["teacher", "student"]
        temps.append((sweep / job / "config.yaml").read_text().split("temperature: ")[1].split("\n")[0])
    assert [float(t) for t in temps] == [2, 4]


def test_gpu_switches_bf16_channels_last_and_compile_run_end_to_end(tmp_path):
    # the switches trainer=gpu sets, here on the CPU: a compiled, channels-last, bf16-mixed run trains,
    # tests, and saves checkpoints with the model's own keys (nn.Module.compile adds no _orig_mod prefix)
    proc = run_kdcl(["train", *TINY, "trainer.max_epochs=1", "trainer.precision=bf16-mixed",
                     "speed.channels_last=true", "speed.compile=true"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = run_dir_of(proc)
    assert [s["name"] for s in summary_of(run)["stages"]] == ["teacher", "student"]
    state = torch.load(run / "stages/01-student/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)
    evaluated = run_kdcl(["eval", str(run)], tmp_path)  # an uncompiled fp32 model loads those weights
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_ddp_ranks_share_the_teacher_outputs_they_store(tmp_path):
    # two CPU processes (gloo): each rank meets half the examples in the epoch and stores their teacher
    # logits; at the epoch's end the ranks exchange them, so the saved store is complete after one epoch
    proc = run_kdcl(["train", *TINY, "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.strategy=ddp_spawn"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = run_dir_of(proc)
    assert [s["name"] for s in summary_of(run)["stages"]] == ["teacher", "student"]
    stored = torch.load(run / "stages/01-student/teacher_logits.pt", weights_only=True)
    assert stored["filled"].all()
    assert (stored["logits"].abs().sum(-1) > 0).all()  # no example's row was left empty


def test_resnet50_teacher_mobilenet_student(tmp_path):
    proc = run_kdcl(["train", "teacher=resnet50", "student=mobilenet", "debug=fast", "progress_bar=lines"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = [s["model"] for s in summary_of(run_dir_of(proc))["stages"]]
    assert models == ["resnet50", "mobilenetv3_small_100"]


def test_baseline_pipeline_trains_the_student_alone(tmp_path):
    proc = run_kdcl(["train", *TINY, "pipeline=baseline", "trainer.max_epochs=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = summary_of(run_dir_of(proc))["stages"]
    assert [(s["name"], s["teachers"]) for s in stages] == [("student", [])]
