"""Turn the `pipeline` config into an ordered list of stages, validated before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from kdcl.errors import KdclError, did_you_mean
from kdcl.losses.terms import NEEDS_TEACHER, parse_terms

SELECT = ("best", "last")
HARD_LABELS = {"ce": {"weight": 1.0}}


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    model_key: str  # the config node that describes the model (teacher, student, ...)
    model: dict  # that node: name, weights, checkpoint, ...
    teachers: tuple[str, ...]  # earlier stages whose chosen checkpoints this stage learns from
    epochs: int
    select: str  # which checkpoint is tested and handed on: best (val acc) | last
    terms: dict  # loss terms: distill.terms when the stage has teachers, else hard labels
    terms_key: str  # where the terms come from, for error messages
    fraction: float | None = None  # train on this seeded share of the training set (None: all of it)

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"

    @property
    def trains(self) -> bool:
        """A model given as a kdcl checkpoint is used as-is: its stage only tests it."""
        return not self.model.get("checkpoint")


def plan_stages(cfg: DictConfig) -> list[Stage]:
    stages_cfg = cfg.pipeline.get("stages")
    if not stages_cfg:
        raise KdclError(f"pipeline '{cfg.pipeline.get('name')}' has no stages; set pipeline.stages or pick a preset")
    stages: list[Stage] = []
    for index, (name, spec) in enumerate(stages_cfg.items()):
        key = f"pipeline.stages.{name}"
        if not isinstance(spec, DictConfig):
            raise KdclError(f"{key} must be a stage (model, teachers, epochs, select), not {spec!r}")
        model_key = spec.get("model")
        if model_key not in cfg or not isinstance(cfg[model_key], DictConfig) or "name" not in cfg[model_key]:
            models = [k for k in cfg if isinstance(cfg[k], DictConfig) and "name" in cfg[k] and "weights" in cfg[k]]
            raise KdclError(
                f"{key}.model '{model_key}' names no model config{did_you_mean(str(model_key), models)}; use one of {', '.join(models)}"
            )
        teachers = tuple(spec.get("teachers") or ())
        earlier = [s.name for s in stages]
        for t in teachers:
            if t not in earlier:
                raise KdclError(
                    f"{key}.teachers: '{t}' is not an earlier stage{did_you_mean(t, earlier)}; earlier stages: {', '.join(earlier) or 'none'}"
                )
        epochs = spec.get("epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise KdclError(f"{key}.epochs={epochs} must be an integer ≥ 1 (or set trainer.max_epochs)")
        select = spec.get("select", "best")
        if select not in SELECT:
            raise KdclError(f"{key}.select '{select}' must be one of {'|'.join(SELECT)}")
        if spec.get("terms") is not None:
            terms, terms_key = OmegaConf.to_container(spec.terms, resolve=True), f"{key}.terms"
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
        model = OmegaConf.to_container(cfg[model_key], resolve=True)
        stages.append(Stage(index, str(name), model_key, model, teachers, epochs, select, terms, terms_key,
                            None if fraction is None else float(fraction)))  # fmt: skip
    return stages
