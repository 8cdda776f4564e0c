"""Check a composed config once, before any heavy work, and plan it: `check_config` runs the torch-free
checks of kdcl/config/checks.py, builds the `Plan` (loss terms parsed, stages, curriculum) and then checks
what needs models, files, the data or Lightning. Every mistake is one KdclError naming the key. The heavy
imports stay inside the functions: importing this module loads neither torch nor Lightning."""

from __future__ import annotations

import os
from contextlib import contextmanager

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from kdcl.common.errors import KdclError, show
from kdcl.config.checks import check_values, plain, schema_error

_PLANS: dict[str, object] = {}  # config text -> its Plan: a job checked before Hydra starts is not planned twice


@contextmanager
def one_line_errors():
    """A key the config lacks or a value of the wrong type, as one KdclError naming the key."""
    try:
        yield
    except (ConfigAttributeError, ConfigKeyError) as exc:
        raise KdclError(f"the config has no '{exc.full_key}'; do not delete it (~{exc.full_key}) or set it") from None
    except ValidationError as exc:
        raise schema_error(exc) from None


def check_values_only(cfg: DictConfig) -> None:
    """The torch-free checks alone: a sweep's points all pass them before any point loads torch."""
    with one_line_errors():
        check_values(cfg)


def check_config(cfg: DictConfig):
    """Validate `cfg` and return its Plan (kdcl.run.plan.Plan), whose config holds plain values."""
    with one_line_errors():
        text = os.getcwd() + "\n" + OmegaConf.to_yaml(cfg, resolve=False)  # relative paths: per directory
        if text not in _PLANS:
            check_values(cfg)
            _PLANS[text] = plan_checked(plain(cfg))
        return _PLANS[text]


def plan_checked(cfg: DictConfig):
    """The Plan, and the checks that need torch, timm, Lightning or the data."""
    from kdcl.data.registry import get_loader
    from kdcl.run.plan import build_plan
    from kdcl.training.trainer import check_trainer_values

    plan = build_plan(cfg)
    checked = set()
    for stage in plan.stages:
        if stage.model_key not in checked:
            checked.add(stage.model_key)
            check_model_node(stage.model, stage.model_key)
    get_loader(cfg.data.name)
    check_feature_taps(plan.stages, int(cfg.data.image_size))
    check_scores_file(plan)
    check_view_stores(plan)
    check_memory_banks(plan)
    check_trainer_values(cfg.trainer)
    check_augment_policy(cfg)
    return plan


def check_augment_policy(cfg) -> None:
    """timm reads augment.auto_augment's policy string when it builds the transform: build it once here."""
    aug = cfg.get("augment")
    if aug is None or str(aug.crop) != "rrc":
        return
    from kdcl.data.augment import per_image_transform

    try:
        per_image_transform(aug, int(cfg.data.image_size), (0.5,) * 3)
    except Exception as exc:  # timm asserts or raises on a policy it cannot parse
        reason = f"{type(exc).__name__}: {str(exc)[:120]}"
        if aug.auto_augment:
            raise KdclError(f"augment.auto_augment '{aug.auto_augment}' is not a timm policy ({reason}); e.g. "
                            "rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original") from None  # fmt: skip
        raise KdclError(f"augment: timm could not build the training transform ({reason}); check augment.*") from None


def check_model_node(node: dict, key: str) -> None:
    """A timm name (checked without importing timm), a drop rate, and readable weight files."""
    from kdcl.common.io import check_weights_file
    from kdcl.models.names import check_model_name

    check_model_name(node.get("name"), f"{key}.name")
    drop_rate = node.get("drop_rate", 0.0)
    if not isinstance(drop_rate, (int, float)) or isinstance(drop_rate, bool) or not 0 <= drop_rate < 1:
        raise KdclError(f"{key}.drop_rate={show(drop_rate)} must be a number in [0, 1)")
    pretrained = node.get("pretrained", False)
    if not isinstance(pretrained, bool):
        raise KdclError(f"{key}.pretrained={show(pretrained)} must be true or false")
    if pretrained and node.get("weights"):
        raise KdclError(f"{key}.pretrained=true and {key}.weights are both set; keep one (weights: a local file, "
                        "pretrained: timm's own)")  # fmt: skip
    for field in ("weights", "checkpoint"):
        if node.get(field):
            check_weights_file(node[field], f"{key}.{field}")
    if pretrained and not node.get("checkpoint"):
        from kdcl.models.hub import check_pretrained_available

        check_pretrained_available(node["name"], key)


def check_feature_taps(stages, image_size: int) -> None:
    """Resolve every feature tap on shape-only (meta-device) models: a bad tap fails before any training."""
    import torch

    from kdcl.losses import DistillLoss
    from kdcl.models.factory import create_skeleton

    by_name = {s.name: s for s in stages}
    for stage in stages:
        loss = DistillLoss(stage.loss_terms, stage.terms_key)
        if not (loss.feature_terms and stage.teachers):
            continue
        names = [stage.model["name"], *(by_name[t].model["name"] for t in stage.teacher_stages)]
        models = [create_skeleton(name, image_size) for name in names]
        if any(m is None for m in models):
            continue  # the model cannot be built shape-only; its stage checks the taps at start instead
        loss.attach(models[0], models[1:], torch.empty(1, 3, image_size, image_size, device="meta"), names)


def check_scores_file(plan) -> None:
    """scorer=file: one score per training example of every stage the curriculum applies to (needs the data)."""
    c = plan.cfg.curriculum
    if c.pacing == "none" or c.scorer != "file":
        return
    from kdcl.curriculum.scoring import file_scores
    from kdcl.data import KdclDataModule
    from kdcl.run.presets import task_classes

    dm = KdclDataModule(plan.cfg.data, seed=plan.cfg.seed)
    dm.setup()
    for stage in plan.stages:
        if stage.curriculum:
            classes = task_classes(stage.task, dm.num_classes)[0] if stage.task else None
            file_scores(c.scores_file, len(dm.stage_subset(stage.fraction, classes)))


def several_processes(trainer) -> bool:
    """Whether the Trainer runs data-parallel ranks: a DDP strategy, several devices, or a launcher's ranks."""
    devices = trainer.get("devices", 1)
    return ("ddp" in str(trainer.get("strategy", "auto")) or (isinstance(devices, int) and devices > 1)
            or int(os.environ.get("WORLD_SIZE", "1")) > 1)  # fmt: skip


def check_memory_banks(plan) -> None:
    """CRD: each stage's memory bank must fit its training examples and max_bank_mb, found before any stage
    trains (this needs the labels, so it loads the data, as check_view_stores does)."""
    stages = [(s, t) for s in plan.stages for t in s.loss_terms
              if t.spec.needs_index and t.active]  # fmt: skip
    if not stages:
        return
    if several_processes(plan.cfg.trainer):
        stage, term = stages[0]
        raise KdclError(f"{stage.terms_key}.{term.name}: CRD's memory bank is not synchronised across DDP ranks "
                        "(each would keep its own, and DDP would overwrite them with rank 0's); train it in one "
                        "process (trainer=default, cpu or gpu)")  # fmt: skip
    from kdcl.data import KdclDataModule
    from kdcl.data.datamodule import dataset_labels
    from kdcl.losses.learned import check_bank
    from kdcl.losses.terms import defaults_of
    from kdcl.run.presets import task_classes

    dm = KdclDataModule(plan.cfg.data, seed=plan.cfg.seed)
    dm.setup()
    for stage, term in stages:
        classes = task_classes(stage.task, dm.num_classes)[0] if stage.task else None
        labels = dataset_labels(dm.stage_subset(stage.fraction, classes))
        banks = len(stage.teachers) * len(term.taps.get("student_tap") or [None])  # one per teacher and tap pair
        check_bank(f"{stage.terms_key}.{term.name}", labels, {**defaults_of(term.spec.fn), **term.params}, banks)


def check_view_stores(plan) -> None:
    """distill.teacher_outputs=views with distill.store_max_mb: each stage's store must fit the budget (on
    disk and in memory), found before any pass (this needs the data's size, so it loads the data; the
    cache's free space is checked by each stage before its pass)."""
    budget = plan.cfg.distill.get("store_max_mb")
    stages = [s for s in plan.stages if s.teacher_outputs == "views"]
    if budget is None or not stages:
        return
    from kdcl.data import KdclDataModule
    from kdcl.run.presets import task_classes
    from kdcl.teachers.views import ViewSpec, store_problem

    cfg = plan.cfg
    dm = KdclDataModule(cfg.data, seed=cfg.seed)
    dm.setup()
    for stage in stages:
        classes = task_classes(stage.task, dm.num_classes)[0] if stage.task else None
        n = len(dm.stage_subset(stage.fraction, classes))
        spec = ViewSpec.of(cfg, dm.num_classes, stage.curriculum, stage.epochs)
        problem = store_problem(stage.name, n, dm.num_classes, len(stage.teachers), spec, budget, None)
        if problem:
            raise KdclError(problem)
