"""Check a composed config before any heavy work: every mistake is one KdclError naming the key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, InterpolationResolutionError, MissingMandatoryValue

from kdcl.confdir import config_dir  # noqa: F401  (re-exported)
from kdcl.data.registry import get_loader
from kdcl.errors import KdclError, did_you_mean
from kdcl.io import check_weights_file
from kdcl.losses.terms import parse_terms
from kdcl.models import check_model_cfg
from kdcl.optim import check_optim
from kdcl.pipeline.plan import plan_stages


def fraction_in(value, key: str, low_open: bool = True, high_closed: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if low_open else value >= 0) and (value <= 1 if high_closed else value < 1)
    if not ok:
        rng = ("(0" if low_open else "[0") + ", " + ("1]" if high_closed else "1)")
        raise KdclError(f"{key}={value} must be a fraction in {rng}")


def positive_int(value, key: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise KdclError(f"{key}={value} must be an integer ≥ {minimum}")


def resolve_all(cfg: DictConfig) -> None:
    """Fail on `???` values and broken interpolations with the key's name."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        raise KdclError(f"{key} is required here and has no value; set it on the command line ({key}=...)") from None
    except InterpolationResolutionError as exc:
        raise KdclError(f"{exc.full_key}: cannot resolve its value ({exc.msg}); fix or override the key") from None


def check_data(d: DictConfig) -> None:
    get_loader(d.name)
    fraction_in(d.fraction, "data.fraction")
    fraction_in(d.val_fraction, "data.val_fraction", low_open=False, high_closed=False)
    if d.get("test_fraction") is not None:
        fraction_in(d.test_fraction, "data.test_fraction", high_closed=False)
    positive_int(d.image_size, "data.image_size", 8)
    positive_int(d.batch_size, "data.batch_size")
    positive_int(d.eval_batch_size, "data.eval_batch_size")
    positive_int(d.num_workers, "data.num_workers", 0)
    if d.get("on_device", "auto") not in (True, False, "auto"):
        raise KdclError(f"data.on_device={d.on_device} must be true, false or auto")
    positive_int(d.epochs, "data.epochs")
    if d.get("root") and not d.get("download") and not Path(d.root).exists():
        raise KdclError(
            f"data.root '{d.root}' does not exist; point it at the {d.name} files or set data.download=true"
        )


def check_model_files(node: DictConfig, key: str) -> None:
    for field in ("weights", "checkpoint"):
        if node.get(field):
            check_weights_file(node[field], f"{key}.{field}")


_TRAINER_OK: set[str] = set()  # settings Lightning accepted already in this process (sweeps repeat them)


def check_trainer(t: DictConfig) -> None:
    """Let Lightning itself judge accelerator, devices, strategy and precision (no GPU work)."""
    import pytorch_lightning as pl

    settings = repr([t.accelerator, t.devices, t.strategy, t.num_nodes, t.precision])
    if settings in _TRAINER_OK:
        return
    try:
        pl.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                   precision=t.precision, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False)  # fmt: skip
    except Exception as exc:
        what = f"accelerator={t.accelerator} devices={t.devices} strategy={t.strategy} precision={t.precision}"
        raise KdclError(
            f"trainer ({what}): {str(exc).splitlines()[0][:200]}; on a CPU-only machine use trainer=cpu"
        ) from None
    _TRAINER_OK.add(settings)


def check_config(cfg: DictConfig) -> None:
    """Validate everything that can be validated without data or models (milliseconds)."""
    try:
        check_values(cfg)
    except ConfigAttributeError as exc:
        raise KdclError(f"the config has no '{exc.full_key}'; do not delete it (~{exc.full_key}) or set it") from None
    except (TypeError, ValueError) as exc:
        raise KdclError(
            f"a config value has the wrong type ({str(exc).splitlines()[0][:160]}); check the overrides"
        ) from None


def check_values(cfg: DictConfig) -> None:
    resolve_all(cfg)
    if not isinstance(cfg.seed, int):
        raise KdclError(f"seed={cfg.seed} must be an integer")
    check_data(cfg.data)
    check_optim(cfg.optim)
    positive_int(cfg.trainer.max_epochs, "trainer.max_epochs")
    check_trainer(cfg.trainer)
    temperature = cfg.distill.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature <= 0):
        raise KdclError(f"distill.temperature={temperature} must be > 0 (e.g. 4)")
    parse_terms(cfg.distill.terms)
    if cfg.trainer.progress_bar not in ("auto", "rich", "lines", "none"):
        raise KdclError(f"trainer.progress_bar '{cfg.trainer.progress_bar}' must be auto|rich|lines|none")
    batches = (cfg.get("report") or {}).get("latency_batches", [])
    if not isinstance(batches, ListConfig) or not all(isinstance(b, int) and b >= 1 for b in batches):
        raise KdclError(f"report.latency_batches={batches} must list batch sizes ≥ 1, e.g. [1,64] (or [] to skip)")
    stages = plan_stages(cfg)
    check_teacher_outputs(cfg, stages)
    check_curriculum(cfg, stages)
    checked = set()
    for stage in stages:
        if stage.model_key in checked:
            continue
        checked.add(stage.model_key)
        check_model_cfg(stage.model, stage.model_key)
        check_model_files(stage.model, stage.model_key)
    check_feature_taps(stages, int(cfg.data.image_size))


def check_teacher_outputs(cfg: DictConfig, stages: list) -> None:
    """`distill.teacher_outputs` is valid, and `cached` only where a stored logit is exact."""
    from kdcl.losses import DistillLoss
    from kdcl.teacher_outputs import choose_mode

    mode = cfg.distill.get("teacher_outputs", "online")
    choose_mode(mode, False, [])
    for stage in stages:
        loss = DistillLoss(stage.terms, stage.terms_key)
        if stage.trains and stage.teachers and loss.needs_teacher:
            choose_mode(mode, bool(cfg.data.augment), [t.name for t in loss.feature_terms])


def train_classes(stage, dm) -> list[int] | None:
    from kdcl.pipeline.presets import task_classes

    return task_classes(stage.task, dm.num_classes)[0] if stage.task else None


def check_feature_taps(stages: list, image_size: int) -> None:
    """Resolve every feature tap on shape-only (meta-device) models: a bad tap fails before any training."""
    import torch

    from kdcl.losses import DistillLoss
    from kdcl.models.factory import create_skeleton

    by_name = {s.name: s for s in stages}
    for stage in stages:
        loss = DistillLoss(stage.terms, stage.terms_key)
        if not (loss.feature_terms and stage.teachers):
            continue
        names = [stage.model["name"], *(by_name[t].model["name"] for t in stage.teacher_stages)]
        models = [create_skeleton(name, image_size) for name in names]
        if any(m is None for m in models):
            continue  # the model cannot be built shape-only; its stage checks the taps at start instead
        loss.attach(models[0], models[1:], torch.empty(1, 3, image_size, image_size, device="meta"), names)


def check_curriculum(cfg: DictConfig, stages: list) -> None:
    """Pacing, order, scorer and source, and that the stages it applies to can be scored."""
    from kdcl.curriculum import builder
    from kdcl.curriculum.callback import ADVANCE
    from kdcl.curriculum.pacing import check_pacing
    from kdcl.curriculum.sampler import ORDERS
    from kdcl.curriculum.scoring import ALL_SCORERS, SOURCES

    c = cfg.get("curriculum")
    if not c:
        return
    params = OmegaConf.to_container(c.params) if c.get("params") else {}
    check_pacing(c.pacing, c.start, c.full_at, params)
    if c.pacing == "none":
        return
    for key, value, options in (("order", c.order, ORDERS), ("scorer", c.scorer, ALL_SCORERS),
                                ("source", c.source, SOURCES), ("advance", c.advance, ADVANCE)):  # fmt: skip
        if value not in options:
            raise KdclError(
                f"curriculum.{key} '{value}' is not one of {'|'.join(options)}{did_you_mean(str(value), options)}"
            )
    if not isinstance(c.balanced, bool):
        raise KdclError(f"curriculum.balanced={c.balanced} must be true or false")
    if c.get("stages") is not None and not isinstance(c.stages, ListConfig):
        raise KdclError(f"curriculum.stages={c.stages} must be a list of stage names, e.g. curriculum.stages=[student]")
    if c.scorer == "class_order" and c.get("class_order") is not None:
        order = c.class_order
        if (
            not isinstance(order, ListConfig)
            or not all(isinstance(v, int) for v in order)
            or len(set(order)) != len(order)
        ):
            raise KdclError(
                f"curriculum.class_order={order} must list distinct class indices, easiest first, e.g. [0,1,2]"
            )
    fraction_in(c.threshold, "curriculum.threshold")
    fraction_in(c.jump, "curriculum.jump", low_open=False)
    positive_int(c.folds, "curriculum.folds", 2)
    positive_int(c.fold_epochs, "curriculum.fold_epochs")
    positive_int(c.early_epoch, "curriculum.early_epoch")
    positive_int(c.rescore_every, "curriculum.rescore_every")
    if c.scorer == "file":
        if not c.scores_file:
            raise KdclError("curriculum.scorer=file needs curriculum.scores_file=PATH (one score per training example)")
        if not Path(c.scores_file).is_file():
            raise KdclError(
                f"curriculum.scores_file '{c.scores_file}' does not exist; give a .pt, .npy or text file of scores"
            )
    names = [s.name for s in stages]
    for name in c.get("stages") or []:
        if name not in names:
            raise KdclError(
                f"curriculum.stages: '{name}' is not a stage{did_you_mean(str(name), names)} (stages: {', '.join(names)})"
            )
    applied = [s for s in stages if builder.applies(cfg, s)]
    if not applied:
        raise KdclError(
            f"curriculum={c.name} applies to no stage (none has a teacher); set curriculum.stages=[{names[-1]}]"
        )
    if c.scorer == "file":  # the one curriculum check that needs the data: one score per training example
        from kdcl.curriculum.builder import check_curriculum_data
        from kdcl.data import KdclDataModule

        dm = KdclDataModule(cfg.data, seed=cfg.seed)
        dm.setup()
        check_curriculum_data(
            cfg, applied, lambda stage: len(dm.stage_subset(stage.fraction, train_classes(stage, dm)))
        )
    for stage in applied:
        if c.scorer.startswith("teacher") and not stage.teachers:
            raise KdclError(f"curriculum.scorer={c.scorer} needs a teacher but stage '{stage.name}' has none; "
                            "use scorer=student_loss|class_order|random|file")  # fmt: skip
        if c.source == "early":
            for t in stage.teacher_stages:
                teacher = next(s for s in stages if s.name == t)
                if not teacher.trains or teacher.epochs < c.early_epoch:
                    raise KdclError(f"curriculum.source=early needs stage '{t}' to train at least curriculum.early_epoch="
                                    f"{c.early_epoch} epochs; lower early_epoch or use source=final|folds")  # fmt: skip
