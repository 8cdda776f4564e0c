"""The controls of the teacher curricula (issue 25), each one flag away, run end to end on digits: each does
what it says, checked from the run's files (checkpoints, stored teacher logits, TensorBoard), and every arm
given `pipeline.student_epochs` trains the student for the same number of optimizer steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdcl.data import KdclDataModule
from kdcl.data.datamodule import unaugmented
from kdcl.models import model_from_checkpoint
from kdcl.models.input_norm import ModelInput
from kdcl.models.predictions import dataset_logits
from tests.conftest import TINY, in_process, summary_of

STUDENT_EPOCHS = 4  # every arm's student budget; none of the arms has it by default
FAST = [*TINY, "trainer.max_epochs=1", "data.fraction=0.1", "latency.batches=[]",
        f"pipeline.student_epochs={STUDENT_EPOCHS}"]  # fmt: skip
ANCHORS = ["pipeline=anchors", "pipeline.epochs=3", "pipeline.anchors=3"]  # early anchors teacher@1, teacher@2
ARMS = {
    "matched": [*ANCHORS, "pipeline.order=matched", "distill.temperature=2"],
    "reverse": [*ANCHORS, "pipeline.order=reverse"],
    "early_stopped": [
        "trainer.max_epochs=2",
        "pipeline.teacher_epoch=1",
        "distill.teacher_outputs=cached",
        "+pipeline.stages.teacher.keep_epochs=[2]",
    ],  # kept for no stage of its own: for a later run
    "takd_labels_only": ["pipeline=takd", "pipeline.assistants=[test_resnet]", "pipeline.assistants_distill=false"],
    "born_again_plain": ["pipeline=born_again", "pipeline.generations=1", "pipeline.plain=true"],
}


@pytest.fixture(scope="module")
def arms(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each arm's run directory and what it printed: trained once, read by every test here."""
    cwd = tmp_path_factory.mktemp("controls")
    runs = {}
    for arm, overrides in ARMS.items():
        proc = in_process(["train", *FAST, *overrides, f"hydra.run.dir={cwd / arm}"], cwd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[arm] = (cwd / arm, proc.stdout)
    # the early-stopped arm again, its teacher given from the run above: the checkpoint after its last epoch, which
    # brings the epoch-1 checkpoint that run kept
    given = ["pipeline.teacher_epoch=1", "distill.teacher_outputs=cached", f"teacher.checkpoint={given_teacher(runs)}"]
    proc = in_process(["train", *FAST, *given, f"hydra.run.dir={cwd / 'given'}"], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs["given"] = (cwd / "given", proc.stdout)
    return runs


def given_teacher(runs: dict[str, tuple[Path, str]]) -> Path:
    """The early-stopped arm's teacher after its last epoch (2): not the epoch-1 checkpoint, whichever is best."""
    return runs["early_stopped"][0] / "stages" / "00-teacher" / "checkpoints" / "last.ckpt"


def stages_of(run_dir: Path) -> dict[str, dict]:
    """Each stage's metrics.json (everything the stage recorded), in the summary's order."""
    names = [row["name"] for row in summary_of(run_dir)["stages"]]
    return {
        n: json.loads((run_dir / "stages" / f"{i:02d}-{n}" / "metrics.json").read_text()) for i, n in enumerate(names)
    }


def stage_dir(run_dir: Path, row: dict) -> Path:
    return run_dir / "stages" / f"{row['index']:02d}-{row['name']}"


def training_logits(run_dir: Path, model_cfg: dict, checkpoints: list[Path]) -> list[torch.Tensor]:
    """Each checkpoint's logits on the run's training examples, computed here from the run's own config."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = KdclDataModule(cfg.data, seed=cfg.seed)
    data.setup()
    examples, inputs = unaugmented(data.stage_subset(None)), ModelInput.of(data.load(), int(cfg.data.image_size))
    return [dataset_logits(model_from_checkpoint(model_cfg, c, inputs, "teacher"), examples, data.scale)
            for c in checkpoints]  # fmt: skip


def entropy(logits: torch.Tensor, temperature: float) -> float:
    logp = torch.log_softmax(logits.double() / temperature, -1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def test_matched_temperature_equals_the_one_computed_by_hand_from_the_anchors_and_the_teacher(arms):
    run_dir, printed = arms["matched"]
    s = stages_of(run_dir)
    assert list(s) == ["teacher", "student"] and s["student"]["teachers"] == ["teacher"]
    teacher = s["teacher"]
    anchors = [run_dir / teacher["epoch_checkpoints"][e] for e in ("1", "2")]
    early1, early2, final = training_logits(run_dir, teacher["model_cfg"], [*anchors, run_dir / teacher["checkpoint"]])
    target = (entropy(early1, 2.0) + entropy(early2, 2.0)) / 2  # the early anchors at distill.temperature=2
    low, high = math.log(1e-2), math.log(1e3)  # bisection in log T: the final teacher's entropy rises with T
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if entropy(final, math.exp(mid)) < target else (low, mid)
    by_hand = math.exp((low + high) / 2)
    matched = s["student"]["matched_temperature"]
    assert matched["temperature"] == pytest.approx(by_hand, rel=1e-6)
    assert matched["target_entropy"] == pytest.approx(target, rel=1e-9) and matched["configured"] == 2.0
    assert set(matched["references"]) == {"teacher@1", "teacher@2"}
    # written where a user finds it: metrics.json, summary.json, the log line, TensorBoard; and the loss used it
    assert summary_of(run_dir)["stages"][1]["matched_temperature"] == matched
    assert s["student"]["terms"]["kd"]["temperature"] == matched["temperature"]
    assert f"[student] matched temperature {matched['temperature']:.4f}" in printed
    checkpoint = torch.load(run_dir / s["student"]["checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["terms"]["kd"]["temperature"] == matched["temperature"]
    events = EventAccumulator(str(run_dir / "tensorboard" / "01-student"))
    events.Reload()
    assert events.Scalars("student/matched_temperature")[0].value == pytest.approx(matched["temperature"], rel=1e-6)


def test_reverse_order_visits_the_anchors_last_to_first(arms):
    run_dir, _ = arms["reverse"]
    s = stages_of(run_dir)
    assert list(s) == ["teacher", "student_anchor1", "student_anchor2", "student"]
    assert [s[n]["teachers"] for n in list(s)[1:]] == [["teacher"], ["teacher@2"], ["teacher@1"]]
    assert set(s["teacher"]["epoch_checkpoints"]) == {"1", "2"}


def test_early_stopped_teacher_is_the_checkpoint_after_epoch_e(arms):
    run_dir, _ = arms["early_stopped"]
    s = stages_of(run_dir)
    assert s["student"]["teachers"] == ["teacher@1"]
    teacher = s["teacher"]
    [after_1] = training_logits(run_dir, teacher["model_cfg"], [run_dir / teacher["epoch_checkpoints"]["1"]])
    # the logits the student learned from (stored as its first epoch met them) are the epoch-1 teacher's
    stored = torch.load(stage_dir(run_dir, s["student"]) / "teacher_logits.pt", weights_only=True)
    filled = stored["filled"]
    assert filled.sum() > 0.9 * len(filled)
    assert torch.allclose(stored["logits"][0][filled].float(), after_1[filled], atol=1e-4)


def test_a_teacher_given_from_a_run_brings_the_epoch_checkpoints_that_run_kept(arms):
    run_dir, printed = arms["given"]
    assert f"given as {given_teacher(arms)} (its run kept epochs 1, 2)" in printed
    s = stages_of(run_dir)
    assert not s["teacher"]["trained"] and s["student"]["teachers"] == ["teacher@1"]
    source = stages_of(arms["early_stopped"][0])["teacher"]
    assert set(source["epoch_checkpoints"]) == {"1", "2"}  # 1 for its own student, 2 by keep_epochs
    after_1, after_2 = training_logits(run_dir, source["model_cfg"], [
        arms["early_stopped"][0] / source["epoch_checkpoints"]["1"], given_teacher(arms)])  # fmt: skip
    stored = torch.load(stage_dir(run_dir, s["student"]) / "teacher_logits.pt", weights_only=True)
    filled = stored["filled"]
    assert filled.sum() > 0.9 * len(filled)
    assert torch.allclose(stored["logits"][0][filled].float(), after_1[filled], atol=1e-4)  # the run's epoch 1
    assert not torch.allclose(after_1, after_2, atol=1e-2)  # ... not the checkpoint given


def test_an_epoch_the_given_teachers_run_did_not_keep_is_refused_before_training(arms, tmp_path):
    proc = in_process(["train", *FAST, "pipeline.teacher_epoch=3", f"teacher.checkpoint={given_teacher(arms)}",
                       f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "'teacher@3' needs the checkpoint after epoch 3" in proc.stderr
    assert "which kept teacher@1, teacher@2;" in proc.stderr
    assert not (tmp_path / "run" / "stages").exists()


def scalar_tags(run_dir: Path, dirname: str) -> list[str]:
    events = EventAccumulator(str(run_dir / "tensorboard" / dirname))
    events.Reload()
    return events.Tags()["scalars"]


def test_assistants_without_distillation_train_on_hard_labels_only(arms):
    run_dir, _ = arms["takd_labels_only"]
    s = stages_of(run_dir)
    assert s["assistant1"]["teachers"] == [] and s["assistant1"]["terms"] == {"ce": {"weight": 1.0}}
    assert s["student"]["teachers"] == ["assistant1"] and "kd" in s["student"]["terms"]
    assistant, student = scalar_tags(run_dir, "01-assistant1"), scalar_tags(run_dir, "02-student")
    assert any(t.startswith("assistant1/train/loss_ce") for t in assistant)
    assert not any("loss_kd" in t for t in assistant) and any(t.startswith("student/train/loss_kd") for t in student)


def test_equal_epoch_arms_train_the_same_number_of_optimizer_steps(arms):
    steps, epochs = {}, {}
    for arm, (run_dir, _) in arms.items():
        students = [row for row in stages_of(run_dir).values() if row["model_key"] == "student"]
        epochs[arm] = [row["epochs"] for row in students]
        steps[arm] = sum(torch.load(stage_dir(run_dir, row) / "checkpoints" / "last.ckpt",
                                    weights_only=True)["global_step"] for row in students)  # fmt: skip
    assert epochs == {"matched": [4], "reverse": [1, 1, 2], "early_stopped": [4], "takd_labels_only": [4],
                      "born_again_plain": [4], "given": [4]}  # fmt: skip
    assert len(set(steps.values())) == 1 and steps["matched"] > 0, steps
