"""One stage = one Lightning Trainer fit + test, written under <run>/stages/NN-<name>/."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from kdcl.callbacks import KeepRandomState, SaveAfterEpochs, progress_callbacks
from kdcl.curriculum import builder as curriculum
from kdcl.curriculum.builder import EARLY_CHECKPOINT
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import unaugmented
from kdcl.io import atomic_write_json
from kdcl.losses import DistillLoss
from kdcl.models import count_params, create_model
from kdcl.models.cost import model_cost
from kdcl.models.factory import load_kdcl_checkpoint
from kdcl.module import DistillationModule
from kdcl.pipeline.plan import Stage, split_ref
from kdcl.pipeline.presets import task_classes
from kdcl.teacher_outputs import TeacherOutputs, choose_mode


def relative_to_run(path: Path, run_dir: Path) -> str:
    """Checkpoints inside the run are recorded relative to it, so a run directory can be moved."""
    path = path.resolve()
    try:
        return str(path.relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def build_model(model_cfg: dict, dm: KdclDataModule, image_size: int, key: str):
    return create_model(OmegaConf.create(model_cfg), dm.num_classes, dm.in_chans, image_size, key)


def build_loggers(cfg: DictConfig, run_dir: Path, stage: Stage) -> list:
    """Each configured logger writes to <run>/<logger>/<NN-stage>/ (e.g. tensorboard/01-student)."""
    loggers = []
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is None:
            continue
        loggers.append(instantiate(spec, save_dir=str(run_dir / name), name=stage.dirname, version=""))
    return loggers


def make_trainer(cfg: DictConfig, stage: Stage, stage_dir: Path, run_dir: Path, callbacks: list,
                 own_sampler: bool = False) -> pl.Trainer:  # fmt: skip
    t = cfg.trainer
    progress, bar = progress_callbacks(t.progress_bar, stage.name)
    loggers = build_loggers(cfg, run_dir, stage)
    if stage.trains and loggers:
        callbacks = [*callbacks, LearningRateMonitor(logging_interval="step")]  # needs a logger to write to
    return pl.Trainer(
        max_epochs=stage.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        callbacks=callbacks + progress,
        logger=loggers or False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(stage_dir),
        use_distributed_sampler=not own_sampler,  # a curriculum sampler splits batches across ranks itself
    )


def teacher_checkpoint(ref: str, handed: dict[str, dict], run_dir: Path) -> str:
    """The file a teacher reference points at: `name` → its chosen checkpoint, `name@E` → after epoch E."""
    name, epoch = split_ref(ref)
    relative = handed[name]["checkpoint"] if epoch is None else handed[name]["epoch_checkpoints"][str(epoch)]
    return str(run_dir / relative)


def epoch_checkpoint(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"epoch-{epoch}.ckpt"


def speed_up(module: DistillationModule, t: DictConfig, dm: KdclDataModule) -> None:
    """GPU switches: channels-last memory format (models and batches) and torch.compile of the student and
    the teachers. nn.Module.compile keeps state-dict keys, so checkpoints and hand-offs are unchanged."""
    if t.get("channels_last"):
        for m in (module.model, *(teacher.model for teacher in module.teachers)):
            m.to(memory_format=torch.channels_last)
        dm.channels_last = True
    if t.get("compile"):
        module.model.compile()
        for teacher in module.teachers:
            teacher.model.compile()


def log_hparams_with_results(trainer: pl.Trainer, hparams: dict, metrics: dict) -> None:
    """TensorBoard's HPARAMS tab needs the hyper-parameters written together with result metrics."""
    results = {f"hparams/{k.rsplit('/', 2)[-2]}_{k.rsplit('/', 1)[-1]}": float(v) for k, v in metrics.items()}
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams({k: v for k, v in hparams.items() if k != "terms"}, metrics=results)
            lg.finalize("success")


def run_stage(cfg: DictConfig, stage: Stage, dm: KdclDataModule, run_dir: Path, handed: dict[str, dict]) -> dict:
    """Fit (unless the model is a given checkpoint) and test one stage; returns its metrics.json content.

    `handed` maps earlier stage names to their results; their chosen checkpoints become this
    stage's frozen teachers.
    """
    stage_dir = run_dir / "stages" / stage.dirname
    ckpt_dir = stage_dir / "checkpoints"
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed) + stage.index, workers=True, verbose=False)
    image_size = int(cfg.data.image_size)
    model = build_model(stage.model, dm, image_size, stage.model_key)
    if stage.init:  # carry an earlier stage's weights on (fine-tune, anchors, class-incremental tasks)
        state, _ = load_kdcl_checkpoint(
            run_dir / handed[stage.init]["checkpoint"], f"pipeline.stages.{stage.name}.init"
        )
        model.load_state_dict(state)
    classes = seen = old = None
    if stage.task:
        classes, seen, old = task_classes(stage.task, dm.num_classes)

    def make_teacher(name: str, checkpoint: str | None):
        """Stage `name`'s model: from `checkpoint`, or freshly initialised as its config says (None)."""
        model_cfg = {**handed[name]["model_cfg"], "checkpoint": checkpoint}
        if checkpoint is not None:
            model_cfg["weights"] = None
        return build_model(model_cfg, dm, image_size, f"pipeline.stages.{name}")

    teachers = [make_teacher(split_ref(t)[0], teacher_checkpoint(t, handed, run_dir)) for t in stage.teachers]
    hparams = {
        "stage": stage.name,
        "model_key": stage.model_key,
        "model": stage.model,
        "num_classes": dm.num_classes,
        "in_chans": dm.in_chans,
        "image_size": image_size,
        "teachers": list(stage.teachers),
        "terms": stage.terms,
        "fraction": stage.fraction,
        "init": stage.init,
        "classes": classes,
        "curriculum": OmegaConf.to_container(cfg.curriculum) if curriculum.applies(cfg, stage) else None,
        "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    optim = cfg.optim
    if stage.lr_scale != 1.0:
        optim = OmegaConf.merge(cfg.optim, {"lr": float(cfg.optim.lr) * stage.lr_scale})
    loss = DistillLoss(stage.terms, stage.terms_key)
    train_set = dm.stage_subset(stage.fraction, classes)
    outputs = None
    if stage.trains and teachers and loss.needs_teacher:
        mode = choose_mode(cfg.distill.get("teacher_outputs", "online"), bool(cfg.data.augment),
                           [t.name for t in loss.feature_terms])  # fmt: skip
        if mode == "cached":
            plain = unaugmented(train_set)
            outputs = TeacherOutputs.open(teachers, plain, dm, cfg, stage_dir, stage.name)
            if curriculum.applies(cfg, stage):  # paced epochs meet the data piecemeal: store it all in one pass
                outputs.fill(teachers, plain, dm.normalize, int(cfg.data.eval_batch_size), stage.name)
    hparams["teacher_outputs"] = "cached" if outputs is not None else "online"
    module = DistillationModule(model, teachers, loss, optim, stage.name, dm.num_classes, hparams,
                                seen_classes=seen, distill_classes=old, teacher_outputs=outputs)  # fmt: skip
    speed_up(module, cfg.trainer, dm)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=f"{stage.name}/val/acc",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, KeepRandomState()] if stage.trains else []
    keep_after: dict[int, list[Path]] = {e: [epoch_checkpoint(ckpt_dir, e)] for e in stage.save_epochs}
    curriculum_cfg = cfg.get("curriculum")
    if curriculum_cfg and curriculum_cfg.pacing != "none" and curriculum_cfg.source == "early":
        keep_after.setdefault(int(curriculum_cfg.early_epoch), []).append(ckpt_dir / EARLY_CHECKPOINT)
    if stage.trains and keep_after:
        callbacks.append(SaveAfterEpochs(keep_after))
    sampler = None
    if curriculum.applies(cfg, stage):
        sampler, callback = curriculum.build_curriculum(
            cfg, stage, dm, train_set, model, teachers, make_teacher, stage_dir, run_dir, handed, outputs
        )
        callbacks.append(callback)
        pl.seed_everything(int(cfg.seed) + stage.index, workers=True, verbose=False)  # scoring used the RNG
    dm.use_stage(train_set, sampler, eval_classes=seen, with_index=outputs is not None)
    trainer = make_trainer(cfg, stage, stage_dir, run_dir, callbacks, own_sampler=sampler is not None)

    if stage.trains:
        last = ckpt_dir / "last.ckpt"
        resume_from = str(last) if last.is_file() else None  # a stage stopped mid-way continues
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        chosen = (
            checkpoint.best_model_path
            if stage.select == "best" and checkpoint.best_model_path
            else checkpoint.last_model_path
        )
        chosen = chosen or str(last)
        tested = trainer.test(module, datamodule=dm, ckpt_path=chosen, verbose=False, weights_only=True)
    else:
        chosen = str(Path(stage.model["checkpoint"]).resolve())
        tested = trainer.test(module, datamodule=dm, verbose=False)

    metrics = tested[0] if tested else {}
    log_hparams_with_results(trainer, hparams, metrics)
    result = {
        "name": stage.name,
        "index": stage.index,
        "model": stage.model["name"],
        "model_key": stage.model_key,
        "model_cfg": stage.model,
        "params": count_params(model),
        "teachers": list(stage.teachers),
        "terms": stage.terms,
        "trained": stage.trains,
        "epochs": stage.epochs if stage.trains else 0,
        "checkpoint": relative_to_run(Path(chosen), run_dir),
        "select": stage.select,
        "best_val_acc": float(checkpoint.best_model_score)
        if stage.trains and checkpoint.best_model_score is not None
        else None,
        "test_acc": float(metrics[f"{stage.name}/test/acc"]),
        "test_loss": float(metrics[f"{stage.name}/test/loss"]),
        "test_per_class": module.test_per_class,
        "classes": classes,
        "init": stage.init,
        "epoch_checkpoints": {
            str(e): relative_to_run(epoch_checkpoint(ckpt_dir, e), run_dir)
            for e in stage.save_epochs
            if epoch_checkpoint(ckpt_dir, e).is_file()
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    batches = [int(b) for b in (cfg.get("report") or {}).get("latency_batches", [1, 64])]
    result.update(model_cost(module.model, dm.in_chans, image_size, batches))
    result["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(stage_dir / "metrics.json", result)
    return result
