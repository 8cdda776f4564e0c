"""Turn the `pipeline` config into an ordered list of stages, validated before anything runs.

A pipeline either lists its stages (`pipeline.stages`) or names a generator (`pipeline.kind`, see
presets.py) that builds them; `pipeline.finetune=true` appends a hard-label fine-tune of the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from kdcl.errors import KdclError, did_you_mean
from kdcl.losses.terms import NEEDS_TEACHER, parse_terms
from kdcl.pipeline.presets import PIPELINES, finetune_stage

SELECT = ("best", "last")
HARD_LABELS = {"ce": {"weight": 1.0}}
STAGE_KEYS = ("model", "teachers", "epochs", "select", "terms", "fraction", "init", "lr_scale", "task")


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    model_key: str  # where the model is described, for messages (teacher, student, pipeline.assistants[0], ...)
    model: dict  # that node: name, weights, checkpoint, ...
    teachers: tuple[
        str, ...
    ]  # earlier stages it learns from: `name` (its chosen checkpoint) or `name@E` (after epoch E)
    epochs: int
    select: str  # which checkpoint is tested and handed on: best (val acc) | last
    terms: dict  # loss terms: distill.terms when the stage has teachers, else hard labels
    terms_key: str  # where the terms come from, for error messages
    fraction: float | None = None  # train on this seeded share of the training set (None: all of it)
    init: str | None = None  # an earlier stage whose chosen checkpoint initialises this model
    lr_scale: float = 1.0  # multiplies optim.lr (a fine-tune uses a smaller rate)
    task: tuple | None = None  # class-incremental: (k, tasks), see presets.task_classes
    save_epochs: tuple[int, ...] = ()  # extra checkpoints after these epochs (later stages learn from them)

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"

    @property
    def trains(self) -> bool:
        """A model given as a kdcl checkpoint is used as-is: its stage only tests it."""
        return not self.model.get("checkpoint")

    @property
    def teacher_stages(self) -> tuple[str, ...]:
        return tuple(split_ref(t)[0] for t in self.teachers)


def split_ref(ref: str) -> tuple[str, int | None]:
    """`teacher` → (teacher, None); `teacher@3` → (teacher, 3): the checkpoint saved after epoch 3."""
    name, _, epoch = str(ref).partition("@")
    return name, (int(epoch) if epoch.isdigit() else (None if not epoch else -1))


def stage_specs(cfg: DictConfig) -> dict[str, dict]:
    p = cfg.pipeline
    kind = p.get("kind")
    if kind is not None:
        if kind not in PIPELINES:
            raise KdclError(
                f"pipeline.kind '{kind}' is unknown{did_you_mean(str(kind), PIPELINES)}; use one of {', '.join(PIPELINES)}"
            )
        specs = PIPELINES[kind](OmegaConf.to_container(p, resolve=True), cfg)
    else:
        stages = p.get("stages")
        if not stages:
            raise KdclError(f"pipeline '{p.get('name')}' has no stages; set pipeline.stages or pick a preset")
        specs = {}
        for name, spec in stages.items():
            if not isinstance(spec, DictConfig):
                raise KdclError(
                    f"pipeline.stages.{name} must be a stage (model, teachers, epochs, select), not {spec!r}"
                )
            specs[str(name)] = OmegaConf.to_container(spec, resolve=True)
    if p.get("finetune"):
        name, spec = finetune_stage(OmegaConf.to_container(p, resolve=True), specs)
        specs[name] = spec
    return specs


def model_of(cfg: DictConfig, spec: dict, key: str) -> tuple[str, dict]:
    """(model_key, model config): `model` names a model group (teacher, student) or is a model mapping."""
    model = spec.get("model")
    if isinstance(model, dict):
        if "name" not in model:
            raise KdclError(f"{key}.model needs a name (a timm model), got {model}")
        return f"{key}.model", {"weights": None, "checkpoint": None, "drop_rate": 0.0, **model}
    if model not in cfg or not isinstance(cfg[model], DictConfig) or "name" not in cfg[model]:
        models = [k for k in cfg if isinstance(cfg[k], DictConfig) and "name" in cfg[k] and "weights" in cfg[k]]
        raise KdclError(
            f"{key}.model '{model}' names no model config{did_you_mean(str(model), models)}; use one of {', '.join(models)}"
        )
    return str(model), OmegaConf.to_container(cfg[model], resolve=True)


def plan_stages(cfg: DictConfig) -> list[Stage]:
    stages: list[Stage] = []
    for index, (name, spec) in enumerate(stage_specs(cfg).items()):
        key = f"pipeline.stages.{name}"
        unknown = [k for k in spec if k not in STAGE_KEYS]
        if unknown:
            raise KdclError(
                f"{key}.{unknown[0]} is not a stage setting{did_you_mean(unknown[0], STAGE_KEYS)}; use {', '.join(STAGE_KEYS)}"
            )
        model_key, model = model_of(cfg, spec, key)
        by_name = {s.name: s for s in stages}
        teachers = tuple(str(t) for t in spec.get("teachers") or ())
        for t in teachers:
            base, epoch = split_ref(t)
            if base not in by_name:
                raise KdclError(
                    f"{key}.teachers: '{base}' is not an earlier stage{did_you_mean(base, by_name)}; earlier stages: {', '.join(by_name) or 'none'}"
                )
            if epoch is not None and not (by_name[base].trains and 1 <= epoch <= by_name[base].epochs):
                raise KdclError(
                    f"{key}.teachers: '{t}' must name an epoch 1..{by_name[base].epochs} of a stage that trains (e.g. {base}@1)"
                )
        init = spec.get("init")
        if init is not None and (init not in by_name or by_name[init].model["name"] != model["name"]):
            raise KdclError(
                f"{key}.init '{init}' must be an earlier stage with the same model ({model['name']}); earlier stages: {', '.join(by_name) or 'none'}"
            )
        epochs = spec.get("epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise KdclError(f"{key}.epochs={epochs} must be an integer ≥ 1 (or set trainer.max_epochs)")
        select = spec.get("select", "best")
        if select not in SELECT:
            raise KdclError(f"{key}.select '{select}' must be one of {'|'.join(SELECT)}")
        if spec.get("terms") is not None:
            terms, terms_key = spec["terms"], f"{key}.terms"
        elif teachers:
            terms, terms_key = OmegaConf.to_container(cfg.distill.terms, resolve=True), "distill.terms"
        else:
            terms, terms_key = HARD_LABELS, f"{key}.terms"
        needs_teacher = [t.name for t in parse_terms(terms, terms_key) if t.kind in NEEDS_TEACHER]
        if needs_teacher and not teachers:
            raise KdclError(
                f"{key}: the terms {', '.join(needs_teacher)} need a teacher; set {key}.teachers or drop them"
            )
        fraction = spec.get("fraction")
        if fraction is not None and (
            not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1
        ):
            raise KdclError(f"{key}.fraction={fraction} must be in (0, 1] (this stage's share of the training set)")
        lr_scale = spec.get("lr_scale", 1.0)
        if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) or lr_scale <= 0:
            raise KdclError(f"{key}.lr_scale={lr_scale} must be > 0 (it multiplies optim.lr)")
        task = spec.get("task")
        stages.append(Stage(index, str(name), model_key, model, teachers, epochs, select, terms, terms_key,
                            None if fraction is None else float(fraction), init, float(lr_scale),
                            None if task is None else tuple(task)))  # fmt: skip
    return with_saved_epochs(stages)


def with_saved_epochs(stages: list[Stage]) -> list[Stage]:
    """A stage saves a checkpoint after every epoch a later stage learns from (`name@E`)."""
    wanted: dict[str, set[int]] = {}
    for s in stages:
        for t in s.teachers:
            base, epoch = split_ref(t)
            if epoch is not None:
                wanted.setdefault(base, set()).add(epoch)
    return [replace(s, save_epochs=tuple(sorted(wanted.get(s.name, ())))) for s in stages]
