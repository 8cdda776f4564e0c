"""Every generated pipeline runs end to end on digits; its stages, hand-offs and report are visible."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY, summary_of

FAST = [*TINY, "trainer.max_epochs=1", "data.fraction=0.3", "latency.batches=[]"]


def run(kdcl_main, tmp_path: Path, *args: str) -> tuple[dict, Path]:
    run_dir = tmp_path / "run"
    proc = kdcl_main(["train", *FAST, *args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return summary_of(run_dir), run_dir


def stages_of(summary: dict) -> dict[str, dict]:
    return {s["name"]: s for s in summary["stages"]}


def weights(run_dir: Path, stage: dict) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / stage["checkpoint"], weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def max_lr(run_dir: Path, stage: dict) -> float:
    ckpt = torch.load(run_dir / stage["checkpoint"], weights_only=True)
    return ckpt["optimizer_states"][0]["param_groups"][0]["max_lr"]


def logged_lr(run_dir: Path, name: str, index: int) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard" / f"{index:02d}-{name}"))
    events.Reload()
    return [e.value for e in events.Scalars(f"{name}/lr")]


def test_takd_chains_assistants_and_reports_compression(tmp_path, kdcl_main):
    # a stage here is 7 steps: log every 2nd so that its learning rate reaches TensorBoard; the finished
    # stages keep their optimizer state (checkpoint.keep=resumable), which the test reads
    summary, run_dir = run(kdcl_main, tmp_path, "pipeline=takd", "pipeline.assistants=[test_resnet,test_efficientnet]",
                           "pipeline.finetune=true", "latency.batches=[1,4]", "checkpoint.keep=resumable",
                           "trainer.log_every_n_steps=2")  # fmt: skip
    s = stages_of(summary)
    assert list(s) == ["teacher", "assistant1", "assistant2", "student", "finetune"]
    assert [s[n]["teachers"] for n in s] == [[], ["teacher"], ["assistant1"], ["assistant2"], []]
    assert s["finetune"]["init"] == "student" and s["finetune"]["model"] == s["student"]["model"]
    for stage in summary["stages"]:  # the compression columns, measured for every model
        assert (
            stage["macs"] > 0
            and set(stage["latency"]) == {"eager"}
            and set(stage["latency"]["eager"]["ms"]) == {"1", "4"}
        )
        assert all(t["median_ms"] > 0 for t in stage["latency"]["eager"]["ms"].values())
        ref = s["teacher"]["latency"]["eager"]["ms"]
        assert stage["speedup"] == {
            b: ref[b]["median_ms"] / t["median_ms"] for b, t in stage["latency"]["eager"]["ms"].items()
        }
        assert math.isclose(stage["compression"], s["teacher"]["params"] / stage["params"])
        assert math.isclose(stage["acc_gap"], stage["test_acc"] - s["teacher"]["test_acc"])
    assert s["student"]["params"] < s["teacher"]["params"] and s["student"]["compression"] > 1
    md = (run_dir / "summary.md").read_text()
    assert "MMACs" in md and "| eager ms@1/4 |" in md and "compr." in md and "| eager speed-up@1/4 |" in md
    # the fine-tune started from the student's chosen weights and moved on from them ...
    config = json.loads((run_dir / "stages/04-finetune/metrics.json").read_text())
    assert config["init"] == "student"
    before, after = weights(run_dir, s["student"]), weights(run_dir, s["finetune"])
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    # ... at a tenth of the learning rate (pipeline.finetune_lr_scale=0.1): the one-cycle peak in the
    # checkpoint's optimizer state, and every rate TensorBoard logged
    peak = {n: max_lr(run_dir, s[n]) for n in ("student", "finetune")}
    assert peak["student"] == pytest.approx(6e-3) and peak["finetune"] == pytest.approx(6e-4)
    logged = {n: logged_lr(run_dir, n, i) for n, i in (("student", 3), ("finetune", 4))}
    assert max(logged["finetune"]) <= 6e-4 * (1 + 1e-6) < max(logged["student"])


def test_dgkd_student_learns_from_the_teacher_and_every_assistant(tmp_path, kdcl_main):
    summary, _ = run(kdcl_main, tmp_path, "pipeline=dgkd", "pipeline.assistants=[test_resnet,test_efficientnet]")
    s = stages_of(summary)
    assert s["assistant2"]["teachers"] == ["teacher", "assistant1"]
    assert s["student"]["teachers"] == ["teacher", "assistant1", "assistant2"]


def test_anchors_teach_the_student_along_the_teachers_route(tmp_path, kdcl_main):
    summary, run_dir = run(kdcl_main, tmp_path, "pipeline=anchors", "trainer.max_epochs=3", "pipeline.anchors=3",
                           "pipeline.epochs_per_anchor=1")  # fmt: skip
    s = stages_of(summary)
    assert list(s) == ["teacher", "student_anchor1", "student_anchor2", "student"]
    assert [s[n]["teachers"] for n in s] == [[], ["teacher@1"], ["teacher@2"], ["teacher"]]
    assert s["student_anchor2"]["init"] == "student_anchor1" and s["student"]["init"] == "student_anchor2"
    teacher = json.loads((run_dir / "stages/00-teacher/metrics.json").read_text())
    saved = {e: run_dir / p for e, p in teacher["epoch_checkpoints"].items()}
    assert set(saved) == {"1", "2"} and all(p.is_file() for p in saved.values())
    # the anchors are different teachers: the route's checkpoints differ from each other and from its end
    # (last.ckpt, epoch 3: the chosen best.ckpt may be epoch 2's, whichever epoch this CPU found best)
    w1, w2, final = (torch.load(p, weights_only=True)["state_dict"]
                     for p in (saved["1"], saved["2"], run_dir / "stages/00-teacher/checkpoints/last.ckpt"))  # fmt: skip
    assert any(not torch.equal(w1[k], w2[k]) for k in final) and any(not torch.equal(w2[k], final[k]) for k in final)


def test_born_again_generations_share_the_architecture(tmp_path, kdcl_main):
    summary, _ = run(kdcl_main, tmp_path, "pipeline=born_again", "pipeline.generations=2")
    s = stages_of(summary)
    assert list(s) == ["gen0", "gen1", "gen2"]
    assert [s[n]["teachers"] for n in s] == [[], ["gen0"], ["gen1"]]
    assert len({st["model"] for st in summary["stages"]}) == 1


@pytest.mark.parametrize("distill_weight", [1.0, 0.0], ids=["lwf", "no-distillation control"])
def test_lifelong_reports_accuracy_on_seen_classes_and_forgetting(tmp_path, kdcl_main, distill_weight):
    summary, run_dir = run(kdcl_main, tmp_path, "pipeline=lifelong", "pipeline.tasks=2", "trainer.max_epochs=2",
                           "data.fraction=1.0", f"pipeline.distill_weight={distill_weight}")  # fmt: skip
    s = stages_of(summary)
    assert list(s) == ["task1", "task2"]
    assert s["task2"]["teachers"] == (["task1"] if distill_weight else []) and s["task2"]["init"] == "task1"
    first = json.loads((run_dir / "stages/00-task1/metrics.json").read_text())
    assert first["classes"] == [0, 1, 2, 3, 4]
    tested = [c for c, n in enumerate(first["test_per_class"]["total"]) if n]
    assert tested == [0, 1, 2, 3, 4]  # task 1 is tested on its own classes only
    assert first["test_acc"] > 0.4  # five classes, two epochs: twice chance
    rows = summary["incremental"]
    assert [len(r["task_acc"]) for r in rows] == [1, 2] and rows[0]["forgetting"] == 0
    assert math.isclose(rows[1]["forgetting"], rows[0]["task_acc"][0] - rows[1]["task_acc"][0], abs_tol=1e-9)
    assert "forgetting" in (run_dir / "summary.md").read_text()
