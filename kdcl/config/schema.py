"""The config's types and enumerations, declared once as structured configs (Hydra's ConfigStore).

`conf/train.yaml` starts its defaults list with `train_schema`, so every group option is merged into
these typed nodes: a key the schema does not have, a value of the wrong type or a word outside an
enumeration fails while Hydra composes, and `kdcl.config.checks` turns that into one line naming the key.
Ranges, cross-field and file checks stay in code (kdcl/config/checks.py). The free-form parts are typed as
mappings: `pipeline` (each kind has its own keys; kdcl/run/plan.py checks them), `distill.terms`
(kdcl/losses/terms.py checks each term against its function's signature), `trainer` (a Lightning
Trainer spec, checked against Lightning's own signature) and `logger`.

Import-light on purpose (no torch): `kdcl train` answers a typo in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any  # noqa: UP035 — OmegaConf reads these annotations at runtime

from omegaconf import MISSING, DictConfig, OmegaConf


class Choice(str, Enum):
    """An enumeration whose members are plain strings too (`Order.easy_first == "easy_first"`)."""

    def __str__(self) -> str:
        return self.value


def choice(name: str, words: str) -> type[Choice]:
    """An enumeration of `words` (space-separated), each member named and valued by its word."""
    return Choice(name, {word: word for word in words.split()}, module=__name__)


Optimizer = choice("Optimizer", "adamw adam sgd")
Scheduler = choice("Scheduler", "onecycle cosine constant")
Order = choice("Order", "easy_first hard_first random")
Source = choice("Source", "final early folds")
Advance = choice("Advance", "schedule on_plateau on_threshold")
TeacherOutputMode = choice("TeacherOutputMode", "online cached views auto")
ProgressBar = choice("ProgressBar", "auto rich lines none")
Runtime = choice("Runtime", "onnxruntime eager")
Confidence = choice("Confidence", "max_prob margin")
NoiseKind = choice("NoiseKind", "symmetric pair")
Ensemble = choice("Ensemble", "none mean confidence")
Keep = choice("Keep", "weights resumable")
Crop = choice("Crop", "none rrc")


def unseen(default: Any) -> Any:
    """A data key left out of `data_identity`: it changes how training runs through the data, never which
    examples there are, their pixels, labels or order as read, nor what a given model computes on them."""
    return field(default=default, metadata={"unseen": True})


def when_set(default: None = None) -> Any:
    """A data key that is part of `data_identity` only when set: adding it kept every earlier key (and store)."""
    return field(default=default, metadata={"when_set": True})


def training_only(default: Any) -> Any:
    """A data key that changes only the training part (which training examples, their augmentation, their
    labels): part of the stored teacher outputs' keys, left out of a given model's test (`for_test=True`)."""
    return field(default=default, metadata={"training_only": True})


@dataclass
class DataConfig:
    """Every key is part of the data's identity (`data_identity`: the data part of every shared-cache key)
    unless marked `unseen(...)`, so a key added later can cost a cache miss, never a stale hit."""

    name: str = MISSING
    root: str | None = MISSING  # every data preset sets it (image_folder: ??? — required)
    download: bool = unseen(False)  # may missing files be fetched: the same files are read (checksummed), or none
    download_root: str | None = None  # seen: with root null, fashion_mnist reads the files it finds here
    image_size: int = 32
    test_fraction: float | None = None
    val_fraction: float = training_only(0.1)  # carved from the training part; the test split is fixed
    fraction: float = training_only(1.0)
    # draws the validation split and the `fraction` shares (null: the run's `seed`): fixed, every seed trains on the
    # same examples and varies only initialisation and order (a teacher given to a sweep has seen them all)
    split_seed: int | None = field(default=None, metadata={"training_only": True, "when_set": True})
    batch_size: int = unseen(64)  # training's step size: it shapes trained weights (every key holds their digest)
    eval_batch_size: int = 256  # seen: how much trainer.limit_test_batches covers; a GPU's last bits of a logit
    num_workers: int = unseen(0)  # training loader's processes (they draw its random crops; eval reads no crops)
    # true | false | auto (a bool or a word: checked in kdcl/config/checks.py); where the training set lives and
    # training's random crops are drawn: evaluation and every store read the data through plain loaders
    on_device: Any = unseen("auto")
    augment: bool = training_only(False)  # the test and validation images are never augmented
    hflip: bool = training_only(False)
    # distill.teacher_outputs=views: stored augmented views per training example (K); the view store's own key
    # holds it (ViewSpec.k)
    views: int = unseen(8)
    epochs: int = unseen(10)  # a stage's default length (trainer.max_epochs): trained weights only
    # Labels are data, so these are part of the stored teacher outputs' keys although no store reads training
    # labels today (one that does later, a loss-scored curriculum say, is exact from the start); a given
    # model's test reads no training label.
    label_noise: float = training_only(0.0)  # share of the training part's labels flipped (never validation or test)
    # symmetric: to any other class | pair: class c to c+1
    label_noise_kind: NoiseKind = training_only(NoiseKind.symmetric)
    # picks the flipped examples; fixed, so every run seed sees the same noisy labels
    label_noise_seed: int = training_only(0)
    # data=prepared: the copy's content digest, read from its manifest (${kdcl.prepared_digest:...}), so the stores
    # of an old copy are never read for a new one written to the same data.root
    digest: str | None = when_set()
    # data=synthetic only
    num_classes: int | None = None
    in_chans: int | None = None
    train_size: int | None = None
    test_size: int | None = None


def data_identity(data: DictConfig | Mapping[str, Any], for_test: bool = False) -> dict[str, Any]:
    """The data keys that can change what a model is given or computes: every key of `data` (a schema
    default where it lacks one) but those marked `unseen` (and, `for_test`, those marked `training_only`),
    resolved and JSON-ready. The one data part of the shared-cache keys: teacher logits and views
    (kdcl/teachers/), a given model's test and predictions (kdcl/run/, for_test)."""
    left_out = ("unseen", "training_only") if for_test else ("unseen",)
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    schema = {f.name: f for f in fields(DataConfig)}
    defaults = {n: None if f.default in (MISSING, dataclasses.MISSING) else f.default for n, f in schema.items()}
    unset = {n for n, f in schema.items() if f.metadata.get("when_set") and data.get(n) is None}
    return {k: v.value if isinstance(v, Enum) else v for k, v in {**defaults, **data}.items()
            if k not in unset and not (k in schema and any(schema[k].metadata.get(mark) for mark in left_out))}  # fmt: skip


@dataclass
class AugmentConfig:
    """Training augmentation built by timm (kdcl/data/augment.py); validation and test images are never
    augmented. `augment=preset` (the default) leaves the data preset's own (data.augment: pad-crop and flip)."""

    name: str = "preset"
    crop: Crop = Crop.none  # rrc: timm's training transform (RandomResizedCrop, flip, the policies below) per image
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop's area range
    ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])  # ...and aspect-ratio range
    hflip: float = 0.5  # probability of a horizontal flip
    interpolation: str = "bilinear"  # of the crop's resize: bilinear | bicubic | random
    auto_augment: str | None = None  # timm's policy string: rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, ...
    color_jitter: float | None = None  # brightness/contrast/saturation strength (timm skips it with a policy)
    re_prob: float = 0.0  # random erasing: probability per image (erased with the data's mean colour)
    mixup_alpha: float = 0.0  # timm's Mixup: Beta(α, α) mixing of image pairs; 0: off
    cutmix_alpha: float = 0.0  # ...and cutmix; both > 0: one of the two per batch
    mix_prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both: the chance of cutmix rather than mixup


@dataclass
class ModelConfig:
    name: str = MISSING  # a timm name, with a pretrained tag (resnet50.a1_in1k) or as a hub id (hf-hub:timm/...)
    pretrained: bool = (
        False  # timm's pretrained weights for the name, through timm's loader (hub cache; HF_HUB_OFFLINE)
    )
    weights: str | None = None  # local timm-compatible weights: transfer learning
    checkpoint: str | None = None  # a kdcl checkpoint: used as-is, not trained again
    drop_rate: float = 0.0


@dataclass
class DistillConfig:
    name: str = MISSING
    teacher_outputs: TeacherOutputMode = TeacherOutputMode.auto
    store_topk: int | None = None  # views: keep the top k logits per view (None: all up to 100 classes, else 10)
    store_max_mb: float | None = None  # views: refuse (before the pass) a store larger than this, on disk and in memory
    temperature: float | None = None
    terms: dict[str, Any] = MISSING


@dataclass
class CurriculumConfig:
    name: str = "none"
    pacing: str = "none"  # a registered pacing function (kdcl/curriculum/pacing.py)
    start: float = 0.2
    full_at: float = 0.8
    params: dict[str, Any] = field(default_factory=dict)
    order: Order = Order.easy_first
    balanced: bool = False
    scorer: str = "teacher_confidence"  # a registered scorer (kdcl/curriculum/scoring.py)
    source: Source = Source.final
    early_epoch: int = 1
    folds: int = 3
    fold_epochs: int = 3
    rescore_every: int = 1
    class_order: list[int] | None = None
    scores_file: str | None = None
    advance: Advance = Advance.schedule
    threshold: float = 0.9
    jump: float = 0.1
    stages: list[str] | None = None


@dataclass
class PipelineConfig:
    """Either explicit `stages` or a generator `kind` (kdcl/run/presets.py) with its own settings."""

    name: str = MISSING
    kind: str | None = None  # a registered generator: takd, dgkd, anchors, born_again, lifelong, ...
    stages: dict[str, Any] | None = None  # name -> {model, teachers, epochs, select, terms, ...}
    epochs: Any | None = None  # a generator's per-stage budget (usually ${trainer.max_epochs})
    assistants: list[Any] | None = None  # takd, dgkd: timm names or model mappings, largest first
    anchors: int | None = None  # anchors
    epochs_per_anchor: int | None = None  # anchors
    order: str | None = None  # anchors: forward | reverse | shuffled | matched (the controls)
    assistants_distill: bool | None = None  # takd, dgkd: false trains the assistants on labels alone (a control)
    generations: int | None = None  # born_again
    plain: bool | None = None  # born_again: true is the control, one stage on labels for every generation's epochs
    teacher_epoch: int | None = None  # explicit stages (standard): the last stage learns from `teacher@E`
    student_epochs: int | None = None  # any: the student's total epochs, split over its stages (equal-budget arms)
    tasks: int | None = None  # lifelong
    task_classes: list[Any] | None = None  # lifelong
    distill_weight: float | None = None  # lifelong
    temperature: float | None = None  # lifelong (LwF's), dml (the KL's between peers)
    teachers: list[Any] | None = None  # ensemble: model groups, timm names or model mappings (two or more)
    combine: str | None = None  # ensemble: mean | confidence (kdcl/losses/ensemble.py)
    student_fraction: float | None = None  # ensemble: the student's share of the training set (None: all)
    peers: list[Any] | None = None  # dml: model groups, timm names or model mappings (two or more), trained together
    finetune: bool = False  # true appends a hard-label fine-tune of the last model at a lower learning rate
    finetune_epochs: int | None = None  # default: half the last stage's epochs
    finetune_lr_scale: float = 0.1  # × optim.lr


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.adamw
    lr: float = 6e-3
    weight_decay: float = 0.05
    scheduler: Scheduler = Scheduler.onecycle
    warmup: float = 0.15
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd; needs momentum > 0
    fused: bool = True  # torch's fused update kernel where it has one (CPU, CUDA); false: its per-tensor loop


@dataclass
class SpeedConfig:
    """kdcl's own speed switches (not Trainer arguments): applied to the models and batches."""

    channels_last: bool = False  # models and batches in channels-last memory format (GPU, bf16)
    compile: bool = False  # torch.compile the student and the teachers
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: graphs captured, no code generated)
    threads: int | None = (
        None  # CPU threads of this process; null: torch's default, or under the joblib launcher cores ÷ n_jobs
    )


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    data_dir: str = "data"
    cache_dir: str | None = None  # stores shared by runs (teacher views, teachers' tests); None: <output_dir>/cache
    cache_max_gb: float | None = None  # the shared cache's bound: least recently used entries evicted; None: no bound


@dataclass
class LatencyConfig:
    """Every model's CPU latency (`latency.*`; `report.latency_*` before issue 23: kdcl/config/upgrade.py)."""

    batches: list[int] = field(default_factory=lambda: [1, 64])  # [] skips latency
    runtimes: list[Runtime] = field(default_factory=lambda: [Runtime.onnxruntime, Runtime.eager])
    speedup_runtime: Runtime = Runtime.onnxruntime  # the runtime whose latency the speed-up column compares


@dataclass
class CheckpointConfig:
    """What a finished stage keeps of its best.ckpt and last.ckpt. A finished stage never resumes, so its
    optimizer, scheduler and loop state (two thirds of an AdamW checkpoint) are dead weight."""

    keep: Keep = Keep.weights  # weights: the model (and epoch, step, hyper-parameters) | resumable: everything


@dataclass
class CascadeConfig:
    """`kdcl eval RUN_DIR cascade=true`: the student answers when its confidence reaches τ, else the teacher."""

    confidence: Confidence = Confidence.max_prob  # max_prob: top probability; margin: top minus second
    max_drop: float = 0.01  # the operating point: cheapest τ whose val accuracy is within this of the teacher's
    steps: int = 100  # τ on a grid of steps + 1 values in [0, 1], and one above 1 (the teacher alone)


@dataclass
class TrainConfig:
    data: DataConfig = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    teacher: ModelConfig | None = None
    student: ModelConfig | None = None
    distill: DistillConfig = MISSING
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    pipeline: PipelineConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: dict[str, Any] = MISSING
    logger: dict[str, Any] | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    progress_bar: ProgressBar = ProgressBar.auto
    seed: int = 0
    name: str = "train"
    resume: str | None = None


def teacher_input_size(default: Any, *, _root_: DictConfig) -> int:
    """`${kdcl.teacher_input_size:64}` (data=image_folder's data.image_size): a pretrained teacher's own input
    size (224 for resnet50.a1_in1k), else `default`. Reads timm's registry only for a pretrained teacher."""
    teacher = _root_.get("teacher")
    if not teacher or not teacher.get("pretrained") or not isinstance(teacher.get("name"), str):
        return int(default)
    from kdcl.models.hub import pretrained_input_size

    return pretrained_input_size(teacher.name) or int(default)


PREPARED_MANIFEST = "kdcl_prepared.json"  # kdcl/data/prepared.py writes it (this layer does not import torch)


def prepared_digest(root: Any) -> str | None:
    """`${kdcl.prepared_digest:${data.root}}` (data=prepared's data.digest): the content digest in the manifest of
    the prepared copy at `root`; None where there is none (reading the copy then fails with its own line)."""
    try:
        return str(json.loads((Path(str(root)) / PREPARED_MANIFEST).read_text())["digest"]) if root else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def register() -> None:
    """Make `train_schema` and kdcl's resolvers known to Hydra (idempotent; called before any composition)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("kdcl.teacher_input_size"):
        OmegaConf.register_new_resolver("kdcl.teacher_input_size", teacher_input_size)
    if not OmegaConf.has_resolver("kdcl.prepared_digest"):
        OmegaConf.register_new_resolver("kdcl.prepared_digest", prepared_digest)
