"""Turn the `pipeline` config into an ordered list of stages, validated before anything runs.

A pipeline either lists its stages (`pipeline.stages`) or names a generator (`pipeline.kind`, see
presets.py) that builds them; `pipeline.finetune=true` appends a hard-label fine-tune of the last stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdcl.common.errors import KdclError, did_you_mean
from kdcl.config.schema import TeacherOutputMode
from kdcl.data.augment import Augmentation
from kdcl.losses.ensemble import COMBINATIONS
from kdcl.losses.terms import NEEDS_TEACHER, Term, config_params, defaults_of, parse_terms
from kdcl.run.presets import (
    COMMON_KEYS,
    PIPELINE_KEYS,
    PIPELINES,
    early_stopped,
    finetune_stage,
    split_student_epochs,
)

SELECT = ("best", "last")
HARD_LABELS = {"ce": {"weight": 1.0}}
STAGE_KEYS = ("model", "teachers", "epochs", "select", "terms", "fraction", "init", "lr_scale", "task", "ensemble",
              "keep_epochs",
              "match_entropy", "mutual")  # fmt: skip
# what the peers of a mutual group share: they train as one stage (one data order, optimizer and budget)
MUTUAL_SHARED = ("epochs", "select", "terms", "fraction", "lr_scale")
EXPLICIT_KEYS = ("stages", "teacher_epoch")  # what a pipeline of explicit stages reads besides COMMON_KEYS
FOLD_SEED = 104729  # the out-of-fold split's seed offset (fixed, so a resumed run splits alike)


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    model_key: str  # where the model is described, for messages (teacher, student, pipeline.assistants[0], ...)
    model: dict  # that node: name, weights, checkpoint, ...
    # earlier stages it learns from: `name` (its chosen checkpoint) or `name@E` (after epoch E)
    teachers: tuple[str, ...]
    epochs: int
    select: str  # which checkpoint is tested and handed on: best (val acc) | last
    terms: dict  # loss terms as configured: distill.terms when the stage has teachers, else hard labels
    terms_key: str  # where the terms come from, for error messages
    fraction: float | None = None  # train on this seeded share of the training set (None: all of it)
    init: str | None = None  # an earlier stage whose chosen checkpoint initialises this model
    lr_scale: float = 1.0  # multiplies optim.lr (a fine-tune uses a smaller rate)
    task: tuple | None = None  # class-incremental: (k, tasks), see presets.task_classes
    save_epochs: tuple[int, ...] = ()  # extra checkpoints after these epochs (later stages learn from them)
    loss_terms: tuple[Term, ...] = ()  # `terms`, parsed and checked once
    curriculum: bool = False  # this stage trains with the curriculum
    # the models that score difficulty for the curriculum: teacher references (source final / early) or
    # the out-of-fold stages (source folds), each scoring the examples its training never saw
    scorers: tuple[str, ...] = ()
    holdout: tuple[int, int] | None = None  # an out-of-fold stage: (fold k, of K) of its scored stage's examples
    teacher_outputs: str = "online"  # online | cached | views: how the stage reads its teachers' logits
    teacher_outputs_why: str = ""  # distill.teacher_outputs=auto: why it chose that mode (printed as the stage starts)
    ensemble: str = "none"  # several teachers: none (each its own target) | mean | confidence (one combined target)
    # teacher references whose mean output entropy (at the terms' temperature) the stage's one teacher is made to
    # match: its temperature is solved for as the stage starts (pipeline=anchors, order=matched)
    match_entropy: tuple[str, ...] = ()
    # mutual learning (pipeline=dml): the group whose peers train together in one stage, each learning from the
    # others' current outputs, and the peers' stage names in order (this one among them)
    mutual: str | None = None
    peers: tuple[str, ...] = ()
    # a given checkpoint from a kdcl run: the checkpoints its stage kept after epochs ((epoch, absolute path), ...),
    # so that `name@E` reads them as it reads a trained stage's (one teacher trained once serves a sweep of anchors)
    given_epochs: tuple[tuple[int, str], ...] = ()

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"

    @property
    def trains(self) -> bool:
        """A model given as a kdcl checkpoint is used as-is: its stage only tests it."""
        return not self.model.get("checkpoint")

    def given_file(self, epoch: int | None) -> Path | None:
        """The file `name` (epoch None) or `name@E` reads when this stage's model is a given checkpoint (known before
        the run); None for a stage that trains."""
        if self.trains:
            return None
        if epoch is None:
            return Path(self.model["checkpoint"]).resolve()
        file = dict(self.given_epochs).get(epoch)
        return None if file is None else Path(file)

    @property
    def teacher_stages(self) -> tuple[str, ...]:
        return tuple(split_ref(t)[0] for t in self.teachers)

    @property
    def in_summary(self) -> bool:
        """Out-of-fold scoring stages are means to a curriculum, not models of the run's report."""
        return self.holdout is None

    @property
    def configured_temperature(self) -> float:
        """The temperature of the stage's softening terms (make_stage checked that they share one)."""
        term = softening_terms(self.loss_terms)[0]
        return float(term.params.get("temperature", defaults_of(term.spec.fn)["temperature"]))

    def at_temperature(self, temperature: float) -> Stage:
        """This stage with every softening term at `temperature` (in the parsed terms and the recorded ones)."""
        names = {t.name for t in softening_terms(self.loss_terms)}
        terms = tuple(replace(t, params={**t.params, "temperature": temperature}) if t.name in names else t
                      for t in self.loss_terms)  # fmt: skip
        recorded = {k: {**v, "temperature": temperature} if k in names else v for k, v in self.terms.items()}
        return replace(self, loss_terms=terms, terms=recorded)


@dataclass(frozen=True)
class Plan:
    """What a job runs, validated once: the composed config (plain values) and its stages in order."""

    cfg: DictConfig
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def units(self) -> list[tuple[Stage, ...]]:
        """What runs, in order: one stage, or a mutual group's peers (one training makes all of them)."""
        units: list[tuple[Stage, ...]] = []
        for s in self.stages:
            if s.mutual and s.name != s.peers[0]:
                continue
            units.append(tuple(self.stage(p) for p in s.peers) if s.mutual else (s,))
        return units


def mutual_stage(peers: tuple[Stage, ...]) -> Stage:
    """The stage that trains a mutual group: the first peer's shared settings under the group's name (its
    directory, checkpoints, TensorBoard section and progress lines), keeping every epoch a peer must save."""
    first = peers[0]
    saved = tuple(sorted({e for p in peers for e in p.save_epochs}))
    return replace(first, name=str(first.mutual), model_key=f"pipeline.stages.{first.mutual}", save_epochs=saved)


def split_ref(ref: str) -> tuple[str, int | None]:
    """`teacher` → (teacher, None); `teacher@3` → (teacher, 3): the checkpoint saved after epoch 3."""
    name, _, epoch = str(ref).partition("@")
    return name, (int(epoch) if epoch.isdigit() else (None if not epoch else -1))


def check_pipeline_keys(p: DictConfig) -> None:
    """A setting the pipeline's kind does not read is refused, not ignored (the schema has every kind's keys)."""
    used = (*COMMON_KEYS, *(PIPELINE_KEYS[p.kind] if p.get("kind") is not None else EXPLICIT_KEYS))
    for key, value in p.items():
        if value is not None and key not in used:
            what = f"kind={p.kind}" if p.get("kind") is not None else "a pipeline of explicit stages"
            raise KdclError(f"pipeline.{key} is not used by {what}; it takes {', '.join(used[2:])}")


def stage_specs(cfg: DictConfig) -> dict[str, dict]:
    p = cfg.pipeline
    kind = p.get("kind")
    if kind is not None and kind not in PIPELINES:
        raise KdclError(
            f"pipeline.kind '{kind}' is unknown{did_you_mean(str(kind), PIPELINES)}; use one of {', '.join(PIPELINES)}"
        )
    check_pipeline_keys(p)
    if kind is not None:
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
        if p.get("teacher_epoch") is not None:
            given = {n for n, spec in specs.items() if model_of(cfg, spec, f"pipeline.stages.{n}")[1].get("checkpoint")}
            specs = early_stopped(specs, p.teacher_epoch, given)
    if p.get("student_epochs") is not None:
        specs = split_student_epochs(specs, p.student_epochs)
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
        return f"{key}.model", {"pretrained": False, "weights": None, "checkpoint": None, "drop_rate": 0.0, **model}
    if model not in cfg or not isinstance(cfg[model], DictConfig) or "name" not in cfg[model]:
        models = [k for k in cfg if isinstance(cfg[k], DictConfig) and "name" in cfg[k] and "weights" in cfg[k]]
        raise KdclError(
            f"{key}.model '{model}' names no model config{did_you_mean(str(model), models)}; use one of {', '.join(models)}"
        )
    return str(model), OmegaConf.to_container(cfg[model], resolve=True)


def check_teacher_refs(key: str, teachers: tuple[str, ...], by_name: dict[str, Stage], field: str = "teachers") -> None:
    for t in teachers:
        base, epoch = split_ref(t)
        if base not in by_name:
            raise KdclError(
                f"{key}.{field}: '{base}' is not an earlier stage{did_you_mean(base, by_name)}; earlier stages: {', '.join(by_name) or 'none'}"
            )
        source = by_name[base]
        if epoch is None or (1 <= epoch <= source.epochs if source.trains else source.given_file(epoch) is not None):
            continue
        if source.trains:
            raise KdclError(f"{key}.{field}: '{t}' must name an epoch 1..{source.epochs} of a stage that trains "
                            f"(e.g. {base}@1)")  # fmt: skip
        kept = ", ".join(f"{base}@{e}" for e, _ in source.given_epochs) or "none"
        raise KdclError(f"{key}.{field}: '{t}' needs the checkpoint after epoch {epoch} from the run of "
                        f"{source.model_key}.checkpoint, which kept {kept}; give a checkpoint from a run whose stage "
                        f"kept that epoch (a later stage there learned from {t}, e.g. pipeline=anchors), or train "
                        f"'{base}' in this run")  # fmt: skip


def given_epochs(model: dict) -> tuple[tuple[int, str], ...]:
    """A given checkpoint's epoch checkpoints: when it lies in a kdcl run's stage (stages/NN-name/checkpoints/), the
    ones that stage kept, read from its metrics.json; none for a checkpoint anywhere else."""
    if not model.get("checkpoint"):
        return ()
    path = Path(model["checkpoint"]).resolve()
    metrics = path.parent.parent / "metrics.json"
    if len(path.parents) < 4 or path.parent.name != "checkpoints" or path.parents[2].name != "stages":
        return ()
    if not metrics.is_file():
        return ()
    try:
        kept = json.loads(metrics.read_text()).get("epoch_checkpoints") or {}
    except (OSError, ValueError):
        return ()
    run_dir = path.parents[3]  # <run>/stages/NN-name/checkpoints/<file>; kept paths are relative to <run>
    files = {int(e): (run_dir / rel).resolve() for e, rel in kept.items() if str(e).isdigit()}
    return tuple((e, str(f)) for e, f in sorted(files.items()) if f.is_file())


def number(spec: dict, field: str, key: str, default, ok, rule: str):
    """spec[field] (or `default`), checked by `ok`; bools are not numbers."""
    value = spec.get(field, default)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value)):
        raise KdclError(f"{key}.{field}={value} {rule}")
    return value


def stage_terms(cfg: DictConfig, spec: dict, key: str, teachers: tuple) -> tuple[dict, str, tuple[Term, ...]]:
    """(terms as configured, where they come from, parsed): the stage's own, distill.terms, or hard labels.
    `teachers`: what the stage learns from (a mutual stage's: its group)."""
    if spec.get("terms") is not None:
        terms, terms_key = spec["terms"], f"{key}.terms"
    elif teachers:
        terms, terms_key = OmegaConf.to_container(cfg.distill.terms, resolve=True), "distill.terms"
    else:
        terms, terms_key = HARD_LABELS, f"{key}.terms"
    parsed = tuple(parse_terms(terms, terms_key))
    needs_teacher = [t.name for t in parsed if t.kind in NEEDS_TEACHER]
    if needs_teacher and not teachers:
        raise KdclError(f"{key}: the terms {', '.join(needs_teacher)} need a teacher; set {key}.teachers or drop them")
    return terms, terms_key, parsed


def make_stage(cfg: DictConfig, index: int, name: str, spec: dict, earlier: dict[str, Stage]) -> Stage:
    """One stage from its spec, every setting checked against the earlier stages."""
    key = f"pipeline.stages.{name}"
    unknown = [k for k in spec if k not in STAGE_KEYS]
    if unknown:
        raise KdclError(
            f"{key}.{unknown[0]} is not a stage setting{did_you_mean(unknown[0], STAGE_KEYS)}; use {', '.join(STAGE_KEYS)}"
        )
    model_key, model = model_of(cfg, spec, key)
    teachers = tuple(str(t) for t in spec.get("teachers") or ())
    check_teacher_refs(key, teachers, earlier)
    mutual = check_mutual_spec(key, spec)
    init = spec.get("init")
    if init is not None and (init not in earlier or earlier[init].model["name"] != model["name"]):
        raise KdclError(
            f"{key}.init '{init}' must be an earlier stage with the same model ({model['name']}); earlier stages: {', '.join(earlier) or 'none'}"
        )
    epochs = spec.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise KdclError(f"{key}.epochs={epochs} must be an integer ≥ 1 (or set trainer.max_epochs)")
    select = spec.get("select", "best")
    if select not in SELECT:
        raise KdclError(f"{key}.select '{select}' must be one of {'|'.join(SELECT)}")
    terms, terms_key, parsed = stage_terms(cfg, spec, key, teachers or ((mutual,) if mutual else ()))
    check_mutual_terms(key, mutual, parsed, terms_key)
    fraction = number(spec, "fraction", key, None, lambda v: 0 < v <= 1,
                      "must be in (0, 1] (this stage's share of the training set)")  # fmt: skip
    lr_scale = number(spec, "lr_scale", key, 1.0, lambda v: v > 0, "must be > 0 (it multiplies optim.lr)")
    task = spec.get("task")
    ensemble = spec.get("ensemble") or "none"
    if ensemble not in COMBINATIONS:
        raise KdclError(f"{key}.ensemble '{ensemble}' must be one of {'|'.join(COMBINATIONS)}"
                        f"{did_you_mean(str(ensemble), COMBINATIONS)}")  # fmt: skip
    match = spec.get("match_entropy") or ()
    match = (match,) if isinstance(match, str) else tuple(str(t) for t in match)
    check_matching(key, match, teachers, parsed, terms_key, earlier)
    keep = kept_epochs(spec.get("keep_epochs"), epochs, key)
    if keep and model.get("checkpoint"):
        raise KdclError(f"{key}.keep_epochs: {model_key}.checkpoint is given, so the stage trains no epoch to keep; "
                        "drop keep_epochs (its own run's kept epochs come with it)")  # fmt: skip
    return Stage(index, str(name), model_key, model, teachers, epochs, select, terms, terms_key,
                 None if fraction is None else float(fraction), init, float(lr_scale),
                 None if task is None else tuple(task), loss_terms=parsed, ensemble=ensemble,
                 save_epochs=keep, match_entropy=match, mutual=mutual, given_epochs=given_epochs(model))  # fmt: skip


def kept_epochs(value, epochs: int, key: str) -> tuple[int, ...]:
    """`keep_epochs`: checkpoints kept after these epochs for other runs' `name@E` (a teacher trained once for a
    sweep of anchors or early-stopped arms)."""
    values = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= epochs for e in values):
        raise KdclError(f"{key}.keep_epochs={value} must list epochs 1..{epochs} of the stage (e.g. [3, 6])")
    return tuple(sorted(set(values)))


# mutual learning ------------------------------------------------------------------------------------
def check_mutual_spec(key: str, spec: dict) -> str | None:
    """`mutual`: a group name; its stages learn from each other, not from teachers."""
    mutual = spec.get("mutual")
    if mutual is None:
        return None
    if not isinstance(mutual, str) or not mutual:
        raise KdclError(f"{key}.mutual={mutual!r} must name the group its peers train in, e.g. dml")
    for field in ("teachers", "task", "match_entropy"):
        if spec.get(field):
            raise KdclError(f"{key}.{field}: a mutual stage learns from its peers alone; drop {field} (or mutual)")
    if (spec.get("ensemble") or "none") != "none":
        raise KdclError(f"{key}.ensemble: a mutual stage learns from each peer as its own target; drop ensemble")
    if isinstance(spec.get("model"), dict) and spec["model"].get("checkpoint"):
        raise KdclError(f"{key}.model.checkpoint: the peers of a mutual stage train; give a model to train, "
                        "or start it from a stage with init")  # fmt: skip
    return mutual


def check_mutual_terms(key: str, mutual: str | None, terms: tuple[Term, ...], terms_key: str) -> None:
    """The peers' targets are their logits: feature terms (a teacher's activations) have nothing to read."""
    features = [t.name for t in terms if t.spec.features is not None and t.active]
    if mutual and features:
        raise KdclError(f"{key}: the mutual stage's peers are compared by their outputs, and {terms_key} has the "
                        f"feature terms {', '.join(features)}; use logit terms (kd, dkd, dist, lskd)")  # fmt: skip


def with_mutual_groups(stages: list[Stage]) -> list[Stage]:
    """Each mutual group's peers, checked: two or more, one after another, with the same shared settings."""
    groups: dict[str, list[Stage]] = {}
    for s in stages:
        if s.mutual:
            groups.setdefault(s.mutual, []).append(s)
    names = [s.name for s in stages]
    for group, peers in groups.items():
        key = f"pipeline.stages.{peers[0].name}.mutual"
        if group in names:
            raise KdclError(f"{key}='{group}' is also a stage's name; name the group apart from its stages")
        if len(peers) < 2:
            raise KdclError(f"{key}='{group}': a mutual group needs two or more peers, and only {peers[0].name} "
                            "names it; add a peer (e.g. pipeline=dml 'pipeline.peers=[student,student]')")  # fmt: skip
        first = names.index(peers[0].name)
        if names[first : first + len(peers)] != [p.name for p in peers]:
            raise KdclError(f"{key}='{group}': its peers ({', '.join(p.name for p in peers)}) must follow one "
                            "another in pipeline.stages")  # fmt: skip
        for field in MUTUAL_SHARED:
            values = [getattr(p, field) for p in peers]
            if any(v != values[0] for v in values):
                raise KdclError(f"pipeline.stages.{peers[1].name}.{field}: the peers of '{group}' train as one "
                                f"stage and must share {field} ({', '.join(map(str, values))}); give them one")  # fmt: skip
    return [replace(s, peers=tuple(p.name for p in groups[s.mutual])) if s.mutual else s for s in stages]


def softening_terms(terms: tuple[Term, ...]) -> list[Term]:
    """The active terms that soften a teacher's outputs with a `temperature` (kd, dkd, dist, lskd, ...)."""
    return [t for t in terms if t.active and t.spec.needs_teacher
            and "temperature" in config_params(t.spec.fn)]  # fmt: skip


def check_matching(key: str, refs: tuple[str, ...], teachers: tuple[str, ...], terms: tuple[Term, ...],
                   terms_key: str, earlier: dict[str, Stage]) -> None:  # fmt: skip
    """`match_entropy`: earlier teacher references, one teacher to match, and one fixed temperature to set."""
    if not refs:
        return
    check_teacher_refs(key, refs, earlier, "match_entropy")
    if len(teachers) != 1:
        raise KdclError(f"{key}.match_entropy sets one teacher's temperature, but the stage has {len(teachers)} "
                        "teachers; give it one")  # fmt: skip
    softening = softening_terms(terms)
    if not softening:
        raise KdclError(f"{key}.match_entropy needs a term with a temperature (kd, dkd, dist, lskd), and "
                        f"{terms_key} has none; use distill=kd")  # fmt: skip
    temperatures = {t.params.get("temperature", defaults_of(t.spec.fn)["temperature"]) for t in softening}
    if len(temperatures) > 1 or any("temperature" in t.schedule for t in softening):
        raise KdclError(f"{key}.match_entropy needs one fixed temperature in {terms_key}, not "
                        f"{sorted(map(str, temperatures))} or a schedule; give its terms one temperature")  # fmt: skip


def plan_stages(cfg: DictConfig) -> list[Stage]:
    """The stages of the configured pipeline, checked, with their curriculum and teacher-output settings."""
    stages: dict[str, Stage] = {}
    for index, (name, spec) in enumerate(stage_specs(cfg).items()):
        stages[str(name)] = make_stage(cfg, index, str(name), spec, stages)
    planned = with_curriculum(cfg, with_mutual_groups(list(stages.values())))
    by_name = {s.name: s for s in planned}
    planned = [replace(s, index=i, **teacher_outputs_fields(cfg, s, by_name)) for i, s in enumerate(planned)]
    return with_saved_epochs(planned)


def build_plan(cfg: DictConfig) -> Plan:
    return Plan(cfg, tuple(plan_stages(cfg)))


def with_saved_epochs(stages: list[Stage]) -> list[Stage]:
    """A stage saves a checkpoint after every epoch a later stage learns from, scores or matches with (`name@E`),
    and after those it is told to keep (`keep_epochs`)."""
    wanted: dict[str, set[int]] = {}
    for s in stages:
        for t in (*s.teachers, *s.scorers, *s.match_entropy):
            base, epoch = split_ref(t)
            if epoch is not None:
                wanted.setdefault(base, set()).add(epoch)
    return [replace(s, save_epochs=tuple(sorted(wanted.get(s.name, set()) | set(s.save_epochs)))) if s.trains else s
            for s in stages]  # fmt: skip


# teacher outputs ------------------------------------------------------------------------------------
TEACHER_OUTPUT_MODES = tuple(mode.value for mode in TeacherOutputMode)  # declared in kdcl/config/schema.py


def auto_mode(augment: bool, feature_terms: list[str], epochs: int, views: int, given: bool,
              unreplayable: str = "") -> tuple[str, str]:  # fmt: skip
    """distill.teacher_outputs=auto: the mode whose teacher work is least, and why. Stored logits cost one
    teacher pass in all (during epoch 1); with augmentation each epoch shows a new view, so stored views cost
    min(K, epochs) passes before training against `epochs` passes online: views when K < epochs, or when
    the teachers are `given` checkpoints (their store, in the shared cache, serves every job that has them)."""
    if feature_terms:
        return "online", f"the feature terms {', '.join(feature_terms)} need the teachers' activations"
    if unreplayable:
        return "online", f"{unreplayable} draws new pixels every epoch, which stored views cannot replay"
    if not augment:
        return "cached", "no augmentation: one teacher pass (in epoch 1) serves every epoch"
    if given:
        return (
            "views",
            "the teachers are given checkpoints: one views pass, kept in the shared cache, serves every job with them",
        )
    if views < epochs:
        return "views", f"{views} stored views per example serve {epochs} epochs: {views} teacher passes, not {epochs}"
    return "online", (f"{epochs} epoch(s) show at most {epochs} of the data.views={views} views, and their pass costs "
                      "what running the teacher online does (views pay off when data.views < epochs, or for teachers "
                      "given as checkpoints, whose stores sweep jobs share)")  # fmt: skip


def choose_mode(mode: str, augment: bool, feature_terms: list[str], epochs: int, views: int,
                given: bool = False, unreplayable: str = "") -> tuple[str, str]:  # fmt: skip
    """(online | cached | views, why auto chose it) for a stage whose loss needs teachers; errors name the
    setting that forbids storing. `augment`: any training augmentation; `unreplayable`: the part stored views
    cannot replay (timm's policies, colour jitter, random erasing: kdcl/data/augment.py), or ""."""
    if mode not in TEACHER_OUTPUT_MODES:
        raise KdclError(f"distill.teacher_outputs '{mode}' must be one of {'|'.join(TEACHER_OUTPUT_MODES)}"
                        f"{did_you_mean(str(mode), TEACHER_OUTPUT_MODES)}")  # fmt: skip
    if mode == "online":
        return "online", ""
    if mode == "auto":
        return auto_mode(augment, feature_terms, epochs, views, given, unreplayable)
    if unreplayable:
        fix = (
            "drop it, or use distill.teacher_outputs=auto or online"
            if mode == "views"
            else "use distill.teacher_outputs=auto or online"
        )
        raise KdclError(f"distill.teacher_outputs={mode} cannot replay {unreplayable}: its pixels are drawn anew "
                        f"every epoch (stored views replay crops, flips, mixup and cutmix); {fix}")  # fmt: skip
    if feature_terms:
        raise KdclError(
            f"distill.teacher_outputs={mode}: the feature terms {', '.join(feature_terms)} need the teachers' "
            "activations on every batch; use distill.teacher_outputs=auto|online"
        )
    if mode == "cached" and augment:
        raise KdclError(
            "distill.teacher_outputs=cached with training augmentation (data.augment, augment=...) would pair a "
            "stored logit with a new random view of each image; use distill.teacher_outputs=views (stored "
            "augmented views), auto or online"
        )
    if mode == "views" and not augment:
        raise KdclError("distill.teacher_outputs=views stores augmented views, but training has no augmentation; "
                        "set data.augment=true or augment=rrc, or use distill.teacher_outputs=cached (or auto)")  # fmt: skip
    return mode, ""


def teacher_outputs_fields(cfg: DictConfig, stage: Stage, by_name: dict[str, Stage]) -> dict[str, str]:
    """Stored teacher logits or views where they are exact and save work (distill.teacher_outputs); online
    otherwise: the stage's `teacher_outputs` and, for auto, why."""
    mode = str(cfg.distill.get("teacher_outputs", "online"))
    needs_teacher = any(t.spec.needs_teacher for t in stage.loss_terms if t.active)
    if not (stage.trains and stage.teachers and needs_teacher):
        return {"teacher_outputs": "online", "teacher_outputs_why": ""}
    features = [t.name for t in stage.loss_terms
                if t.spec.features is not None and t.active]  # fmt: skip
    given = all(by_name[split_ref(t)[0]].given_file(split_ref(t)[1]) is not None for t in stage.teachers)
    timm_aug = Augmentation.of(cfg.get("augment"))
    augment = bool(cfg.data.augment) or timm_aug.active
    chosen, why = choose_mode(mode, augment, features, stage.epochs, int(cfg.data.views), given,
                              timm_aug.unreplayable)  # fmt: skip
    return {"teacher_outputs": chosen, "teacher_outputs_why": why}


# curriculum -----------------------------------------------------------------------------------------
def curriculum_applies(c: DictConfig | None, stage: Stage) -> bool:
    """A curriculum runs in the stages it names, or by default in every stage that has teachers (a mutual
    stage's are its peers). The peers of a mutual group share one data order: naming one names them all."""
    if not c or c.pacing == "none" or not stage.trains:
        return False
    names = c.get("stages")
    if names:
        return any(n in names for n in (stage.name, *stage.peers, *([stage.mutual] if stage.mutual else [])))
    return bool(stage.teachers or stage.mutual)


def with_curriculum(cfg: DictConfig, stages: list[Stage]) -> list[Stage]:
    """Mark the stages the curriculum applies to, name the models that score them, and put the
    out-of-fold stages (source=folds) before the stage they score."""
    c = cfg.get("curriculum")
    if not c or c.pacing == "none":
        return stages
    from kdcl.curriculum.scoring import ALL_SCORERS

    if c.scorer not in ALL_SCORERS:
        raise KdclError(f"curriculum.scorer '{c.scorer}' is not one of {'|'.join(ALL_SCORERS)}"
                        f"{did_you_mean(str(c.scorer), ALL_SCORERS)}")  # fmt: skip
    check_curriculum_stages(c, stages)
    planned: list[Stage] = []
    for s in stages:
        if not curriculum_applies(c, s):
            planned.append(s)
            continue
        scorers: tuple[str, ...] = ()
        if str(c.scorer).startswith("teacher") and s.mutual:
            folds = mutual_fold_stages(c, s)
            planned += folds if s.name == s.peers[0] else []  # the group's first peer trains them for all
            scorers = tuple(f"{s.mutual}_fold{k + 1}" for k in range(int(c.folds)))
        elif str(c.scorer).startswith("teacher"):
            if not s.teachers:
                raise KdclError(f"curriculum.scorer={c.scorer} needs a teacher but stage '{s.name}' has none; "
                                "use scorer=student_loss|class_order|random|file")  # fmt: skip
            if c.source == "folds":
                folds = fold_stages(c, s, {x.name: x for x in stages}[s.teacher_stages[0]], s.name)
                planned += folds
                scorers = tuple(f.name for f in folds)
            elif c.source == "early":
                scorers = tuple(early_refs(c, s, {x.name: x for x in stages}))
            else:
                scorers = s.teachers
        planned.append(replace(s, curriculum=True, scorers=scorers))
    return planned


def check_curriculum_stages(c: DictConfig, stages: list[Stage]) -> None:
    names = [*(s.name for s in stages), *dict.fromkeys(s.mutual for s in stages if s.mutual)]
    for name in c.get("stages") or []:
        if name not in names:
            raise KdclError(
                f"curriculum.stages: '{name}' is not a stage{did_you_mean(str(name), names)} (stages: {', '.join(names)})"
            )
    if not any(curriculum_applies(c, s) for s in stages):
        raise KdclError(
            f"curriculum={c.name} applies to no stage (none has a teacher); set curriculum.stages=[{names[-1]}]"
        )


def early_refs(c: DictConfig, stage: Stage, by_name: dict[str, Stage]) -> list[str]:
    """source=early: each teacher as it was after `early_epoch` epochs (`teacher@E`)."""
    for t in stage.teacher_stages:
        source = by_name[t]
        if source.given_file(c.early_epoch) is None and not source.trains:
            kept = ", ".join(f"{t}@{e}" for e, _ in source.given_epochs) or "none"
            raise KdclError(f"curriculum.source=early needs {t}@{c.early_epoch}, and {source.model_key}.checkpoint's "
                            f"run kept {kept}; set curriculum.early_epoch to one of them or use source=final|folds")  # fmt: skip
        if source.trains and source.epochs < c.early_epoch:
            raise KdclError(f"curriculum.source=early needs stage '{t}' to train at least curriculum.early_epoch="
                            f"{c.early_epoch} epochs; lower early_epoch or use source=final|folds")  # fmt: skip
    return [f"{t}@{c.early_epoch}" for t in stage.teacher_stages]


def mutual_fold_stages(c: DictConfig, stage: Stage) -> list[Stage]:
    """A teacher's scores for a mutual stage, which has no teacher: only out-of-fold copies of its first
    peer's model (source=folds), trained on labels, can give them without scoring examples they learned."""
    if c.source != "folds":
        raise KdclError(f"curriculum.scorer={c.scorer} with source={c.source} needs a teacher, and the mutual stage "
                        f"'{stage.mutual}' has none; use curriculum.source=folds (out-of-fold copies of "
                        f"{stage.peers[0]}'s model score) or scorer=student_loss|class_order|random|file")  # fmt: skip
    return fold_stages(c, stage, stage, str(stage.mutual))


def fold_stages(c: DictConfig, stage: Stage, source: Stage, prefix: str) -> list[Stage]:
    """source=folds: K fresh copies of `source`'s model (the first teacher's), copy k trained on hard labels on
    the stage's examples outside fold k, so that every example is scored by a model that never saw it;
    named `prefix`_fold1, ..."""
    model = {**source.model, "checkpoint": None}
    k = int(c.folds)
    return [
        Stage(
            stage.index,
            f"{prefix}_fold{fold + 1}",
            source.model_key,
            model,
            (),
            int(c.fold_epochs),
            "last",
            HARD_LABELS,
            f"pipeline.stages.{prefix}_fold{fold + 1}.terms",
            stage.fraction,
            task=stage.task,
            loss_terms=tuple(parse_terms(HARD_LABELS)),
            holdout=(fold, k),
        )  # fmt: skip
        for fold in range(k)
    ]
