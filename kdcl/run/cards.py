"""The report card of every stage of a finished run (kdcl/reporting/card.py): the test-set predictions of
its chosen and its last checkpoint, against the run's first model (the summary's reference)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from kdcl.common.cache import cache_bound, load_or_build, store_path
from kdcl.data.datamodule import StagePart
from kdcl.losses.ensemble import ensemble_logits
from kdcl.models import load_kdcl_checkpoint
from kdcl.models.predictions import Predictions, predict
from kdcl.reporting.card import Card, build_card
from kdcl.run.plan import Stage
from kdcl.run.presets import task_classes
from kdcl.run.stage import StageContext, StageResult, given_model_key


def last_checkpoint(ctx: StageContext, stage: Stage, result: StageResult) -> Path:
    """The checkpoint after the stage's last epoch (the chosen one for a stage that only tests a model)."""
    last = ctx.stage_dir(stage) / "checkpoints" / "last.ckpt"
    return last if result.trained and last.is_file() else ctx.run_dir / result.checkpoint


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same model (best is often the last epoch): one test pass then serves both."""
    if a.resolve() == b.resolve():
        return True
    (first, _), (second, _) = load_kdcl_checkpoint(a, "checkpoint"), load_kdcl_checkpoint(b, "checkpoint")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_predictions(ctx: StageContext, stage: Stage, result: StageResult, checkpoint: Path) -> Predictions:
    """The model's logits on the test images its stage was tested on (a class-incremental stage: the
    classes seen so far), in the stage's test batches (trainer.limit_test_batches too)."""
    seen = task_classes(stage.task, ctx.data.num_classes)[1] if stage.task else None
    own = ctx.run_dir / result.test_predictions if result.test_predictions else None
    if own is not None and own.is_file() and checkpoint == ctx.run_dir / result.checkpoint:
        return Predictions(**torch.load(own, weights_only=True))  # the stage's test: no second pass

    def run() -> Predictions:
        model = ctx.build_model(result.model_cfg, result.model_key, checkpoint)
        loader = ctx.data.for_stage(StagePart(eval_classes=seen)).test_dataloader()
        return predict(model, loader, ctx.data.scale, seen, ctx.cfg.trainer.get("limit_test_batches"))

    if stage.trains:
        return run()
    # a given model (a sweep's shared teacher): its test predictions are the same in every job
    key, what = given_model_key(ctx.cfg, "predictions", checkpoint, seen, result.model_cfg)
    path = store_path(ctx.cfg, "predictions", result.model, key)
    stored, _ = load_or_build(
        path, key, what, lambda: asdict(run()), str(ctx.run_dir), stage.name, cache_bound(ctx.cfg)
    )
    return Predictions(**stored)


def ensemble_card(stage: Stage, chosen: dict[str, Predictions], reference: Predictions) -> Card | None:
    """The card of the target a stage distilled from several teachers' ensemble (stage.ensemble): the
    teachers' chosen test predictions combined as in training; None when there is none to show."""
    names = stage.teachers
    if stage.ensemble == "none" or len(names) < 2 or not all(n in chosen for n in names):
        return None  # teachers at an epoch (name@E) have no card of their own to combine
    preds = [chosen[n] for n in names]
    combined = Predictions(ensemble_logits([p.logits for p in preds], stage.ensemble), preds[0].labels)
    return build_card(f"{stage.name}:ensemble", f"{stage.ensemble} of {'+'.join(names)}", combined, combined, reference)


def stage_cards(ctx: StageContext, stages: list[Stage]) -> list[Card]:
    """One card per stage (in order), each against the first stage's chosen model; before a stage that
    learns from an ensemble of teachers, the ensemble's own card."""
    cards, reference, chosen_of = [], None, {}
    for stage in stages:
        result = ctx.handed[stage.name]
        chosen_path, last_path = ctx.run_dir / result.checkpoint, last_checkpoint(ctx, stage, result)
        chosen = test_predictions(ctx, stage, result, chosen_path)
        last = chosen if same_weights(chosen_path, last_path) else test_predictions(ctx, stage, result, last_path)
        reference = reference or chosen
        chosen_of[stage.name] = chosen
        target = ensemble_card(stage, chosen_of, reference)
        cards += [target] if target else []
        cards.append(build_card(stage.name, result.model, chosen, last, reference))
    return cards
