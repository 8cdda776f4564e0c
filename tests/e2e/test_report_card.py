"""The report card of a run and the teacher–student cascade (`kdcl eval RUN_DIR cascade=true`), on tiny runs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdcl.deploy.cascade import answers
from tests.conftest import LEARNED, TINY, in_process, run_dir_of, summary_of


def test_report_card_of_every_stage_against_the_teacher(tiny_run, kdcl_main):
    summary = summary_of(tiny_run)
    cards = {c["stage"]: c for c in summary["report_card"]}
    teacher, student = summary["stages"]
    assert cards["teacher"]["agreement"] == 1.0 and cards["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6)
    card = cards["student"]
    assert card["test_acc"] == pytest.approx(student["test_acc"])  # the card saw the stage's own test images
    assert LEARNED < card["agreement"] <= 1.0 and card["kl"] > 0 and 0 < card["ece"] < 1 and card["nll"] > 0
    counts = json.loads((tiny_run / "stages/01-student/metrics.json").read_text())["test_per_class"]
    assert card["examples"] == sum(counts["total"]) == 360
    assert card["per_class"] == pytest.approx([c / t for c, t in zip(counts["correct"], counts["total"], strict=True)])
    assert student["agreement"] == card["agreement"] and student["ece"] == card["ece"]  # copied into the stage row
    # the last epoch's checkpoint, tested on its own by kdcl eval, has the card's last-epoch accuracy
    last = kdcl_main(["eval", str(tiny_run / "stages/01-student/checkpoints/last.ckpt")], tiny_run)
    assert last.returncode == 0, last.stderr[-2000:]
    assert json.loads(last.stdout.strip().splitlines()[-1])["test_acc"] == pytest.approx(card["test_acc_last"])
    assert (tiny_run / "reliability.png").stat().st_size > 1000
    assert "## Report card" in (tiny_run / "summary.md").read_text()
    events = EventAccumulator(str(tiny_run / "tensorboard" / "report_card")).Reload()
    assert events.Scalars("report_card/student/test/agreement")[0].value == pytest.approx(card["agreement"])
    assert "report_card/reliability" in events.Tags()["images"]


def test_agreement_is_one_and_kl_zero_when_the_student_is_the_teachers_own_checkpoint(tiny_run, tmp_path, kdcl_main):
    ckpt = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    proc = kdcl_main(["train", *TINY, f"teacher.checkpoint={ckpt}", "student.name=test_resnet",
                      f"student.checkpoint={ckpt}", "latency.batches=[]", "logger=none"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(run_dir_of(proc))
    card = {c["stage"]: c for c in summary["report_card"]}["student"]
    assert card["agreement"] == 1.0 and card["kl"] == pytest.approx(0.0, abs=1e-6)
    assert card["test_acc"] == card["test_acc_last"] == summary["stages"][0]["test_acc"]
    assert card["largest_gaps"] == []


def test_each_model_passes_over_the_test_set_once_per_run(tiny_run, tmp_path, kdcl_main, monkeypatch):
    """A stage's test is the one pass of its model over the test set (the report card reads its logits), and
    a teacher given as a checkpoint is tested once for all the jobs that share it."""
    from kdcl.data import KdclDataModule

    passes: list[str] = []
    original = KdclDataModule.test_dataloader

    def counted(self):
        passes.append("test")
        return original(self)

    monkeypatch.setattr(KdclDataModule, "test_dataloader", counted)
    teacher = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    args = [*TINY, f"teacher.checkpoint={teacher}", "pipeline.stages.student.select=last", "latency.batches=[1]",
            "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = kdcl_main(["train", *args, "distill.temperature=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(passes) == 2, "the teacher's test and the student's: the report card reads both"
    second = kdcl_main(["train", *args, "distill.temperature=4"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(passes) == 3, "the shared teacher's test comes from the cache: only the student's test"
    for proc in (first, second):
        summary = summary_of(run_dir_of(proc))
        cards = {c["stage"]: c for c in summary["report_card"]}
        assert [cards[s["name"]]["test_acc"] for s in summary["stages"]] == [s["test_acc"] for s in summary["stages"]]
    # latency is measured once per architecture on this machine and read by the later job: the shared
    # teacher's, and the student's (trained anew, the same arithmetic)
    for model in ("test_resnet", "test_efficientnet"):
        cost = f"shared store {tmp_path / 'cache'}/cost-{model}-"
        assert f"built the {cost}" in first.stdout and f"reused the {cost}" in second.stdout
    teachers = [summary_of(run_dir_of(p))["stages"][0] for p in (first, second)]
    assert teachers[0]["latency"] == teachers[1]["latency"] and teachers[0]["macs"] == teachers[1]["macs"]
    # select: last hands on the last epoch: its validation logits are the ones kept for the cascade
    run = run_dir_of(second)
    student = json.loads((run / "run.json").read_text())["stages"]["student"]["result"]
    assert torch.load(run / student["val_predictions"], weights_only=True)["epoch"] == student["epochs"] - 1


def cascade_of(run, passes: list[str]):
    """kdcl eval's process on `run` with cascade=true, each model pass over a split counted into `passes`."""
    from kdcl.deploy import cascade_eval

    original = cascade_eval.predict

    def counted(model, loader, *args, **kwargs):
        passes.append(type(model).__name__)
        return original(model, loader, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cascade_eval, "predict", counted)
        proc = in_process(["eval", str(run), "cascade=true"], run)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def cascade_run(tiny_run, tmp_path_factory):
    """(a copy of tiny_run, kdcl eval's process, cascade.json, the model passes it made) for `cascade=true`:
    the copy keeps tiny_run as it is."""
    run, passes = tmp_path_factory.mktemp("cascade") / "run", []
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tensorboard"))
    proc = cascade_of(run, passes)
    return run, proc, json.loads((run / "cascade.json").read_text()), passes


def test_the_cascade_reads_the_logits_the_stages_kept_and_passes_no_model_again(cascade_run, tmp_path):
    run, _, result, passes = cascade_run
    manifest = json.loads((run / "run.json").read_text())["stages"]
    kept = [
        run / manifest[stage]["result"][f"{split}_predictions"]
        for stage in ("student", "teacher")
        for split in ("val", "test")
    ]
    assert all(path.is_file() for path in kept)
    assert passes == [], "the stages' test and validation logits serve the cascade: no model runs again"
    # a run without them (made before kdcl kept them): one pass per model and split, and the same cascade
    older, again = tmp_path / "older", []
    shutil.copytree(run, older)
    for path in kept:
        (older / path.relative_to(run)).unlink()
    cascade_of(older, again)
    assert len(again) == 4
    recomputed = json.loads((older / "cascade.json").read_text())
    assert recomputed["tau"] == result["tau"]
    for split in ("val", "test"):
        ours, theirs = result["splits"][split], recomputed["splits"][split]
        assert theirs["examples"] == ours["examples"]
        assert [theirs["student_acc"], theirs["teacher_acc"]] == pytest.approx(
            [ours["student_acc"], ours["teacher_acc"]]
        )
        points = [[v for p in s["curve"] for v in (p["accuracy"], p["deferred"])] for s in (ours, theirs)]
        assert points[1] == pytest.approx(points[0])


def test_cascade_at_tau_zero_is_the_student_and_above_one_the_teacher(cascade_run):
    run, proc, result, _ = cascade_run
    teacher, student = summary_of(run)["stages"]
    test = result["splits"]["test"]
    first, last = test["curve"][0], test["curve"][-1]
    assert first["tau"] == 0 and first["deferred"] == 0 and first["accuracy"] == pytest.approx(student["test_acc"])
    assert last["tau"] > 1 and last["deferred"] == 1 and last["accuracy"] == pytest.approx(teacher["test_acc"])
    lat = result["latency_ms"]  # the latencies the run measured at batch 1, in its speed-up runtime
    assert lat["runtime"] == summary_of(run)["speedup_runtime"]
    recorded = [s["latency"][lat["runtime"]]["ms"]["1"]["median_ms"] for s in (student, teacher)]
    assert [lat["student"], lat["teacher"]] == recorded
    assert first["latency_ms"] == pytest.approx(lat["student"])
    assert last["latency_ms"] == pytest.approx(lat["student"] + lat["teacher"])
    assert (run / "cascade.png").stat().st_size > 1000 and "defers" in proc.stdout


def test_cascade_operating_point_recomputed_from_the_saved_predictions(cascade_run):
    run, _, result, _ = cascade_run
    saved = torch.load(run / "cascade_predictions.pt", weights_only=True)
    tau = result["tau"]
    for split in ("val", "test"):
        p = saved[split]
        picked = answers(p["student"], p["teacher"], p["student_confidence"], tau)
        assert float((picked == p["labels"]).float().mean()) == pytest.approx(result[split]["accuracy"])
        assert float((p["student_confidence"] < tau).float().mean()) == pytest.approx(result[split]["deferred"])
    # the chosen τ is the cheapest on val within max_drop of the teacher's val accuracy
    val = result["splits"]["val"]
    allowed = [q for q in val["curve"] if q["accuracy"] >= val["teacher_acc"] - result["max_drop"] - 1e-12]
    assert result["val"]["latency_ms"] == min(q["latency_ms"] for q in allowed)
    assert result["val"]["accuracy"] >= val["teacher_acc"] - result["max_drop"]


def without_teacher_stage(run_dir, tmp_path):
    """A copy of the run whose manifest lists only its student stage (as a pipeline=baseline run would)."""
    copy = tmp_path / "no-teacher"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    manifest = json.loads((copy / "run.json").read_text())
    del manifest["stages"]["teacher"]
    (copy / "run.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["cascade=true", "cascade.max_drop=-0.1"], "cascade.max_drop=-0.1 must be in [0, 1]"),
        (["cascade=true", "cascade.confidence=entropy"], "cascade.confidence=entropy must be one of max_prob|margin"),
        (["cascade=true", "stage=teacher"], "is the teacher itself"),
        (["cascade=maybe"], "cascade=maybe must be true or false"),
        (["cascade.max_drop=0.05"], "add cascade=true"),
        ("no-teacher", "has no finished teacher stage"),
    ],
)
def test_bad_cascade_input_is_one_line_and_exit_2(tiny_run, tmp_path, kdcl_main, extra, message):
    if extra == "no-teacher":
        target, extra = without_teacher_stage(tiny_run, tmp_path), ["cascade=true"]
    else:
        target = tiny_run
    proc = kdcl_main(["eval", str(target), *extra], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert not (tiny_run / "cascade.json").exists()
