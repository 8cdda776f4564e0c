"""A mutual stage (pipeline=dml): its peers trained together in one Lightning fit (kdcl/training/mutual.py),
tested, and recorded as one stage each.

The fit, test, checkpoints, resume, curriculum and loggers are the stage runner's (kdcl/run/stage.py), run
under the group's name in the group's directory (`NN-dml`: the checkpoints holding every peer). After it, each
peer's chosen, last and kept-epoch checkpoints are written as one-model checkpoints in the peer's own stage
directory, so whatever reads a stage (summary, report card, kdcl eval and export, later stages' teachers and
init) reads a peer as it reads any stage. The chosen checkpoint is one for all peers: the best epoch by the
peers' mean validation accuracy (`<group>/val/acc`), so the peers handed on are the cohort of one moment.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch

from kdcl.common.io import atomic_write_json
from kdcl.common.metric_names import metric_name
from kdcl.common.timing import PartTimer
from kdcl.curriculum.builder import CurriculumInputs, build_curriculum
from kdcl.data.datamodule import StagePart
from kdcl.losses import DistillLoss
from kdcl.models import count_params
from kdcl.run.plan import Stage, mutual_stage
from kdcl.run.stage import (
    LAST,
    StageContext,
    StageParts,
    StageResult,
    ValidationCurve,
    epoch_checkpoint,
    fit,
    log_hparams_with_results,
    relative_to_run,
    save_test_predictions,
    scoring_models,
    speed_up,
    stage_callbacks,
    stage_cost,
    stage_hparams,
    stage_model,
    stage_optim,
    stage_trainer,
    test,
    training_examples,
)
from kdcl.training.mutual import MutualModule, peer_checkpoint


class PeerCurve(ValidationCurve):
    """One peer's validation accuracy after each epoch; its own state key, as several are in one checkpoint."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric=self.metric)


def build_mutual_parts(ctx: StageContext, group: Stage, peers: tuple[Stage, ...]) -> tuple[StageParts, list[dict]]:
    """The MutualModule (each peer built from its own seed, with its own input normalisation), the group's
    callbacks and curriculum, and each peer's hyper-parameters (saved in its one-model checkpoints)."""
    cfg = ctx.cfg
    models = [stage_model(ctx, peer) for peer in peers]
    pl.seed_everything(int(cfg.seed) + group.index, workers=True, verbose=False)
    train_set = training_examples(ctx, group, None)
    hparams = [{**stage_hparams(ctx, peer, model, None, None, None), "mutual": group.name, "peers": list(peer.peers)}
               for peer, model in zip(peers, models, strict=True)]  # fmt: skip
    losses = [DistillLoss(peer.loss_terms, peer.terms_key) for peer in peers]
    shared = {"stage": group.name, "config": hparams[0]["config"],  # the run's config once, as every stage has it
              "peers": [{k: v for k, v in hp.items() if k != "config"} for hp in hparams]}  # fmt: skip
    module = MutualModule(models, losses, stage_optim(cfg, group), group.name, [p.name for p in peers],
                          ctx.data.num_classes, shared)  # fmt: skip
    speed = cfg.get("speed") or {}
    speed_up(models, speed)
    checkpoint, callbacks = stage_callbacks(ctx, group)
    callbacks += [PeerCurve(peer.name) for peer in peers]
    sampler = None
    if group.curriculum:  # one data order for the cohort; a self-paced scorer reads the peers' mean logits
        inputs = CurriculumInputs(group.name, group.epochs, int(cfg.data.batch_size), int(cfg.seed) + group.index,
                                  train_set, ctx.data.scale, module.model,
                                  lambda: scoring_models(ctx, group, [], len(train_set)),
                                  eval_batch_size=int(cfg.data.eval_batch_size), workers=int(cfg.data.num_workers))  # fmt: skip
        sampler, callback = build_curriculum(cfg.curriculum, inputs, ctx.stage_dir(group))
        callbacks.append(callback)
        pl.seed_everything(int(cfg.seed) + group.index, workers=True, verbose=False)  # scoring used the RNG
    part = StagePart(train_set, sampler, channels_last=bool(speed.get("channels_last")))
    return StageParts(module, ctx.data.for_stage(part), callbacks, checkpoint, None), hparams


def run_mutual(ctx: StageContext, peers: tuple[Stage, ...]) -> list[StageResult]:
    """Fit the peers together (a stopped group continues from its last checkpoint), test each, and record
    each as its own stage."""
    started, timer = time.perf_counter(), PartTimer()
    group = mutual_stage(peers)
    with timer.part("prepare"):
        parts, hparams = build_mutual_parts(ctx, group, peers)
        trainer = stage_trainer(ctx, group, parts)
    with timer.part("train"):
        chosen, recovery = fit(trainer, parts, group, ctx.stage_dir(group) / "checkpoints")
    with timer.part("test"):
        metrics = test(trainer, parts, chosen)
    log_hparams_with_results(trainer, {"stage": group.name, "peers": ", ".join(p.name for p in peers)}, metrics)
    module, leader = parts.module, trainer.is_global_zero
    assert isinstance(module, MutualModule)
    with timer.part("latency"):
        costs = [stage_cost(ctx, peer, model, leader) for peer, model in zip(peers, module.model.peers, strict=True)]
    files = [peer_files(ctx, group, peer, k, hparams[k], chosen, leader) for k, peer in enumerate(peers)]
    trainer.strategy.barrier("kdcl-peer-checkpoints")  # later stages (any rank) read the peers' files
    epoch = int(torch.load(chosen, map_location="cpu", weights_only=True)["epoch"])
    curves = {c.metric: c for c in parts.callbacks if isinstance(c, PeerCurve)}
    seconds, results = round(time.perf_counter() - started, 2), []
    for k, peer in enumerate(peers):
        curve = curves[metric_name(peer.name, "val", "acc")]
        results.append(StageResult(
            name=peer.name, index=peer.index, model=peer.model["name"], model_key=peer.model_key,
            model_cfg=peer.model, params=count_params(module.model.peers[k]), teachers=[], terms=peer.terms,
            trained=True, epochs=peer.epochs, checkpoint=files[k][0], select=peer.select,
            best_val_acc=curve.values.get(epoch), test_acc=float(metrics[metric_name(peer.name, "test", "acc")]),
            test_loss=float(metrics[metric_name(peer.name, "test", "loss")]),
            test_per_class=module.test_per_class[peer.name], classes=None, init=peer.init,
            epoch_checkpoints=files[k][1], macs=costs[k]["macs"], latency=costs[k]["latency"], seconds=seconds,
            recovery=recovery, timing=timer.rounded(), **curve.speed(peer.epochs).to_json(), mutual=group.name,
            peers=list(peer.peers),
        ))  # fmt: skip
    return [record_peer(ctx, peer, result, module, leader) for peer, result in zip(peers, results, strict=True)]


def peer_files(ctx: StageContext, group: Stage, peer: Stage, k: int, hparams: dict, chosen: Path,
               leader: bool) -> tuple[str, dict[str, str]]:  # fmt: skip
    """Peer k's one-model checkpoints in its stage directory (written by the leader): the chosen one, the last
    one (the report card compares them) and those after the epochs later stages read. Returns (chosen, {E:
    after epoch E}) relative to the run."""
    shared, own = ctx.stage_dir(group) / "checkpoints", ctx.stage_dir(peer) / "checkpoints"
    pairs = {chosen: own / chosen.name, shared / f"{LAST}.ckpt": own / f"{LAST}.ckpt"}
    pairs |= {epoch_checkpoint(shared, e): epoch_checkpoint(own, e) for e in peer.save_epochs}
    pairs = {source: out for source, out in pairs.items() if source.is_file()}  # a stage may stop before epoch E
    if leader:
        own.mkdir(parents=True, exist_ok=True)
        for source, out in pairs.items():
            peer_checkpoint(source, k, hparams, out)
    saved = {str(e): relative_to_run(epoch_checkpoint(own, e), ctx.run_dir)
             for e in peer.save_epochs if epoch_checkpoint(shared, e).is_file()}  # fmt: skip
    return relative_to_run(own / chosen.name, ctx.run_dir), saved


def record_peer(ctx: StageContext, peer: Stage, result: StageResult, module: MutualModule,
                leader: bool) -> StageResult:  # fmt: skip
    """The leader keeps the peer's test logits (the report card reads them) and writes its metrics.json."""
    if not leader:
        return result
    predictions = save_test_predictions(ctx, peer, module.test_predictions.get(peer.name))
    result = replace(result, test_predictions=predictions)
    atomic_write_json(ctx.stage_dir(peer) / "metrics.json", result.to_json())
    return result
