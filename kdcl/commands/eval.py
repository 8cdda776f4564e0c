"""`kdcl eval RUN_DIR|CHECKPOINT [stage=NAME] [data=...] [cascade=true]`: test a run's model (or any kdcl
checkpoint) again, optionally on other data, through the same Trainer factory and data view as training;
with cascade=true the student answers and the run's teacher takes what it is unsure of
(kdcl/deploy/cascade_eval.py)."""

from __future__ import annotations

import json

import torch

from kdcl.common.errors import KdclError
from kdcl.common.metric_names import metric_name
from kdcl.data.datamodule import StagePart
from kdcl.deploy.cascade_eval import cascade_eval
from kdcl.deploy.locate import load_stage, locate
from kdcl.losses import DistillLoss
from kdcl.run.plan import HARD_LABELS
from kdcl.training.module import DistillationModule
from kdcl.training.trainer import build_trainer, quiet_libraries


def eval_command(args: list[str]) -> dict:
    quiet_libraries()
    if not args or args[0].startswith("-"):
        raise KdclError("kdcl eval needs a run directory or a checkpoint: kdcl eval RUN_DIR [stage=NAME] [data=...] "
                        "[cascade=true]")  # fmt: skip
    target, overrides = args[0], args[1:]
    stage = next((o.split("=", 1)[1] for o in overrides if o.startswith("stage=")), None)
    overrides = [o for o in overrides if not o.startswith("stage=")]
    if cascade_flag(overrides):  # the student answers, the run's teacher takes what it is unsure of
        return cascade_eval(target, stage, overrides)
    overrides = [o for o in overrides if o.split("=", 1)[0] != "cascade"]
    loaded = load_stage(locate(target, stage), overrides)
    cfg, hp, dm, seen = loaded.located.cfg, loaded.located.hparams, loaded.data, loaded.seen_classes
    module = DistillationModule(loaded.model, [], DistillLoss(HARD_LABELS), cfg.optim, hp["stage"], dm.num_classes, hp,
                                seen_classes=seen)  # fmt: skip
    gpu = torch.cuda.is_available()  # a GPU-trained run can be checked on a laptop, and the other way round
    trainer = build_trainer(cfg.trainer, accelerator="gpu" if gpu else "cpu", devices=1, num_nodes=1, strategy="auto",
                            precision=cfg.trainer.precision if gpu else "32-true", limit_test_batches=None)  # fmt: skip
    metrics = trainer.test(module, datamodule=dm.for_stage(StagePart(eval_classes=seen)), verbose=False)[0]
    result = {
        "stage": hp["stage"],
        "model": hp["model"]["name"],
        "checkpoint": str(loaded.located.checkpoint),
        "data": cfg.data.name,
        "test_examples": len(loaded.test_set),
        "test_acc": float(metrics[metric_name(hp["stage"], "test", "acc")]),
        "test_loss": float(metrics[metric_name(hp["stage"], "test", "loss")]),
    }
    print(f"{result['stage']} ({result['model']}) on {result['data']} test ({result['test_examples']} images): "
          f"acc {result['test_acc']:.4f}  loss {result['test_loss']:.4f}")  # fmt: skip
    print(json.dumps(result))
    return result


def cascade_flag(overrides: list[str]) -> bool:
    """`cascade=true|false` (the last one given), checked before anything is loaded."""
    values = [o.split("=", 1)[1].strip().lower() for o in overrides if o.split("=", 1)[0] == "cascade"]
    if values and values[-1] not in ("true", "false"):
        raise KdclError(f"cascade={values[-1]} must be true or false")
    if (not values or values[-1] == "false") and any(o.startswith("cascade.") for o in overrides):
        raise KdclError("cascade.* settings apply to kdcl eval RUN_DIR cascade=true; add cascade=true")
    return bool(values) and values[-1] == "true"
