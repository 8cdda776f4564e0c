"""`kdcl train` end to end through the real CLI: outputs, TensorBoard, eval, determinism, sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import LEARNED, SEED, TINY, run_dir_of, summary_of

METRICS = ("test_acc", "test_loss", "best_val_acc")
# One short, cheap stage: two training batches, one validation and one test batch, no latency timing.
FEW_STEPS = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1", "latency.batches=[]"]  # fmt: skip


def test_summary_lists_every_stage_with_its_numbers(tiny_run):
    summary = summary_of(tiny_run)
    assert [s["name"] for s in summary["stages"]] == ["teacher", "student"]
    for stage, model in zip(summary["stages"], ["test_resnet", "test_efficientnet"], strict=True):
        assert stage["model"] == model
        assert isinstance(stage["params"], int) and stage["params"] > 1000
        assert 0.0 <= stage["test_acc"] <= 1.0
    teacher, student = summary["stages"]
    assert teacher["test_acc"] > LEARNED and student["test_acc"] > LEARNED  # both learned
    assert student["teachers"] == ["teacher"]
    assert (tiny_run / "summary.md").read_text().count("|") > 10


def test_the_summary_says_where_the_time_went(tiny_run):
    timing = summary_of(tiny_run)["timing"]
    assert list(timing["parts"]) == ["imports", "checks", "data", "model check", "stages", "report card", "summary"]
    assert timing["total"] == pytest.approx(sum(timing["parts"].values()), abs=0.01) and timing["total"] > 0
    assert list(timing["stages"]) == ["teacher", "student"]
    for stage in timing["stages"].values():
        assert list(stage) == ["seconds", "prepare", "models", "teacher outputs", "train", "test", "latency"]
        assert stage["train"] > 0 and stage["seconds"] >= stage["train"] + stage["test"] - 0.02  # rounded to 0.01
    assert sum(s["seconds"] for s in timing["stages"].values()) <= timing["parts"]["stages"] + 0.02


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


def test_a_finished_stage_keeps_its_checkpoints_as_weights_only(tiny_run):
    # checkpoint.keep=weights (the default): a finished stage never resumes, so its optimizer, scheduler and
    # loop state go; eval, export, the report card and later stages (the tests that read tiny_run) need none
    from kdcl.training.checkpoints import WEIGHTS_KEYS

    for stage in ("00-teacher", "01-student"):
        for name in ("best.ckpt", "last.ckpt"):
            checkpoint = torch.load(tiny_run / "stages" / stage / "checkpoints" / name, weights_only=True)
            assert set(checkpoint) <= set(WEIGHTS_KEYS) and checkpoint["state_dict"], (stage, name, set(checkpoint))


def test_eval_reproduces_the_student_test_accuracy_exactly(tiny_run, kdcl_main):
    result = kdcl_main(["eval", str(tiny_run)], tiny_run)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    student = summary_of(tiny_run)["stages"][1]
    assert evaluated["stage"] == "student" and evaluated["test_acc"] == student["test_acc"]
    result = kdcl_main(["eval", str(tiny_run), "stage=teacher"], tiny_run)
    assert (
        json.loads(result.stdout.strip().splitlines()[-1])["test_acc"] == summary_of(tiny_run)["stages"][0]["test_acc"]
    )


def test_same_seed_gives_identical_metrics_whether_teacher_outputs_are_cached_or_online(tiny_run, tmp_path, kdcl_main):
    stored = torch.load(tiny_run / "stages/01-student/teacher_logits.pt", weights_only=True)
    assert stored["filled"].all()  # tiny_run (auto): the first epoch met and stored every example
    # A CPU's convolutions may round an example's logits differently (~1e-8) in a batch of another size,
    # and online KD computes each example in whatever batch it lands in. With equal batches (1293 training
    # images = 3 × 431) every teacher logit is computed the same way both ways, so the runs must agree.
    # Two epochs: the first stores every example's logits, the second reads them back. The teacher is
    # tiny_run's, given as a checkpoint (tested, not trained again).
    teacher = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    equal_batches = [*TINY, "trainer=cpu", "trainer.max_epochs=2", "data.batch_size=431",
                     f"teacher.checkpoint={teacher}", "latency.batches=[]"]  # fmt: skip
    summaries = {}
    for mode in ("auto", "online"):
        (tmp_path / mode).mkdir()
        result = kdcl_main(["train", *equal_batches, f"distill.teacher_outputs={mode}"], tmp_path / mode)
        assert result.returncode == 0, result.stderr[-3000:]
        stored = run_dir_of(result) / "stages/01-student/teacher_logits.pt"
        assert stored.exists() == (mode == "auto")
        summaries[mode] = summary_of(run_dir_of(result))
    for first, second in zip(summaries["auto"]["stages"], summaries["online"]["stages"], strict=True):
        assert {k: first[k] for k in METRICS} == {k: second[k] for k in METRICS}


def test_resuming_a_finished_run_changes_nothing(tiny_run, kdcl_main):
    before = (tiny_run / "summary.json").read_text()
    ckpt = tiny_run / "stages/01-student/checkpoints/best.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    result = kdcl_main(["train", f"resume={tiny_run}"], tiny_run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already complete" in result.stdout and "nothing to do" in result.stdout
    assert (tiny_run / "summary.json").read_text() == before
    assert ckpt.stat().st_mtime_ns == mtime
    assert not list(tiny_run.glob("environment-resume-*"))


def as_written_before_issue_23(cfg: dict) -> dict:
    """A saved config as kdcl wrote it when `latency:` was `report: {latency_batches, ...}`."""
    new = cfg.pop("latency")
    cfg["report"] = {"latency_batches": new["batches"], "latency_runtimes": new["runtimes"],
                     "speedup_runtime": new["speedup_runtime"]}  # fmt: skip
    return cfg


def old_style_copy(tiny_run: Path, dest: Path) -> Path:
    """A copy of tiny_run with its config.yaml and every checkpoint's config in the keys before issue 23."""
    run = Path(shutil.copytree(tiny_run, dest))
    saved = as_written_before_issue_23(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    for path in run.glob("stages/*/checkpoints/*.ckpt"):
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        as_written_before_issue_23(ckpt["hyper_parameters"]["config"])
        torch.save(ckpt, path)
    return run


def test_a_run_written_before_the_latency_rename_resumes_evaluates_exports_and_reports(tiny_run, tmp_path, kdcl_main):
    run = old_style_copy(tiny_run, tmp_path / "old")
    resumed = kdcl_main(["train", f"resume={run}"], tmp_path)  # merged against the schema: no `report` there
    assert resumed.returncode == 0 and "already complete" in resumed.stdout, resumed.stderr[-3000:]
    assert "latency_batches" in (run / "config.yaml").read_text()  # read in today's keys, left as written
    evaluated = kdcl_main(["eval", str(run)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    student = summary_of(tiny_run)["stages"][1]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["test_acc"] == student["test_acc"]
    exported = kdcl_main(["export", str(run), "format=safetensors", f"out={tmp_path / 'exported'}"], tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    reported = kdcl_main(["report", str(run)], tmp_path)
    assert reported.returncode == 0 and (run / "report.md").is_file(), reported.stderr[-3000:]
    old_key = kdcl_main(["eval", str(run), "report.speedup_runtime=eager"], tmp_path)
    assert old_key.returncode == 2
    assert old_key.stderr.strip() == "error: report.speedup_runtime was renamed: use latency.speedup_runtime=eager"


def test_multirun_gives_one_job_directory_per_point(tmp_path, kdcl_main):
    sweep = tmp_path / "sweep"
    proc = kdcl_main(["train", "-m", *TINY, "trainer.max_epochs=1", "data.fraction=0.3", "latency.batches=[]",
                     "distill.temperature=2,4",
                     f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    temps = []
    for job in ("0", "1"):
        summary = summary_of(sweep / job)
        assert [s["name"] for s in summary["stages"]] == ["teacher", "student"]
        temps.append((sweep / job / "config.yaml").read_text().split("temperature: ")[1].split("\n")[0])
    assert [float(t) for t in temps] == [2, 4]


class Seen:
    """What the real run's modules did, seen by global forward hooks (torch's public hook API)."""

    def __init__(self):
        from torch import nn

        from kdcl.losses import DistillLoss
        from kdcl.models import FrozenTeacher

        self.convs: list[tuple] = []  # (output dtype, input channels-last, weight channels-last) under autocast
        self.student_logits: list[torch.Tensor] = []  # what the loss received, as it received it
        self.teachers: list[object] = []  # each frozen teacher's backbone when it was called

        def distinguishable(t: torch.Tensor) -> bool:  # NCHW and NHWC differ only with C > 1 and H·W > 1
            return t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1

        def conv_hook(module, args, out):
            if isinstance(module, nn.Conv2d) and torch.is_autocast_enabled("cpu"):
                x, w = args[0], module.weight
                cl = torch.channels_last
                self.convs.append((out.dtype, x.is_contiguous(memory_format=cl) if distinguishable(x) else None,
                                   w.is_contiguous(memory_format=cl) if distinguishable(w) else None))  # fmt: skip

        def loss_hook(module, args):
            if isinstance(module, DistillLoss):
                self.student_logits.append(args[0].student_logits)

        def teacher_hook(module, args):
            if isinstance(module, FrozenTeacher):
                self.teachers.append(module.model)

        self.handles: list = []
        self.hooks = (conv_hook, loss_hook, teacher_hook)

    def __enter__(self):
        from torch import nn

        conv_hook, loss_hook, teacher_hook = self.hooks
        self.handles = [
            nn.modules.module.register_module_forward_hook(conv_hook),
            nn.modules.module.register_module_forward_pre_hook(loss_hook),
            nn.modules.module.register_module_forward_pre_hook(teacher_hook),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def test_bf16_and_channels_last_take_effect_in_every_model(tiny_run, tmp_path, kdcl_main):
    # the switches trainer=gpu sets, here on the CPU: every convolution of the teacher and the student runs
    # under bf16 autocast on channels-last inputs with channels-last weights, and the loss sees bf16 logits.
    # One training step shows them all. The teacher is tiny_run's (tested and distilled from, not trained): a
    # tiny model trained from scratch in bf16 on a CPU once turned nan after its first update (a 2-core Xeon,
    # the whole suite running), which stopped the run (exit 3) before any student step.
    args = ["train", *TINY, *FEW_STEPS, "trainer.limit_train_batches=1", "trainer.precision=bf16-mixed",
            f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}",
            "speed.channels_last=true", "distill.teacher_outputs=online"]  # fmt: skip
    with Seen() as seen:
        result = kdcl_main(args, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(seen.convs) > 50 and {dtype for dtype, _, _ in seen.convs} == {torch.bfloat16}
    assert {x for _, x, _ in seen.convs} == {True, None} and {w for _, _, w in seen.convs} == {True, None}
    assert seen.student_logits and all(t.dtype == torch.bfloat16 for t in seen.student_logits)
    assert seen.teachers  # the student stage's frozen teacher ran (online), under the same switches
    state = torch.load(run_dir_of(result) / "stages/01-student/checkpoints/last.ckpt", weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in state["state_dict"].items() if v.is_floating_point())


# A torch.compile backend that runs each graph dynamo captures as captured, and records its calls
# (graph, whether autograd was recording): what kdcl hands to torch.compile, without torch's code generation.
CAPTURED: list[tuple[int, bool]] = []


def recording_backend(graph, example_inputs):
    label = id(graph)

    def run(*args):
        CAPTURED.append((label, torch.is_grad_enabled()))
        return graph(*args)

    return run


def test_compile_compiles_the_student_and_the_teachers(tiny_run, tmp_path, kdcl_main):
    # kdcl compiles the models it trains and distils from; torch's own code generation (inductor: C++ on a
    # CPU, 20-50 s here; aot_eager: 10+ s of AOT autograd) is torch's concern, so the graphs go to a backend
    # that records them and runs them as captured. The teacher is tiny_run's (tested, not trained again).
    from torch._dynamo import list_backends, register_backend

    if "kdcl_recording" not in list_backends(exclude_tags=()):
        register_backend(recording_backend, name="kdcl_recording")
    torch._dynamo.reset()
    CAPTURED.clear()
    args = ["train", *TINY, *FEW_STEPS, "student.name=test_vit", "data.eval_batch_size=64",
            f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}",
            "speed.compile=true", "speed.compile_backend=kdcl_recording", "trainer.precision=bf16-mixed",
            "speed.channels_last=true", "distill.teacher_outputs=online"]  # fmt: skip
    try:
        with Seen() as seen:
            result = kdcl_main(args, tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        graphs = {label for label, _ in CAPTURED}
        assert len(graphs) >= 2  # the student's and the teacher's forward, captured by dynamo
        assert any(grad for _, grad in CAPTURED)  # the student's training steps ran through a captured graph
        assert seen.student_logits and seen.teachers and all(m._compiled_call_impl is not None for m in seen.teachers)
    finally:
        torch._dynamo.reset()
    run = run_dir_of(result)
    assert [s["name"] for s in summary_of(run)["stages"]] == ["teacher", "student"]
    # checkpoints keep the model's own keys (nn.Module.compile adds no _orig_mod prefix) ...
    state = torch.load(run / "stages/01-student/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)
    evaluated = kdcl_main(["eval", str(run), "data.eval_batch_size=64"], tmp_path)  # ... so plain fp32 models load them
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_resnet50_teacher_mobilenet_student(tmp_path, kdcl_main):
    proc = kdcl_main(
        ["train", "teacher=resnet50", "student=mobilenet", "debug=fast", "progress_bar=lines",
         "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "data.batch_size=16", "data.eval_batch_size=32", "latency.batches=[]", f"seed={SEED}"], tmp_path
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = [s["model"] for s in summary_of(run_dir_of(proc))["stages"]]
    assert models == ["resnet50", "mobilenetv3_small_100"]


def test_baseline_pipeline_trains_the_student_alone(tmp_path, kdcl_main):
    proc = kdcl_main(["train", *TINY, "pipeline=baseline", "latency.batches=[]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = summary_of(run_dir_of(proc))["stages"]
    assert [(s["name"], s["teachers"]) for s in stages] == [("student", [])]
    # two epochs on hard labels alone (0.89-0.93 at seeds 0-3 here; one epoch: 0.10-0.38)
    assert stages[0]["test_acc"] > LEARNED
