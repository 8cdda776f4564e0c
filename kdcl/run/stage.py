"""One stage = one Lightning Trainer fit + test, written under <run>/stages/NN-<name>/.

`run_stage` reads top to bottom: build the stage's parts, fit, test, record. What a stage hands on to
later stages is a typed `StageResult`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import Dataset, Subset

from kdcl.common.cache import cache_bound, load_or_build, store_path
from kdcl.common.errors import StageFailed
from kdcl.common.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from kdcl.common.metric_names import metric_name
from kdcl.common.ranks import launched_world_size
from kdcl.common.timing import PartTimer
from kdcl.config.checks import latency_batches, latency_runtimes
from kdcl.config.schema import data_identity
from kdcl.curriculum.builder import CurriculumInputs, ScoringModel, build_curriculum
from kdcl.curriculum.scoring import held_out_folds
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import StagePart, dataset_labels, unaugmented
from kdcl.losses import DistillLoss
from kdcl.models import count_params, create_model, model_from_checkpoint
from kdcl.models.cost import model_cost
from kdcl.models.factory import load_kdcl_checkpoint, pretrained_source
from kdcl.models.input_norm import InputNorm, ModelInput, attach_input_norm, input_norm_of
from kdcl.models.predictions import Predictions, dataset_logits
from kdcl.reporting.speed import LearningSpeed, curve_from_epochs
from kdcl.reporting.trackers import stage_loggers
from kdcl.run.plan import FOLD_SEED, Plan, Stage, split_ref
from kdcl.run.presets import task_classes
from kdcl.teachers.outputs import TeacherOutputs
from kdcl.teachers.softness import MatchedTemperature
from kdcl.teachers.views import TeacherViews, open_teacher_views
from kdcl.training.callbacks import FollowChangedLearningRate, KeepRandomState, SaveAfterEpochs, StopOnNonFiniteLoss
from kdcl.training.checkpoints import BestCheckpoint, StageCheckpoint, resume_point, val_predictions_match
from kdcl.training.module import DistillationModule
from kdcl.training.mutual import MutualModule
from kdcl.training.trainer import build_trainer


@dataclass(frozen=True)
class StageResult:
    """What a finished stage hands on (and records in metrics.json and run.json); paths relative to the run."""

    name: str
    index: int
    model: str
    model_key: str
    model_cfg: dict
    params: int
    teachers: list[str]
    terms: dict
    trained: bool
    epochs: int
    checkpoint: str  # the chosen checkpoint: tested, handed on, exported
    select: str
    best_val_acc: float | None
    test_acc: float
    test_loss: float
    test_per_class: dict
    classes: list[int] | None
    init: str | None
    epoch_checkpoints: dict[str, str] = field(default_factory=dict)  # "E" -> checkpoint after epoch E
    macs: int | None = None
    latency: dict[str, dict] = field(default_factory=dict)  # runtime -> kdcl.models.cost.RuntimeLatency as JSON
    seconds: float = 0.0
    recovery: str | None = None  # what a resume did instead of reading an unreadable last.ckpt
    teacher_store: dict | None = None  # stored teacher views: files, size on disk, pass time (kdcl/teachers/views.py)
    test_reused: str | None = None  # a given checkpoint's test read from the shared cache: the entry's file
    test_predictions: str | None = None  # the chosen checkpoint's test logits and labels (the report card reads them)
    val_predictions: str | None = None  # its validation logits and labels, when kept (the cascade reads them)
    timing: dict[str, float] = field(default_factory=dict)  # wall seconds: prepare, train, test, latency
    # validation accuracy after each epoch and the learning speed from it (kdcl/reporting/speed.py)
    val_curve: list[float | None] = field(default_factory=list)
    val_auc: float | None = None
    val_acc_at_25: float | None = None
    val_acc_at_50: float | None = None
    val_acc_at_100: float | None = None
    # pipeline=anchors, order=matched: the KD temperature found and the entropies it matched (MatchedTemperature)
    matched_temperature: dict | None = None
    # mutual learning (pipeline=dml): the group the stage's model trained in, and the group's peers in order (a
    # peer's seconds and timing are its group's, which trained every peer at once)
    mutual: str | None = None
    peers: list[str] = field(default_factory=list)
    # term -> trainable parameters of its learned modules (FitNets' bridge, VID, OFD, CRD, ReviewKD): in the stage's
    # optimizer and checkpoints, never in `params` or an export
    learned_params: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StageResult:
        known = cls.__dataclass_fields__
        if "latency_ms" in data and "latency" not in data:  # a stage recorded before ONNX Runtime was timed
            ms = {b: {"median_ms": v, "spread_ms": None, "repeats": None} for b, v in data["latency_ms"].items()}
            data = {
                **data,
                "latency": {"eager": {"runtime": "eager", "version": "", "threads": 0, "ms": ms}} if ms else {},
            }
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class StageContext:
    """What a stage reads from its run: the plan, the loaded data, where the run lives, earlier results."""

    plan: Plan
    data: KdclDataModule
    run_dir: Path
    handed: dict[str, StageResult]

    @property
    def cfg(self) -> DictConfig:
        return self.plan.cfg

    def stage_dir(self, stage: Stage) -> Path:
        return self.run_dir / "stages" / stage.dirname

    def checkpoint_of(self, ref: str) -> Path:
        """The file a reference points at: `name` → its chosen checkpoint, `name@E` → after epoch E."""
        name, epoch = split_ref(ref)
        result = self.handed[name]
        if epoch is None:
            return self.run_dir / result.checkpoint  # a given checkpoint's is absolute: a resume reads the same file
        if str(epoch) not in result.epoch_checkpoints:  # e.g. the stage stopped early (max_steps, max_time)
            raise StageFailed(f"stage '{name}' saved no checkpoint after epoch {epoch} (for '{ref}'); it stopped "
                              "before that epoch: lower the epoch or use curriculum.source=final")  # fmt: skip
        return self.run_dir / result.epoch_checkpoints[str(epoch)]

    def build_model(self, model_cfg: dict, key: str, checkpoint: Path | None = None) -> nn.Module:
        if checkpoint is not None:  # the weights come from the checkpoint, not from pretrained ones
            return model_from_checkpoint(
                model_cfg, checkpoint, ModelInput.of(self.data.load(), self.cfg.data.image_size), key
            )
        return create_model(OmegaConf.create(model_cfg), ModelInput.of(self.data.load(), self.cfg.data.image_size), key)

    def load_stage_model(self, ref: str) -> nn.Module:
        name = split_ref(ref)[0]
        return self.build_model(self.handed[name].model_cfg, f"pipeline.stages.{name}", self.checkpoint_of(ref))


class ValidationCurve(pl.Callback):
    """The stage's validation accuracy after each epoch. Kept in the checkpoints (state_dict), so a resumed
    stage's curve holds the epochs before the interruption; recorded before Lightning's checkpoint callbacks
    save (it runs them last), so last.ckpt and best.ckpt hold their own epoch's value."""

    def __init__(self, stage: str):
        self.metric, self.values = metric_name(stage, "val", "acc"), {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if not trainer.sanity_checking and value is not None:
            self.values[int(trainer.current_epoch)] = float(value)

    def state_dict(self) -> dict:
        return {"values": dict(self.values)}

    def load_state_dict(self, state_dict: dict) -> None:
        # merged, this process's epochs first: `trainer.test(ckpt_path=best)` restores callbacks too, and best.ckpt's
        # curve ends at its own epoch (a resumed process has none of its own yet, and takes the checkpoint's)
        saved = {int(e): float(v) for e, v in state_dict.get("values", {}).items()}
        self.values = {**saved, **self.values}

    def speed(self, epochs: int) -> LearningSpeed:
        return LearningSpeed.from_curve(curve_from_epochs(self.values), epochs)


@dataclass
class StageParts:
    """A stage ready to fit: its module, its view of the data, its callbacks."""

    module: DistillationModule | MutualModule
    data: KdclDataModule
    callbacks: list[pl.Callback]
    checkpoint: ModelCheckpoint
    classes: list[int] | None
    views: TeacherViews | None = None


def relative_to_run(path: Path, run_dir: Path) -> str:
    """Checkpoints inside the run are recorded relative to it, so a run directory can be moved."""
    path = path.resolve()
    try:
        return str(path.relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


LAST = "last"  # last.ckpt: the model after the latest epoch
VAL_PREDICTIONS = "val_predictions.pt"  # the handed-on epoch's validation logits (the cascade reads them)


def epoch_checkpoint(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"epoch-{epoch}.ckpt"


def run_stage(ctx: StageContext, stage: Stage) -> StageResult:
    """Fit (unless the model is a given checkpoint) and test one stage."""
    started, timer = time.perf_counter(), PartTimer()
    check_references(ctx, stage)
    with timer.part("prepare"):  # the Trainer and the rest; build_parts times the models, teacher outputs, scores
        matched = matched_temperature(ctx, stage) if stage.match_entropy and stage.trains else None
        if matched is not None:
            stage = stage.at_temperature(matched.temperature)
        parts = build_parts(ctx, stage, timer)
        trainer = stage_trainer(ctx, stage, parts)
    recovery = None
    with timer.part("train"):
        if stage.trains:
            chosen, recovery = fit(trainer, parts, stage, ctx.stage_dir(stage) / "checkpoints")
        else:
            chosen = Path(stage.model["checkpoint"]).resolve()
    with timer.part("test"):
        if stage.trains:
            metrics, reused = test(trainer, parts, chosen), None
        else:
            metrics, reused = test_given(ctx, stage, trainer, parts, chosen)
    return record(ctx, stage, parts, trainer, metrics, chosen, started, recovery, reused, timer, matched)


def check_references(ctx: StageContext, stage: Stage) -> None:
    """Every earlier checkpoint the stage reads is recorded before any of its work: a stage that stopped early
    has no `name@E`, and the line (exit 6) comes now, not after the stage's passes."""
    for ref in (*stage.teachers, *stage.scorers, *stage.match_entropy, *([stage.init] if stage.init else [])):
        if split_ref(ref)[0] in ctx.handed:
            ctx.checkpoint_of(ref)


# build ---------------------------------------------------------------------------------------------
def stage_model(ctx: StageContext, stage: Stage) -> nn.Module:
    """The model the stage trains, initialised from the stage's seed (`seed` + its index), or from `init`."""
    pl.seed_everything(int(ctx.cfg.seed) + stage.index, workers=True, verbose=False)
    model = ctx.build_model(stage.model, stage.model_key)
    if stage.init:  # carry an earlier stage's weights on (fine-tune, anchors, class-incremental tasks)
        state, hparams = load_kdcl_checkpoint(ctx.checkpoint_of(stage.init), f"pipeline.stages.{stage.name}.init")
        model.load_state_dict(state)
        if "input_norm" in hparams:  # the weights go on with the normalisation they were trained with
            attach_input_norm(model, InputNorm.from_json(hparams["input_norm"]))
    return model


def build_parts(ctx: StageContext, stage: Stage, timer: PartTimer | None = None) -> StageParts:
    """The stage's module, data and callbacks; `timer` gets the models' build, the teacher outputs (a stored
    pass or views pass before training, or reading them from the shared cache) and the curriculum's scores."""
    cfg, timer = ctx.cfg, timer or PartTimer()
    with timer.part("models"):
        model = stage_model(ctx, stage)
        teachers = [ctx.load_stage_model(t) for t in stage.teachers]
    classes, seen, old = task_classes(stage.task, ctx.data.num_classes) if stage.task else (None, None, None)
    train_set = training_examples(ctx, stage, classes)
    with timer.part("teacher outputs"):
        outputs = teacher_store(ctx, stage, teachers, train_set)
    views = outputs if isinstance(outputs, TeacherViews) else None
    loss = DistillLoss(stage.loss_terms, stage.terms_key, labels=lambda: dataset_labels(train_set))  # CRD's bank
    module = DistillationModule(model, teachers, loss, stage_optim(cfg, stage), stage.name, ctx.data.num_classes,
                                stage_hparams(ctx, stage, model, classes, seen, outputs), seen_classes=seen,
                                distill_classes=old, teacher_outputs=outputs, ensemble=stage.ensemble)  # fmt: skip
    speed_up([model, *(teacher.model for teacher in module.teachers)], cfg.get("speed") or {})
    checkpoint, callbacks = stage_callbacks(ctx, stage)
    sampler = None
    if stage.curriculum:
        inputs = CurriculumInputs(stage.name, stage.epochs, int(cfg.data.batch_size), int(cfg.seed) + stage.index,
                                  train_set, ctx.data.scale, model,
                                  lambda: scoring_models(ctx, stage, teachers, len(train_set)),
                                  views.plain_outputs() if views else outputs, int(cfg.data.eval_batch_size),
                                  int(cfg.data.num_workers))  # fmt: skip
        with timer.part("curriculum scores"):
            sampler, callback = build_curriculum(cfg.curriculum, inputs, ctx.stage_dir(stage))
        callbacks.append(callback)
        pl.seed_everything(int(cfg.seed) + stage.index, workers=True, verbose=False)  # scoring used the RNG
    with_index = outputs is not None or loss.needs_index  # stored outputs and CRD's bank read example positions
    part = StagePart(unaugmented(train_set) if views else train_set, sampler, seen, with_index,
                     bool((cfg.get("speed") or {}).get("channels_last")), views)  # fmt: skip
    return StageParts(module, ctx.data.for_stage(part), callbacks, checkpoint, classes, views)


def matched_temperature(ctx: StageContext, stage: Stage) -> MatchedTemperature:
    """The temperature at which the stage's teacher is as soft on the stage's training examples as its
    `match_entropy` references (the early anchors) are at the configured one. Found as the stage starts, from
    the saved checkpoints (a resumed stage finds the same value); printed, and recorded in metrics.json."""
    classes = task_classes(stage.task, ctx.data.num_classes)[0] if stage.task else None
    examples = unaugmented(training_examples(ctx, stage, classes))
    logits = lambda ref: dataset_logits(ctx.load_stage_model(ref), examples, ctx.data.scale,  # noqa: E731
                                        int(ctx.cfg.data.eval_batch_size), workers=int(ctx.cfg.data.num_workers))  # fmt: skip
    teacher, refs = stage.teachers[0], stage.match_entropy
    matched = MatchedTemperature.of(teacher, logits(teacher), {r: logits(r) for r in refs},
                                    stage.configured_temperature, f"pipeline.stages.{stage.name}.match_entropy")  # fmt: skip
    print(f"[{stage.name}] matched temperature {matched.temperature:.4f}: at it {teacher}'s mean output entropy on "
          f"the {len(examples)} training examples is {matched.target_entropy:.4f} nats, the mean of "
          f"{', '.join(refs)}'s at temperature {matched.configured:g} ({teacher}'s at {matched.configured:g}: "
          f"{matched.teacher_entropy:.4f})", flush=True)  # fmt: skip
    return matched


def training_examples(ctx: StageContext, stage: Stage, classes: list[int] | None) -> Dataset:
    """The stage's training examples: its classes and share of the training set; an out-of-fold stage
    leaves out the fold it will score."""
    examples = ctx.data.stage_subset(stage.fraction, classes)
    if stage.holdout is None:
        return examples
    fold, k = stage.holdout
    held = set(held_out_folds(len(examples), k, int(ctx.cfg.seed) + FOLD_SEED)[fold].tolist())
    return Subset(examples, [i for i in range(len(examples)) if i not in held])


def scoring_models(ctx: StageContext, stage: Stage, teachers: list[nn.Module], n: int) -> list[ScoringModel]:
    """The curriculum's scoring models (the plan names them) for the stage's `n` training examples: its
    own teachers, their early checkpoints, or out-of-fold models each with the positions it never saw."""
    if stage.scorers == stage.teachers:
        return [ScoringModel(t) for t in teachers]
    models = []
    for ref in stage.scorers:
        holdout = ctx.plan.stage(split_ref(ref)[0]).holdout
        positions = None
        if holdout is not None:
            positions = held_out_folds(n, holdout[1], int(ctx.cfg.seed) + FOLD_SEED)[holdout[0]]
        models.append(ScoringModel(ctx.load_stage_model(ref), positions))
    return models


def teacher_store(ctx: StageContext, stage: Stage, teachers: list,
                  train_set: Dataset) -> TeacherOutputs | TeacherViews | None:  # fmt: skip
    """The stage's stored teacher outputs (distill.teacher_outputs=cached|views|auto), or None for online.
    Views: one pass before training (shared through the cache with every job that has the same teachers
    and data), which also scores the un-augmented examples when the stage has a curriculum."""
    plain, data = unaugmented(train_set), data_identity(ctx.cfg.data)
    if stage.teacher_outputs == "views":
        return open_teacher_views(teachers, train_set, ctx.data, ctx.cfg, data, stage.name, ctx.run_dir,
                                  stage.curriculum, stage.epochs)  # fmt: skip
    if stage.teacher_outputs != "cached":
        return None
    outputs = TeacherOutputs.open(teachers, plain, ctx.data, ctx.cfg, data, ctx.stage_dir(stage), stage.name)
    if stage.curriculum:  # paced epochs meet the data piecemeal: store it all in one pass
        outputs.fill(teachers, plain, ctx.data.scale, int(ctx.cfg.data.eval_batch_size), stage.name,
                     int(ctx.cfg.data.num_workers))  # fmt: skip
    return outputs


def stage_optim(cfg: DictConfig, stage: Stage) -> DictConfig:
    if stage.lr_scale == 1.0:
        return cfg.optim
    return OmegaConf.merge(cfg.optim, {"lr": float(cfg.optim.lr) * stage.lr_scale})


def stage_hparams(ctx: StageContext, stage: Stage, model: nn.Module, classes, seen, outputs) -> dict:
    """Saved in every checkpoint as plain containers: what `kdcl eval` needs to rebuild and test the model."""
    cfg = ctx.cfg
    return {
        "stage": stage.name,
        "model_key": stage.model_key,
        "model": stage.model,
        "num_classes": ctx.data.num_classes,
        "in_chans": ctx.data.in_chans,
        "image_size": int(cfg.data.image_size),
        "input_norm": input_norm_of(model).to_json(),  # how the model normalises its input (kdcl eval, export)
        "teachers": list(stage.teachers),
        "ensemble": stage.ensemble,
        "terms": stage.terms,
        "fraction": stage.fraction,
        "init": stage.init,
        "classes": classes,
        "seen_classes": seen,  # a class-incremental stage predicts and is tested among these
        "curriculum": OmegaConf.to_container(cfg.curriculum) if stage.curriculum else None,
        "teacher_outputs": stage.teacher_outputs,
        "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def speed_up(models: list[nn.Module], speed: DictConfig | dict) -> None:
    """speed.channels_last (models; the stage's data view converts batches) and speed.compile (the stage's
    models: students and teachers; nn.Module.compile keeps state-dict keys, so checkpoints and hand-offs are
    unchanged)."""
    if speed.get("channels_last"):
        for m in models:
            m.to(memory_format=torch.channels_last)
    if speed.get("compile"):
        for m in models:
            m.compile(backend=speed.get("compile_backend", "inductor"))


def stage_callbacks(ctx: StageContext, stage: Stage) -> tuple[ModelCheckpoint, list[pl.Callback]]:
    """The checkpoints (best.ckpt by val acc; last.ckpt after every epoch, where a stopped stage
    continues), the random state, the epochs kept for later stages, and the non-finite-loss guard."""
    ckpt_dir = ctx.stage_dir(stage) / "checkpoints"
    best = BestCheckpoint(dirpath=ckpt_dir, filename="best", monitor=metric_name(stage.name, "val", "acc"), mode="max",
                          save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
                          predictions=ctx.stage_dir(stage) / VAL_PREDICTIONS, select=stage.select)  # fmt: skip
    if not stage.trains:
        return best, []
    # a second callback for last.ckpt: one with save_last writes it only in epochs that improved best
    last = StageCheckpoint(dirpath=ckpt_dir, filename=LAST, save_top_k=1, enable_version_counter=False)
    callbacks: list[pl.Callback] = [
        best,
        last,
        KeepRandomState(),
        StopOnNonFiniteLoss(stage.name),
        FollowChangedLearningRate(),
        ValidationCurve(stage.name),
    ]
    if stage.save_epochs:
        callbacks.append(SaveAfterEpochs({e: [epoch_checkpoint(ckpt_dir, e)] for e in stage.save_epochs}))
    return best, callbacks


def build_loggers(cfg: DictConfig, run_dir: Path, stage: Stage) -> list:
    """Each configured logger, for this stage: TensorBoard writes to <run>/tensorboard/<NN-stage>/ (kdcl/reporting/trackers.py)."""
    return stage_loggers(cfg, run_dir, stage.dirname)


def stage_trainer(ctx: StageContext, stage: Stage, parts: StageParts) -> pl.Trainer:
    loggers = build_loggers(ctx.cfg, ctx.run_dir, stage)
    callbacks = list(parts.callbacks)
    if stage.trains and loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))  # needs a logger to write to
    # a curriculum's batch sampler, or stored views rebuilt per image (ViewRows), splits batches across ranks itself
    own_sampler = parts.data.part.batch_sampler is not None or (
        parts.views is not None and parts.views.replayed is not None
    )
    return build_trainer(ctx.cfg.trainer, ctx.cfg.get("progress_bar", "auto"), stage.name, callbacks,
                         loggers or False, ctx.stage_dir(stage), own_sampler=own_sampler, max_epochs=stage.epochs)  # fmt: skip


# fit, test, record ----------------------------------------------------------------------------------
def fit(trainer: pl.Trainer, parts: StageParts, stage: Stage, ckpt_dir: Path) -> tuple[Path, str | None]:
    """Train (a stage stopped mid-way continues from its last readable checkpoint); returns the checkpoint
    `select` chooses, and what was done if last.ckpt could not be read."""
    start = resume_point(ckpt_dir)
    if start.recovery:
        print(f"[{stage.name}] {start.recovery}", flush=True)
    trainer.fit(parts.module, datamodule=parts.data, ckpt_path=str(start.checkpoint) if start.checkpoint else None,
                weights_only=True)  # fmt: skip
    recovery = start.recovery
    last = ckpt_dir / f"{LAST}.ckpt"
    if not last.is_file() and start.checkpoint is not None:
        # Resumed from a checkpoint already at the stage's end (best.ckpt of the final epoch after a torn
        # last.ckpt): Lightning trains no epoch, so no callback writes last.ckpt. That checkpoint is the final
        # epoch's state: copy it, so a `select: last` stage, the report card and the next resume find it.
        if trainer.is_global_zero:
            atomic_write_bytes(last, start.checkpoint.read_bytes())
        trainer.strategy.barrier("kdcl-last-checkpoint")
        note = f"{start.checkpoint.name} was at the stage's end: copied to {last.name}"
        print(f"[{stage.name}] {note}", flush=True)
        recovery = f"{recovery}; {note}" if recovery else note
    best = parts.checkpoint.best_model_path
    if stage.select == "best" and best:
        return Path(best), recovery
    return last, recovery


def test(trainer: pl.Trainer, parts: StageParts, checkpoint: Path | None) -> dict:
    tested = trainer.test(parts.module, datamodule=parts.data, ckpt_path=None if checkpoint is None else str(checkpoint),
                          verbose=False, weights_only=True)  # fmt: skip
    return tested[0] if tested else {}


def given_model_key(cfg: DictConfig, kind: str, checkpoint: Path, classes: list[int] | None,
                    model_cfg: dict) -> tuple[str, dict]:  # fmt: skip
    """(key, what it is made of) of a given checkpoint's test results in the shared cache: the file's
    bytes, the test data's identity (kdcl.config.schema.data_identity), the classes tested, the precision,
    and for a model with pretrained statistics that it normalises with them (a plain weights file does not
    say so; a kdcl checkpoint records it, kdcl/models/input_norm.py)."""
    what = {"kind": kind, "checkpoint": hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "classes": classes,
            "data": data_identity(cfg.data, for_test=True), "precision": str(cfg.trainer.get("precision")),
            "limit_test_batches": cfg.trainer.get("limit_test_batches")}  # fmt: skip
    if pretrained_source(model_cfg):
        what["normalisation"] = "pretrained"
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


def given_test_entry(cfg: DictConfig, stage: Stage, checkpoint: Path, classes) -> tuple[str, dict, Path]:
    """(key, what it is made of, shared-cache file) of a given checkpoint's test in this stage (the dry run
    looks for the same file)."""
    key, what = given_model_key(cfg, f"test of {stage.name}", checkpoint, classes, stage.model)
    return key, what, store_path(cfg, "test", stage.model["name"], key)


def test_given(ctx: StageContext, stage: Stage, trainer: pl.Trainer, parts: StageParts,
               checkpoint: Path) -> tuple[dict, str | None]:  # fmt: skip
    """A given checkpoint's test (a teacher every job of a sweep loads): run once, then read from the
    shared cache. Returns (metrics, the cache file when it was reused)."""
    if launched_world_size() > 1:  # torchrun: every rank joins the test; none may wait on a lock
        return test(trainer, parts, None), None
    key, what, path = given_test_entry(ctx.cfg, stage, checkpoint, parts.data.part.eval_classes)

    def build() -> dict:
        metrics, predictions = test(trainer, parts, None), parts.module.test_predictions
        return {"metrics": metrics, "per_class": parts.module.test_per_class,
                "predictions": None if predictions is None else asdict(predictions)}  # fmt: skip

    stored, entry = load_or_build(path, key, what, build, str(ctx.run_dir), stage.name, cache_bound(ctx.cfg))
    parts.module.test_per_class = stored["per_class"]
    if stored.get("predictions") is not None:  # entries written before kdcl kept the test's logits lack them
        parts.module.test_predictions = Predictions(**stored["predictions"])
    return stored["metrics"], None if entry.built else entry.file


def save_test_predictions(ctx: StageContext, stage: Stage, predictions: Predictions | None) -> str | None:
    """The stage's test logits in its directory (relative to the run), for the report card: so the test is
    the one pass of this model over the test set. None under DDP (each rank tested a share)."""
    if predictions is None:
        return None
    path = ctx.stage_dir(stage) / "test_predictions.pt"
    atomic_torch_save({"logits": predictions.logits.clone(), "labels": predictions.labels.clone()}, path)
    return relative_to_run(path, ctx.run_dir)


def kept_val_predictions(ctx: StageContext, stage: Stage, best_val_acc: float | None) -> str | None:
    """The stage's saved validation logits (relative to the run) when they are the handed-on checkpoint's."""
    path = ctx.stage_dir(stage) / VAL_PREDICTIONS
    if not stage.trains or not val_predictions_match(path, stage.select, best_val_acc, stage.epochs - 1):
        return None
    return relative_to_run(path, ctx.run_dir)


def cost_entry(ctx: StageContext, stage: Stage) -> tuple[str, dict, Path]:
    """(key, what it is made of, shared-cache file) of a model's MACs and latency: its architecture, input,
    the latency settings and this machine; not its weights, which change neither (a dense network's
    arithmetic does not depend on the values). The dry run looks for it too."""
    what = {"kind": "cost", "model": {k: v for k, v in stage.model.items() if k not in ("checkpoint", "weights", "pretrained")},
            "in_chans": ctx.data.in_chans, "image_size": int(ctx.cfg.data.image_size),
            "classes": ctx.data.num_classes, "batches": latency_batches(ctx.cfg), "runtimes": latency_runtimes(ctx.cfg),
            "threads": torch.get_num_threads(), "host": socket.gethostname(), "cpu": platform.processor()}  # fmt: skip
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return key, what, store_path(ctx.cfg, "cost", stage.model["name"], key)


def stage_cost(ctx: StageContext, stage: Stage, model: nn.Module, leader: bool) -> dict:
    """The model's MACs and latency (kdcl.models.cost.model_cost) as JSON, measured once per architecture
    and input on this machine and read from the shared cache after: by every later job of a sweep, and by
    later stages with the same model (out-of-fold copies, generations)."""
    size, batches = int(ctx.cfg.data.image_size), latency_batches(ctx.cfg) if leader else []

    def measure() -> dict:
        return model_cost(model, ctx.data.in_chans, size, batches, latency_runtimes(ctx.cfg)).to_json()

    if not batches or launched_world_size() > 1:
        return measure()
    key, what, path = cost_entry(ctx, stage)
    stored, _ = load_or_build(path, key, what, lambda: {"cost": measure()}, str(ctx.run_dir), stage.name,
                              cache_bound(ctx.cfg))  # fmt: skip
    return stored["cost"]


def log_hparams_with_results(trainer: pl.Trainer, hparams: dict, metrics: dict) -> None:
    """TensorBoard's HPARAMS tab needs the hyper-parameters written together with result metrics."""
    results = {f"hparams/{k.rsplit('/', 2)[-2]}_{k.rsplit('/', 1)[-1]}": float(v) for k, v in metrics.items()}
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams({k: v for k, v in hparams.items() if k != "terms"}, metrics=results)
            lg.finalize("success")


def log_matched_temperature(trainer: pl.Trainer, stage: Stage, matched: MatchedTemperature | None) -> None:
    if matched is None:
        return
    for lg in trainer.loggers:
        lg.log_metrics({f"{stage.name}/matched_temperature": matched.temperature}, step=0)


def log_teacher_store(trainer: pl.Trainer, stage: Stage, store: dict | None) -> None:
    """The store's size on disk and the pass's time (0 when reused), as TensorBoard scalars."""
    if store is None:
        return
    values = {
        f"{stage.name}/teacher_store/size_mb": store["size_mb"],
        f"{stage.name}/teacher_store/pass_s": store["pass_s"],
    }
    for lg in trainer.loggers:
        lg.log_metrics(values, step=0)


def record(ctx: StageContext, stage: Stage, parts: StageParts, trainer: pl.Trainer, metrics: dict, chosen: Path,
           started: float, recovery: str | None, test_reused: str | None = None,
           timer: PartTimer | None = None, matched: MatchedTemperature | None = None) -> StageResult:  # fmt: skip
    """The stage's StageResult, with its model's cost, written to metrics.json."""
    module, ckpt_dir = parts.module, ctx.stage_dir(stage) / "checkpoints"
    store = parts.views.summary() if parts.views is not None else None
    log_teacher_store(trainer, stage, store)
    log_matched_temperature(trainer, stage, matched)
    log_hparams_with_results(trainer, dict(module.hparams), metrics)
    best = parts.checkpoint.best_model_score if stage.trains else None
    saved = {str(e): relative_to_run(epoch_checkpoint(ckpt_dir, e), ctx.run_dir)
             for e in stage.save_epochs if epoch_checkpoint(ckpt_dir, e).is_file()}  # fmt: skip
    if not stage.trains:  # a given checkpoint: the epochs its own run kept (absolute), for this run's `name@E`
        saved = {str(e): file for e, file in stage.given_epochs}
    leader = trainer.is_global_zero  # under DDP only the first rank measures and writes
    timer = timer or PartTimer()
    with timer.part("latency"):  # MACs, and latency in each runtime (an ONNX export for ONNX Runtime)
        cost = stage_cost(ctx, stage, module.model, leader)
    for runtime in cost["latency"].values():
        if runtime["note"]:
            print(f"[{stage.name}] {runtime['runtime']} latency {runtime['note']}", flush=True)
    curve = next((c for c in parts.callbacks if isinstance(c, ValidationCurve)), None)
    speed = curve.speed(stage.epochs) if curve is not None else LearningSpeed()
    result = StageResult(
        name=stage.name, index=stage.index, model=stage.model["name"], model_key=stage.model_key,
        model_cfg=stage.model, params=count_params(module.model), teachers=list(stage.teachers), terms=stage.terms,
        trained=stage.trains, epochs=stage.epochs if stage.trains else 0,
        checkpoint=relative_to_run(chosen, ctx.run_dir), select=stage.select,
        best_val_acc=None if best is None else float(best),
        test_acc=float(metrics[metric_name(stage.name, "test", "acc")]),
        test_loss=float(metrics[metric_name(stage.name, "test", "loss")]),
        test_per_class=module.test_per_class, classes=parts.classes, init=stage.init, epoch_checkpoints=saved,
        macs=cost["macs"], latency=cost["latency"], seconds=round(time.perf_counter() - started, 2),
        recovery=recovery, teacher_store=store, test_reused=test_reused, timing=timer.rounded(), **speed.to_json(),
        matched_temperature=None if matched is None else matched.to_json(), learned_params=module.loss.learned_params(),
    )  # fmt: skip
    if leader:
        result = replace(result, test_predictions=save_test_predictions(ctx, stage, module.test_predictions),
                         val_predictions=kept_val_predictions(ctx, stage, result.best_val_acc))  # fmt: skip
        atomic_write_json(ctx.stage_dir(stage) / "metrics.json", result.to_json())
    return result
