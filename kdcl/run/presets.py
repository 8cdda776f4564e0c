"""Pipelines that generate their stages. Adding one = one `@register_pipeline` function + one YAML.

A generator gets the `pipeline` node (plain dict) and the whole config and returns the stages in order
as {name: spec}, each spec shaped like an explicit `pipeline.stages` entry: model (a model group such
as teacher/student, or a mapping with a timm name), teachers (earlier stages, `name@E` for the
checkpoint saved after epoch E), epochs, select, and optionally terms, init, lr_scale, fraction, task,
ensemble, match_entropy, mutual (the group whose peers train together, pipeline=dml).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from omegaconf import DictConfig

from kdcl.common.errors import KdclError, did_you_mean

Specs = dict[str, dict]
PIPELINES: dict[str, Callable[[dict, DictConfig], Specs]] = {}
PIPELINE_KEYS: dict[str, tuple[str, ...]] = {}  # the `pipeline.*` settings each generator reads
COMMON_KEYS = ("name", "kind", "finetune", "finetune_epochs", "finetune_lr_scale", "student_epochs")
ANCHOR_ORDERS = ("forward", "reverse", "shuffled", "matched")  # pipeline.order of pipeline=anchors


def register_pipeline(name: str, keys: tuple[str, ...] = ()):
    """A generator of stages; `keys`: the pipeline settings it reads (a field of PipelineConfig each)."""

    def add(fn):
        PIPELINES[name] = fn
        PIPELINE_KEYS[name] = keys
        return fn

    return add


def positive(p: dict, key: str) -> int:
    value = p.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KdclError(f"pipeline.{key}={value} must be an integer ≥ 1")
    return value


def flag(p: dict, key: str, default: bool) -> bool:
    value = p.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise KdclError(f"pipeline.{key}={value} must be true or false")
    return value


def stage(model, teachers=(), epochs: int = 1, select: str = "best", **extra) -> dict:
    return {"model": model, "teachers": list(teachers), "epochs": epochs, "select": select, **extra}


def assistant_models(p: dict) -> list[dict]:
    """`pipeline.assistants`: timm names (or model mappings), largest first."""
    assistants = p.get("assistants")
    if not isinstance(assistants, list) or not assistants:
        raise KdclError(
            f"pipeline.assistants={assistants} must list at least one timm model, largest first, e.g. [resnet34,resnet18]"
        )
    return [a if isinstance(a, dict) else {"name": str(a)} for a in assistants]


def assistant_chain(p: dict, dense: bool) -> Specs:
    """`pipeline.assistants_distill=false`: the control whose assistants learn from the labels alone."""
    epochs, distill = positive(p, "epochs"), flag(p, "assistants_distill", True)
    specs, earlier = {"teacher": stage("teacher", epochs=epochs)}, ["teacher"]
    for i, model in enumerate(assistant_models(p), 1):
        name = f"assistant{i}"
        specs[name] = stage(model, (earlier if dense else earlier[-1:]) if distill else (), epochs)
        earlier.append(name)
    specs["student"] = stage("student", earlier if dense else earlier[-1:], epochs)
    return specs


@register_pipeline("takd", keys=("assistants", "assistants_distill", "epochs"))
def takd(p: dict, cfg: DictConfig) -> Specs:
    """Teacher Assistant KD (Mirzadeh et al. 2020): each model learns from the one before it."""
    return assistant_chain(p, dense=False)


@register_pipeline("dgkd", keys=("assistants", "assistants_distill", "epochs"))
def dgkd(p: dict, cfg: DictConfig) -> Specs:
    """Densely guided KD (Son et al. 2021): each model learns from the teacher and every assistant before it."""
    return assistant_chain(p, dense=True)


@register_pipeline("anchors", keys=("anchors", "epochs", "epochs_per_anchor", "order"))
def anchors(p: dict, cfg: DictConfig) -> Specs:
    """Route-constrained optimisation (Jin et al. 2019): the teacher's checkpoints along its training
    route teach the student in order, weak to strong; the student carries its weights from anchor to anchor.
    `pipeline.order`: the controls, the same anchors reversed or shuffled, or the final teacher alone at the
    temperature that makes it as soft as the early anchors (matched)."""
    epochs, n = positive(p, "epochs"), positive(p, "anchors")
    if p.get("epochs_per_anchor") is not None and p.get("student_epochs") is not None:
        raise KdclError("pipeline.epochs_per_anchor and pipeline.student_epochs both set the student's budget; "
                        "drop one (student_epochs is the total over the anchors)")  # fmt: skip
    per_anchor = p.get("epochs_per_anchor") or math.ceil(epochs / n)
    early = sorted({max(1, round(epochs * k / n)) for k in range(1, n)} - {epochs})
    route = [*(f"teacher@{e}" for e in early), "teacher"]  # weak to strong; `teacher` is the chosen checkpoint
    order = p.get("order") or "forward"
    specs = {"teacher": stage("teacher", epochs=epochs)}
    if order == "matched":  # the same student budget, from the final teacher alone
        if not early:
            raise KdclError(f"pipeline.order=matched needs an early anchor to match, and anchors={n} over "
                            f"epochs={epochs} gives none; raise pipeline.anchors or pipeline.epochs")  # fmt: skip
        specs["student"] = stage("student", ["teacher"], per_anchor * len(route), match_entropy=route[:-1])
        return specs
    for k, ref in enumerate(ordered(route, order, int(cfg.seed)), 1):
        name = "student" if k == len(route) else f"student_anchor{k}"
        init = {"init": f"student_anchor{k - 1}"} if k > 1 else {}
        specs[name] = stage("student", [ref], per_anchor, "best" if name == "student" else "last", **init)
    return specs


def ordered(route: list[str], order: str, seed: int) -> list[str]:
    """The anchors in the order the student meets them: forward (weak to strong), reverse, or a permutation
    drawn from `seed` (each seed of a sweep its own order)."""
    if order not in ANCHOR_ORDERS:
        raise KdclError(f"pipeline.order '{order}' must be one of {'|'.join(ANCHOR_ORDERS)}"
                        f"{did_you_mean(str(order), ANCHOR_ORDERS)}")  # fmt: skip
    if order == "reverse":
        return route[::-1]
    if order == "shuffled":  # a permutation other than the forward route itself, or the control would be the arm
        rng = random.Random(seed)
        while (shuffled := rng.sample(route, len(route))) == route and len(route) > 1:
            pass
        return shuffled
    return route


@register_pipeline("born_again", keys=("generations", "epochs", "plain"))
def born_again(p: dict, cfg: DictConfig) -> Specs:
    """Born-again networks (Furlanello et al. 2018): generations of the student's architecture, each
    taught by the last; generation 0 learns from the labels. `pipeline.plain=true`: the control, one
    student stage on the labels for all the generations' epochs."""
    epochs, generations = positive(p, "epochs"), positive(p, "generations")
    if flag(p, "plain", False):
        return {"student": stage("student", epochs=(generations + 1) * epochs)}
    specs = {"gen0": stage("student", epochs=epochs)}
    for g in range(1, generations + 1):
        specs[f"gen{g}"] = stage("student", [f"gen{g - 1}"], epochs)
    return specs


@register_pipeline("lifelong", keys=("tasks", "task_classes", "distill_weight", "temperature", "epochs"))
def lifelong(p: dict, cfg: DictConfig) -> Specs:
    """Class-incremental learning without forgetting (Li & Hoiem 2017): stage k learns task k's classes,
    starting from stage k−1's weights and distilling its outputs on the old classes (weight 0: the
    control, plain fine-tuning)."""
    epochs = positive(p, "epochs")
    tasks = p.get("task_classes") or positive(p, "tasks")
    n = len(tasks) if isinstance(tasks, list) else tasks
    weight = 1.0 if p.get("distill_weight") is None else p["distill_weight"]
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
        raise KdclError(f"pipeline.distill_weight={weight} must be ≥ 0 (0 switches distillation off)")
    terms = {
        "ce": {"weight": 1.0},
        "kd": {
            "weight": float(weight),
            "temperature": float(2.0 if p.get("temperature") is None else p["temperature"]),
        },
    }
    specs = {"task1": stage("student", epochs=epochs, select="last", task=[1, tasks])}
    for k in range(2, n + 1):
        previous = f"task{k - 1}"
        if weight > 0:
            extra = {"terms": terms}
            teachers = [previous]
        else:
            extra, teachers = {"terms": {"ce": {"weight": 1.0}}}, []
        specs[f"task{k}"] = stage("student", teachers, epochs, "last", init=previous, task=[k, tasks], **extra)
    return specs


def model_ref(model, cfg: DictConfig, key: str):
    """A stage's `model` from a list entry: a model group's name (teacher, student) as it is, a mapping as it
    is, else a timm name (checked here, so that the error names the list entry `key`)."""
    if isinstance(model, dict) or (isinstance(model, str) and isinstance(cfg.get(model), DictConfig)
                                   and "name" in cfg[model]):  # fmt: skip
        return model
    from kdcl.models.names import check_model_name  # timm's names, read only when one is given

    check_model_name(model, key)
    return {"name": str(model)}


@register_pipeline("ensemble", keys=("teachers", "combine", "epochs", "student_fraction"))
def ensemble(p: dict, cfg: DictConfig) -> Specs:
    """K teachers (the same model at different seeds, or different models), then a student distilled from
    their ensemble: one target per example, `combine` = mean (of probabilities) | confidence (weighted)."""
    epochs = positive(p, "epochs")
    teachers = p.get("teachers")
    if not isinstance(teachers, list) or len(teachers) < 2:
        raise KdclError(f"pipeline.teachers={teachers} must list at least two teachers: model groups (teacher), "
                        "timm names or model mappings, e.g. [teacher,teacher] or [resnet18,resnet34]")  # fmt: skip
    specs = {}
    for k, model in enumerate(teachers, 1):
        specs[f"teacher{k}"] = stage(model_ref(model, cfg, f"pipeline.teachers[{k - 1}]"), epochs=epochs)
    fraction = {} if p.get("student_fraction") is None else {"fraction": p["student_fraction"]}
    specs["student"] = stage("student", list(specs), epochs, ensemble=p.get("combine") or "mean", **fraction)
    return specs


@register_pipeline("dml", keys=("peers", "epochs", "temperature"))
def dml(p: dict, cfg: DictConfig) -> Specs:
    """Deep mutual learning (Zhang et al. 2018): K peers trained together in one stage, no teacher. Peer k
    learns from the labels and from the others' current outputs: CE(y, p_k) + 1/(K−1) Σ_{j≠k} KL(p_j ‖ p_k),
    the ce and kd terms with the peers as kd's targets (kd averages over them). Each peer is a stage of its
    own (dml1, dml2, ...) for the report, export and later stages; they share one training (`mutual: dml`)."""
    epochs = positive(p, "epochs")
    peers = p.get("peers")
    if not isinstance(peers, list) or len(peers) < 2:
        raise KdclError(f"pipeline.peers={peers} must list at least two models: model groups (student), timm "
                        "names or model mappings, e.g. [student,student] or [resnet18,mobilenetv3_small_100]")  # fmt: skip
    temperature = 1.0 if p.get("temperature") is None else p["temperature"]
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise KdclError(f"pipeline.temperature={temperature} must be a number > 0 (the KL's temperature; "
                        "the paper's is 1)")  # fmt: skip
    terms = {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": float(temperature)}}
    return {f"dml{k}": stage(model_ref(model, cfg, f"pipeline.peers[{k - 1}]"), epochs=epochs, mutual="dml",
                             terms=terms)
            for k, model in enumerate(peers, 1)}  # fmt: skip


def task_classes(task: tuple, num_classes: int) -> tuple[list[int], list[int], list[int]]:
    """(classes of task k, classes seen up to k, classes of earlier tasks) for task = (k, tasks), where
    tasks is a count (the classes split in order into equal parts) or explicit lists of classes."""
    k, tasks = task
    if isinstance(tasks, int):
        if not 1 <= tasks <= num_classes:
            raise KdclError(f"pipeline.tasks={tasks} must be between 1 and the data's {num_classes} classes")
        bounds = [round(i * num_classes / tasks) for i in range(tasks + 1)]
        split = [list(range(bounds[i], bounds[i + 1])) for i in range(tasks)]
    else:
        split = [list(t) for t in tasks]
        flat = [c for t in split for c in t]
        if (
            not all(isinstance(c, int) and 0 <= c < num_classes for c in flat)
            or len(set(flat)) != len(flat)
            or not all(split)
        ):
            raise KdclError(
                f"pipeline.task_classes={tasks} must be non-empty lists of distinct classes in 0..{num_classes - 1}"
            )
    seen = [c for t in split[:k] for c in t]
    return split[k - 1], seen, seen[: len(seen) - len(split[k - 1])]


def split_student_epochs(specs: Specs, total) -> Specs:
    """`pipeline.student_epochs`: the student's whole budget, split over the stages that train the student model
    (`model: student`, or any peer of a mutual group) as evenly as whole epochs allow, later stages taking the remainder: every arm of a
    comparison then trains the student for the same epochs (the same optimizer steps on the same examples)."""
    # a mutual group's peers train together: one share of the budget for the group, every peer its length
    unit = {name: spec.get("mutual") or name for name, spec in specs.items()
            if spec.get("model") == "student" or spec.get("mutual")}  # fmt: skip
    names = list(dict.fromkeys(unit.values()))
    if not names:
        raise KdclError(f"pipeline.student_epochs={total}: no stage of this pipeline trains the student "
                        "(model: student); drop it")  # fmt: skip
    if not isinstance(total, int) or isinstance(total, bool) or total < len(names):
        raise KdclError(f"pipeline.student_epochs={total} must be an integer ≥ {len(names)}, an epoch for each "
                        f"student stage ({', '.join(names)})")  # fmt: skip
    share, extra = divmod(total, len(names))
    epochs = {name: share + (k >= len(names) - extra) for k, name in enumerate(names)}
    return {name: {**spec, "epochs": epochs[unit[name]]} if name in unit else spec for name, spec in specs.items()}


def early_stopped(specs: Specs, epoch, given: set[str] = frozenset()) -> Specs:
    """`pipeline.teacher_epoch=E` (Cho & Hariharan 2019): the last stage learns from its teachers as they were
    after epoch E (`teacher@E`) instead of their chosen checkpoints. A `given` teacher (a checkpoint from another
    run) has the epochs its run kept, checked with the plan."""
    name, last = list(specs.items())[-1]
    teachers = [str(t) for t in last.get("teachers") or ()]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise KdclError(f"pipeline.teacher_epoch={epoch} must be an integer ≥ 1 (the teacher's epoch), or null")
    if not teachers or any("@" in t for t in teachers):
        raise KdclError(f"pipeline.teacher_epoch={epoch} needs a last stage whose teachers are stage names; "
                        f"pipeline.stages.{name}.teachers is {teachers}")  # fmt: skip
    for t in teachers:
        budget = specs.get(t, {}).get("epochs")
        if t not in given and isinstance(budget, int) and epoch > budget:
            raise KdclError(f"pipeline.teacher_epoch={epoch} must be 1..{budget}, the epochs stage '{t}' trains")
    return {**specs, name: {**last, "teachers": [f"{t}@{epoch}" for t in teachers]}}


def finetune_stage(p: dict, specs: Specs) -> tuple[str, dict]:
    """A hard-label fine-tune of the pipeline's last model at a lower learning rate."""
    last_name, last = list(specs.items())[-1]
    epochs = p.get("finetune_epochs") or max(1, math.ceil(last["epochs"] / 2))
    scale = p.get("finetune_lr_scale", 0.1)
    return "finetune", stage(last["model"], (), epochs, "best", init=last_name, lr_scale=scale,
                             terms={"ce": {"weight": 1.0}})  # fmt: skip
