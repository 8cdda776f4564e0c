"""`kdcl train … --dry-run`: what a command will do, before it does it, and nothing written.

For each job (each point of a `-m` sweep): the stages in order with model, epochs and teachers; how each
stage reads its teachers' outputs (online, or stored: built by this job, reused from the shared cache by
key, or from an earlier job of the sweep); the passes before training (out-of-fold stages are stages
of their own); and estimates of time and disk (kdcl/run/estimate.py), from a few measured steps of
every model on this machine. A store's key is known before the run only when its teachers are given
checkpoints; a teacher trained in the job gets its key when it has trained.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdcl.common.tables import print_table
from kdcl.config.checks import latency_batches, latency_runtimes
from kdcl.config.schema import data_identity
from kdcl.curriculum.builder import TEACHER_SCORERS
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import of_classes, unaugmented
from kdcl.models.cost import StepTimes, measure_steps
from kdcl.run.estimate import REPORT_BYTES, REPORT_S, Counts, Estimate, StageWork, estimate
from kdcl.run.plan import Plan, Stage, split_ref
from kdcl.run.presets import task_classes
from kdcl.run.stage import StageContext, cost_entry, given_test_entry, training_examples
from kdcl.teachers.outputs import cache_key, shared_logits_path
from kdcl.teachers.views import StageExamples, ViewSpec, store_bytes, views_key, views_store_path


@dataclass(frozen=True)
class StagePreview:
    stage: Stage
    params: int
    outputs: TeacherRead
    before: str  # the passes before training, in words
    estimate: Estimate


@dataclass(frozen=True)
class JobPreview:
    label: str  # the sweep point's overrides
    stages: tuple[StagePreview, ...]
    data_s: float
    seconds: float
    run_bytes: int
    cache_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class TeacherRead:
    """How a stage reads its teachers' outputs: online, or stored (logits, views) and where from."""

    mode: str  # "-" (no teachers) | online | stored logits | stored views
    source: str  # "-" | built here | reused (cache) | reused (job N)
    files: tuple[str, ...] = ()  # the shared-cache files, when their keys are known before the run
    builds: bool = False  # this job runs the store's pass


class SharedStores:
    """Which shared-cache files exist, and which an earlier job of this sweep will have built."""

    def __init__(self) -> None:
        self.built_by: dict[Path, tuple[int, str]] = {}  # file -> (job, stage) that builds it

    def status(self, path: Path, job: int, stage: str) -> str:
        """Where the entry comes from: reused (cache), reused (job N) (an earlier job, or an earlier stage of
        this one), or built here (this stage builds it)."""
        if path.is_file():
            return "reused (cache)"
        if path in self.built_by and self.built_by[path] != (job, stage):
            return f"reused (job {self.built_by[path][0] + 1})"
        self.built_by[path] = (job, stage)
        return "built here"


@dataclass
class Previewer:
    """Measures each distinct model once (for every job of a sweep) and previews jobs."""

    shared: SharedStores
    speeds: dict[str, StepTimes]
    # given teachers, loaded once for every job of a sweep (their weights are part of every store's key)
    loaded: dict[str, nn.Module] = field(default_factory=dict)
    exported: bool = False  # an ONNX export already ran in this process (its first warms the exporter)

    def speed(self, ctx: StageContext, model: dict, key: str) -> StepTimes:
        cfg, data = ctx.cfg, ctx.data
        shape = (data.in_chans, int(cfg.data.image_size), int(cfg.data.image_size))
        batches = (int(cfg.data.batch_size), int(cfg.data.eval_batch_size))
        name = json.dumps([model, shape, data.num_classes, batches], sort_keys=True, default=str)
        if name not in self.speeds:
            device = trainer_device(cfg)
            bf16 = device.type == "cuda" and str(cfg.trainer.get("precision", "")).startswith("bf16")
            random_init = {
                **model,
                "checkpoint": None,
                "weights": None,
                "pretrained": False,
            }  # weights do not change the time
            build = lambda: ctx.build_model(random_init, key)  # noqa: E731
            self.speeds[name] = measure_steps(build, shape, data.num_classes, *batches, device, bf16)
        return self.speeds[name]


def trainer_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return torch.device("cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu")


def given(ctx: StageContext, ref: str) -> Path | None:
    """A teacher reference's file when it is known before the run: a given checkpoint, not a trained stage."""
    name, epoch = split_ref(ref)
    return ctx.plan.stage(name).given_file(epoch)


def given_teacher(ctx: StageContext, ref: str, file: Path, loaded: dict[str, nn.Module]) -> nn.Module:
    """A teacher given as a checkpoint, built and loaded once per model, file and data shape."""
    model = ctx.plan.stage(split_ref(ref)[0]).model
    shape = (ctx.data.num_classes, ctx.data.in_chans, int(ctx.cfg.data.image_size))
    name = json.dumps([model, str(file), shape], sort_keys=True, default=str)
    if name not in loaded:
        loaded[name] = ctx.build_model(model, f"pipeline.stages.{ref}", file)
    return loaded[name]


def store_files(ctx: StageContext, stage: Stage, files: list[Path], loaded: dict[str, nn.Module]) -> list[Path]:
    """The shared-cache files of the stage's stored outputs (teachers given as checkpoints: keys known)."""
    teachers = [given_teacher(ctx, t, f, loaded) for t, f in zip(stage.teachers, files, strict=True)]
    classes = task_classes(stage.task, ctx.data.num_classes)[0] if stage.task else None
    train_set, data, src = training_examples(ctx, stage, classes), data_identity(ctx.cfg.data), ctx.data.load()
    if stage.teacher_outputs == "cached":
        plain = unaugmented(train_set)
        return [shared_logits_path(ctx.cfg, cache_key(teachers, plain, data, ctx.cfg, src.mean, src.std))]
    spec = ViewSpec.of(ctx.cfg, ctx.data.num_classes, stage.curriculum, stage.epochs)
    ex = StageExamples.of(train_set, spec)
    return [views_store_path(ctx.cfg, t, views_key(t, ex.plain, data, src.mean, src.std, spec, ex.sizes)[0])
            for t in teachers]  # fmt: skip


def outputs_of(ctx: StageContext, stage: Stage, p: Previewer, job: int) -> TeacherRead:
    mode = stage.teacher_outputs
    if mode == "online":
        return TeacherRead("online" if stage.teachers else "-", "-")
    k = ViewSpec.of(ctx.cfg, ctx.data.num_classes, stage.curriculum, stage.epochs).k
    what = "stored logits" if mode == "cached" else f"stored views, K={k}"
    files = [given(ctx, t) for t in stage.teachers]
    if any(f is None for f in files):  # a teacher trained in this job: its weights, so the key, come later
        return TeacherRead(what, "built here", builds=True)
    paths = store_files(ctx, stage, files, p.loaded)
    statuses = [p.shared.status(path, job, stage.name) for path in paths]
    source = statuses[0] if len(set(statuses)) == 1 else "partly built here"
    return TeacherRead(what, source, tuple(p.name for p in paths), "built here" in statuses)


def scoring_of(ctx: StageContext, stage: Stage, mode: str, n: int, speed) -> tuple[tuple[StepTimes, int], ...]:
    """The curriculum's scoring passes: (model, examples it scores); none where stored outputs serve."""
    c = ctx.cfg.curriculum
    if not stage.curriculum:
        return ()
    if c.scorer == "student_loss":  # the student scores, then rescores every `rescore_every` epochs
        rescores = stage.epochs // max(1, int(c.get("rescore_every") or stage.epochs))
        return ((speed(stage.model, stage.model_key), n * (1 + rescores)),)
    if c.scorer not in TEACHER_SCORERS or (c.source == "final" and mode != "online"):
        return ()  # random, class order, a file; or the store's pass scores too
    scorers = [split_ref(s)[0] for s in stage.scorers]
    share = n // len(scorers) if c.source == "folds" else n
    return tuple((speed(ctx.plan.stage(s).model, s), share) for s in scorers)


def given_test_reused(ctx: StageContext, stage: Stage, shared: SharedStores, job: int) -> bool:
    """A given checkpoint's test comes from the shared cache (found, or built by an earlier job)."""
    if stage.trains:
        return False
    checkpoint = Path(stage.model["checkpoint"]).resolve()
    seen = task_classes(stage.task, ctx.data.num_classes)[1] if stage.task else None
    return shared.status(given_test_entry(ctx.cfg, stage, checkpoint, seen)[2], job, stage.name) != "built here"


def cost_reused(ctx: StageContext, stage: Stage, shared: SharedStores, job: int) -> bool:
    """The model's MACs and latency come from the shared cache (found, or measured by an earlier job or stage)."""
    if not latency_batches(ctx.cfg):
        return False
    return shared.status(cost_entry(ctx, stage)[2], job, stage.name) != "built here"


def before_training(stage: Stage, outputs: TeacherRead, scoring: tuple) -> str:
    parts = []
    if stage.holdout is not None:
        parts.append(f"out-of-fold model {stage.holdout[0] + 1}/{stage.holdout[1]}")
    if outputs.builds and stage.teacher_outputs == "views":
        parts.append("views pass")
    if scoring:
        parts.append(f"scoring pass ({len(scoring)} model{'s' if len(scoring) > 1 else ''})")
    if stage.match_entropy:  # the teacher and each reference over the training set (the matched temperature)
        parts.append(f"temperature-matching pass ({len(stage.match_entropy) + 1} models)")
    return ", ".join(parts) or "-"


def stage_work(ctx: StageContext, stage: Stage, p: Previewer, job: int) -> tuple[StageWork, TeacherRead, str]:
    """(what the stage will do, how it reads its teachers, its passes before training) for the estimate."""
    cfg, data = ctx.cfg, ctx.data
    classes, seen, _ = task_classes(stage.task, data.num_classes) if stage.task else (None, None, None)
    n = len(training_examples(ctx, stage, classes))
    counts = Counts(n, len(of_classes(data.val_set, seen)), len(of_classes(data.test_set, seen)),
                    int(cfg.data.batch_size), int(cfg.data.eval_batch_size),
                    tuple(cfg.trainer.get(f"limit_{s}_batches") for s in ("train", "val", "test")))  # fmt: skip
    speed = lambda model, key: p.speed(ctx, model, key)  # noqa: E731
    outputs = outputs_of(ctx, stage, p, job)
    scoring = scoring_of(ctx, stage, stage.teacher_outputs, n, speed)
    spec = ViewSpec.of(cfg, data.num_classes, stage.curriculum, stage.epochs)
    runtimes = tuple(latency_runtimes(cfg))
    work = StageWork(
        trains=stage.trains, epochs=stage.epochs, counts=counts, model=speed(stage.model, stage.model_key),
        teachers=tuple(speed(ctx.plan.stage(split_ref(t)[0]).model, t) for t in stage.teachers),
        mode=stage.teacher_outputs, builds_store=outputs.builds, fills_first=stage.curriculum,
        views=spec.k + (1 if spec.plain else 0), view_bytes=store_bytes(n, data.num_classes, spec),
        logit_bytes=2 if spec.bf16 else 4, classes=data.num_classes, scoring=scoring,
        test_cached=given_test_reused(ctx, stage, p.shared, job), in_summary=stage.in_summary,
        last_differs=stage.trains and stage.select == "best",
        latency=(tuple(latency_batches(cfg)) if not cost_reused(ctx, stage, p.shared, job) else (), runtimes),
        first_export=not p.exported and "onnxruntime" in runtimes,
        optimizer=str(cfg.optim.name), keep=str(cfg.checkpoint.keep), epoch_checkpoints=len(stage.save_epochs),
        log_every=int(cfg.trainer.get("log_every_n_steps") or 50),
    )  # fmt: skip
    p.exported = p.exported or (work.first_export and bool(work.latency[0]))
    before = before_training(stage, outputs, scoring)
    if outputs.builds and stage.teacher_outputs == "cached" and stage.curriculum:
        before = "store pass" if before == "-" else f"store pass, {before}"
    return work, outputs, before


def local_data(cfg: DictConfig) -> KdclDataModule:
    """The job's data, read to count its examples (kdcl train --dry-run composes it with data.download=false)."""
    data = KdclDataModule(OmegaConf.merge(cfg.data, {"download": False}), seed=cfg.seed)
    data.setup()
    return data


def preview_job(plan: Plan, p: Previewer, job: int, label: str) -> JobPreview:
    cfg = plan.cfg
    started = time.perf_counter()
    data = local_data(cfg)
    data_s = time.perf_counter() - started
    ctx = StageContext(plan, data, Path(str(cfg.paths.output_dir)), {})
    stages = []
    for stage in plan.stages:
        work, outputs, before = stage_work(ctx, stage, p, job)
        stages.append(StagePreview(stage, int(work.model.param_bytes // 4), outputs, before, estimate(work)))
    run_bytes = sum(s.estimate.run_bytes for s in stages) + REPORT_BYTES
    done, peak = 0, 0
    for s in stages:  # earlier stages' files stay while a later one runs
        peak = max(peak, done + s.estimate.peak_bytes)
        done += s.estimate.run_bytes
    seconds = data_s + sum(s.estimate.total_s for s in stages) + REPORT_S
    return JobPreview(label, tuple(stages), data_s, seconds, run_bytes, sum(s.estimate.cache_bytes for s in stages),
                      max(peak, run_bytes))  # fmt: skip


def preview(plans: list[Plan], labels: list[str], start_up_s: float) -> list[JobPreview]:
    """Every job's preview, printed; `start_up_s`: what this process spent before (imports, composition,
    the checks), which a real run spends alike."""
    p = Previewer(SharedStores(), {})
    jobs = [preview_job(plan, p, i, label) for i, (plan, label) in enumerate(zip(plans, labels, strict=True))]
    jobs[0] = replace(jobs[0], seconds=jobs[0].seconds + start_up_s)
    for job in jobs:
        print_job(job, len(jobs))
    print_totals(jobs, start_up_s, plans[0].cfg)
    return jobs


# printing -------------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def print_job(job: JobPreview, jobs: int) -> None:
    rows = [[s.stage.name, s.stage.model["name"], f"{s.params / 1e6:.2f} M", str(s.stage.epochs if s.stage.trains else 0),
             ", ".join(s.stage.teachers) or "-", s.outputs.mode, s.outputs.source, s.before, duration(s.estimate.total_s),
             megabytes(s.estimate.run_bytes)] for s in job.stages]  # fmt: skip
    title = f"job {job.label}" if jobs > 1 else "kdcl train --dry-run: the stages, in order"
    print_table(["stage", "model", "params", "epochs", "teachers", "teacher outputs", "store", "before training",
                 "time (est.)", "disk (est.)"], rows, title,
                left=("stage", "model", "teachers", "teacher outputs", "store", "before training"))  # fmt: skip
    for s in job.stages:
        if s.stage.teacher_outputs_why:
            print(
                f"  {s.stage.name}: distill.teacher_outputs=auto chose {s.stage.teacher_outputs}: {s.stage.teacher_outputs_why}"
            )
        for name in s.outputs.files:
            print(f"  {s.stage.name}: {s.outputs.mode} {s.outputs.source}: shared cache file {name}")
        if s.outputs.builds and not s.outputs.files:
            print(
                f"  {s.stage.name}: {s.outputs.mode} built once its teachers have trained (their weights are "
                "part of the key)"
            )
    parts: dict[str, float] = {}
    for s in job.stages:
        for part, value in s.estimate.seconds.items():
            parts[part] = parts.get(part, 0.0) + value
    where = ", ".join(f"{k} {duration(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.5)
    print(f"  time ≈ {duration(job.seconds)}: {where}, data {duration(job.data_s)}, report {duration(REPORT_S)}")
    print(
        f"  disk ≈ {megabytes(job.run_bytes)} in the run directory (at most {megabytes(job.peak_bytes)} while it "
        f"runs), {megabytes(job.cache_bytes)} added to the shared cache"
    )


def print_totals(jobs: list[JobPreview], start_up_s: float, cfg: DictConfig) -> None:
    seconds = sum(j.seconds for j in jobs)
    disk = sum(j.run_bytes for j in jobs)
    cache = sum(j.cache_bytes for j in jobs)
    if len(jobs) > 1:
        print(
            f"sweep of {len(jobs)} jobs, one after another: ≈ {duration(seconds)}, {megabytes(disk)} of run "
            f"directories, {megabytes(cache)} added to the shared cache"
        )
    devices = int(cfg.trainer.get("devices") or 1) if str(cfg.trainer.get("devices")).isdigit() else 1
    where = f"{trainer_device(cfg).type}, {torch.get_num_threads()} threads"
    print(
        f"estimates: steps of each model measured here ({where}) times the batches each stage runs, plus "
        f"start-up {duration(start_up_s)} (measured) and constants from docs/benchmarks.md"
        + (f"; for one process, not {devices} devices" if devices > 1 else "")
        + ". Nothing was written."
    )
