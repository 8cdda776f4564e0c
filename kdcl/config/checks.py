"""The checks of a composed config that need neither torch, Lightning, timm nor the data: every mistake is
one KdclError naming the key.

Types and enumerations are declared in kdcl/config/schema.py (Hydra refuses a wrong type while composing;
`schema_error` names the key). Here: ranges, cross-field and file checks. `check_values` needs neither
torch nor Lightning, so a typo is answered in a fraction of a second; `check_config` (kdcl/run/validate.py)
runs it, then builds the `Plan` (loss terms parsed, stages, curriculum) and checks what needs models, files
or Lightning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, ValidationError

from kdcl.common.errors import KdclError, did_you_mean, show
from kdcl.config.schema import TrainConfig
from kdcl.losses.values import check_term_values

GROUPS = tuple(TrainConfig.__dataclass_fields__)


def fraction_in(value, key: str, low_open: bool = True, high_closed: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if low_open else value >= 0) and (value <= 1 if high_closed else value < 1)
    if not ok:
        rng = ("(0" if low_open else "[0") + ", " + ("1]" if high_closed else "1)")
        raise KdclError(f"{key}={show(value)} must be a fraction in {rng}")


def positive_int(value, key: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise KdclError(f"{key}={value} must be an integer ≥ {minimum}")


TYPE_WORDS = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


def schema_error(exc: Exception) -> KdclError | None:
    """The one-line error for OmegaConf's schema ValidationError somewhere in `exc`'s causes (or None)."""
    while exc is not None and not isinstance(exc, ValidationError):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    key, text = exc.full_key, str(exc).splitlines()[0]
    if "expected one of" in text:  # an enumeration: "Invalid value 'x', expected one of [a, b]"
        value = text.split("'")[1]
        options = text.split("[", 1)[1].rstrip("]").split(", ")
        return KdclError(f"{key}={value} must be one of {'|'.join(options)}{did_you_mean(value, options)}")
    if "could not be converted to" in text:  # "Value 'abc' of type 'str' could not be converted to Float"
        value, wanted = text.split("'")[1], text.rsplit(" ", 1)[-1]
        return KdclError(f"{key}={value} must be {TYPE_WORDS.get(wanted, wanted)}; check the override")
    if "is not a ListConfig" in text:  # "Invalid value assigned: int is not a ListConfig, list or tuple."
        return KdclError(f"{key}={show(getattr(exc, 'value', '?'))} must be a list, e.g. [0,1,2]; check the override")
    return KdclError(f"{key}: {text}; check the override")


def resolve_all(cfg: DictConfig) -> None:
    """Fail on `???` values and broken interpolations with the key's name."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        if key in GROUPS:  # a deleted group (`~optim`) leaves the schema's MISSING behind
            raise KdclError(f"the config has no '{key}'; do not delete it (~{key}) or choose an option") from None
        raise KdclError(f"{key} is required here and has no value; set it on the command line ({key}=...)") from None
    except InterpolationResolutionError as exc:
        raise KdclError(f"{exc.full_key}: cannot resolve its value ({exc.msg}); fix or override the key") from None


def check_data(d: DictConfig) -> None:
    fraction_in(d.fraction, "data.fraction")
    fraction_in(d.val_fraction, "data.val_fraction", low_open=False, high_closed=False)
    fraction_in(d.get("label_noise", 0.0), "data.label_noise", low_open=False, high_closed=False)
    if d.get("test_fraction") is not None:
        fraction_in(d.test_fraction, "data.test_fraction", high_closed=False)
    positive_int(d.image_size, "data.image_size", 8)
    positive_int(d.batch_size, "data.batch_size")
    positive_int(d.eval_batch_size, "data.eval_batch_size")
    positive_int(d.num_workers, "data.num_workers", 0)
    positive_int(d.epochs, "data.epochs")
    positive_int(d.views, "data.views")
    for key in SYNTHETIC_ONLY:
        if d.get(key) is not None and d.name != "synthetic":
            raise KdclError(f"data.{key} is a setting of data=synthetic only; data={d.name} reads it from its files")
    if d.on_device not in (True, False, "auto"):  # a bool or a word: OmegaConf has no Union type
        raise KdclError(f"data.on_device={d.on_device} must be true, false or auto")
    if d.get("root") and not d.get("download") and not Path(d.root).exists():
        raise KdclError(
            f"data.root '{d.root}' does not exist; point it at the {d.name} files or set data.download=true"
        )


SYNTHETIC_ONLY = ("num_classes", "in_chans", "train_size", "test_size")


def check_optim(o: DictConfig) -> None:
    if o.lr <= 0:
        raise KdclError(f"optim.lr={show(o.lr)} must be > 0 (e.g. 3e-3)")
    for key in ("weight_decay", "momentum"):
        if o[key] < 0:
            raise KdclError(f"optim.{key}={show(o[key])} must be ≥ 0")
    if not 0 <= o.warmup < 1:
        raise KdclError(f"optim.warmup={show(o.warmup)} must be in [0, 1)")
    if o.name == "sgd" and o.nesterov and o.momentum <= 0:
        raise KdclError(f"optim.momentum={show(o.momentum)} with optim.nesterov=true: Nesterov needs momentum > 0; "
                        "set optim.momentum=0.9 or optim.nesterov=false")  # fmt: skip


def check_no_curriculum(c: DictConfig) -> None:
    """With curriculum=none every other curriculum key is unused: one set anyway is a mistake, not a no-op."""
    from kdcl.config.compose import config_dir

    defaults = OmegaConf.load(config_dir() / "curriculum" / "none.yaml")
    for key, default in defaults.items():
        value = c.get(key)
        if key != "name" and value != default:
            raise KdclError(f"curriculum.{key}={show(value)} has no effect with curriculum=none (no curriculum); choose "
                            f"one (e.g. curriculum=linear curriculum.{key}=...) or drop curriculum.{key}")  # fmt: skip


def check_curriculum(c: DictConfig) -> None:
    """The curriculum's own values; which stages it applies to is checked by the plan."""
    from kdcl.curriculum.pacing import check_pacing

    if c.name == "none":
        check_no_curriculum(c)
    check_pacing(c.pacing, c.start, c.full_at, OmegaConf.to_container(c.params))
    if c.pacing == "none":
        return
    order = c.get("class_order")
    if c.scorer == "class_order" and order is not None and len(set(order)) != len(order):
        raise KdclError(f"curriculum.class_order={order} must list distinct class indices, easiest first, e.g. [0,1,2]")
    fraction_in(c.threshold, "curriculum.threshold")
    fraction_in(c.jump, "curriculum.jump", low_open=False)
    positive_int(c.folds, "curriculum.folds", 2)
    for key in ("fold_epochs", "early_epoch", "rescore_every"):
        positive_int(c[key], f"curriculum.{key}")
    if c.scorer == "file":
        if not c.scores_file:
            raise KdclError("curriculum.scorer=file needs curriculum.scores_file=PATH (one score per training example)")
        if not Path(c.scores_file).is_file():
            raise KdclError(
                f"curriculum.scores_file '{c.scores_file}' does not exist; give a .pt, .npy or text file of scores"
            )


def latency_batches(cfg: DictConfig) -> list[int]:
    """latency.batches; without a `latency` node (`~latency`) no latency is measured."""
    return [int(b) for b in (cfg.get("latency") or {}).get("batches") or []]


def latency_runtimes(cfg: DictConfig) -> list[str]:
    """latency.runtimes as plain words, each once."""
    return list(dict.fromkeys(str(r) for r in (cfg.get("latency") or {}).get("runtimes") or []))


def check_latency(cfg: DictConfig) -> None:
    if any(b < 1 for b in latency_batches(cfg)):
        raise KdclError(f"latency.batches={cfg.latency.batches} must list batch sizes ≥ 1, e.g. [1,64] "
                        "(or [] to skip)")  # fmt: skip
    runtimes = latency_runtimes(cfg)
    if latency_batches(cfg) and runtimes and str(cfg.latency.speedup_runtime) not in runtimes:
        raise KdclError(f"latency.speedup_runtime={cfg.latency.speedup_runtime} is not measured "
                        f"(latency.runtimes=[{','.join(runtimes)}]); add it there or choose one of those")  # fmt: skip


LOGGER_EXTRAS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}  # logger class → its package = kdcl's extra


def logger_kind(spec) -> str:
    """A logger spec's class name: MLFlowLogger, WandbLogger, TensorBoardLogger, ..."""
    return str(spec.get("_target_", "")).rsplit(".", 1)[-1]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: importing it is blocked
        return False


def check_logger_extras(loggers) -> None:
    """A logger whose package is missing is one line naming the extra to install (found without importing it)."""
    for name, spec in (loggers or {}).items():
        module = LOGGER_EXTRAS.get(logger_kind(spec)) if spec is not None else None
        if module and not installed(module):
            raise KdclError(f"logger.{name} needs {module}, which is not installed: pip install 'kdcl[{module}]'")


def check_cascade(c: DictConfig) -> None:
    """The cascade's settings (read by kdcl eval cascade=true)."""
    if not 0 <= c.max_drop <= 1:
        raise KdclError(f"cascade.max_drop={show(c.max_drop)} must be in [0, 1]: the accuracy (a fraction, 0.01 = "
                        "one point) the cascade may lose against the teacher")  # fmt: skip
    positive_int(c.steps, "cascade.steps")


def range_pair(value, key: str, low: float, high: float | None) -> None:
    """[a, b] with low ≤ a ≤ b (≤ high)."""
    ok = len(value) == 2 and low <= value[0] <= value[1] and (high is None or value[1] <= high)
    limit = f"{low} ≤ a ≤ b" + (f" ≤ {high}" if high is not None else "")
    if not ok:
        raise KdclError(f"{key}={show(list(value))} must be a pair [a, b] with {limit}")


def check_augment(a: DictConfig, data: DictConfig) -> None:
    """timm's augmentation (augment=rrc|randaug, mixup/cutmix): ranges, and one crop at a time."""
    range_pair(a.scale, "augment.scale", 0.0, 1.0)
    if a.scale[1] <= 0:
        raise KdclError(f"augment.scale={show(list(a.scale))} must end above 0 (a share of the image's area)")
    range_pair(a.ratio, "augment.ratio", 1e-3, None)
    for key in ("hflip", "re_prob", "mix_prob", "switch_prob"):
        fraction_in(a[key], f"augment.{key}", low_open=False)
    for key in ("mixup_alpha", "cutmix_alpha"):
        if a[key] < 0:
            raise KdclError(f"augment.{key}={show(a[key])} must be ≥ 0 (0: off; timm's recipes use 0.2–1.0)")
    if a.color_jitter is not None and a.color_jitter < 0:
        raise KdclError(f"augment.color_jitter={show(a.color_jitter)} must be ≥ 0, or null for none")
    if a.interpolation not in ("bilinear", "bicubic", "random"):
        raise KdclError(f"augment.interpolation '{a.interpolation}' must be bilinear, bicubic or random")
    if str(a.crop) == "rrc" and data.augment:
        raise KdclError("augment.crop=rrc and data.augment=true are two crops; keep one (augment=rrc switches "
                        "data.augment off, augment=padcrop is the pad-crop alone)")  # fmt: skip
    if str(a.crop) == "rrc" and data.get("on_device") is True:
        raise KdclError("data.on_device=true cannot hold augment.crop=rrc's images: timm's transform runs per image "
                        "on the CPU; set data.on_device=auto")  # fmt: skip
    timm_only = [k for k in ("auto_augment", "color_jitter") if a[k]] + (["re_prob"] if a.re_prob > 0 else [])
    if timm_only and str(a.crop) != "rrc":
        raise KdclError(f"augment.{timm_only[0]} is part of timm's training transform, which starts with "
                        "RandomResizedCrop; set augment.crop=rrc (or choose augment=rrc|randaug)")  # fmt: skip


def check_values(cfg: DictConfig) -> None:
    """Everything that needs no torch, Lightning, models or data (a few milliseconds)."""
    from kdcl.training.trainer import check_trainer_keys

    resolve_all(cfg)
    check_data(cfg.data)
    if cfg.get("augment") is not None:
        check_augment(cfg.augment, cfg.data)
    check_optim(cfg.optim)
    positive_int(cfg.trainer.get("max_epochs"), "trainer.max_epochs")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and clip < 0:
        raise KdclError(f"trainer.gradient_clip_val={show(clip)} must be ≥ 0 (0 or null: no clipping), e.g. 1.0")
    if clip and cfg.optim.get("fused", True) and str(cfg.trainer.get("precision")) in ("16-mixed", "16"):
        # a fused optimizer unscales fp16 gradients itself, after Lightning would have clipped them: it refuses
        raise KdclError(f"trainer.gradient_clip_val={show(clip)} with trainer.precision={cfg.trainer.precision} needs "
                        "torch's per-tensor optimizer loop: add optim.fused=false (or use precision=bf16-mixed)")  # fmt: skip
    threads = (cfg.get("speed") or {}).get("threads")
    if threads is not None and threads < 1:
        raise KdclError(
            f"speed.threads={threads} must be ≥ 1 (CPU threads of this process), or null for torch's default"
        )
    check_trainer_keys(cfg.trainer)
    if cfg.distill.get("store_topk") is not None:
        positive_int(cfg.distill.store_topk, "distill.store_topk")
    budget = cfg.distill.get("store_max_mb")
    if budget is not None and budget <= 0:
        raise KdclError(f"distill.store_max_mb={show(budget)} must be > 0 (megabytes), or null for no limit")
    temperature = cfg.distill.get("temperature")
    if temperature is not None and temperature <= 0:
        raise KdclError(f"distill.temperature={show(temperature)} must be > 0 (e.g. 4)")
    if cfg.get("latency") is not None:
        check_latency(cfg)
    check_curriculum(cfg.curriculum)
    check_cascade(cfg.cascade)
    check_logger_extras(cfg.get("logger"))
    check_term_values(OmegaConf.to_container(cfg.distill.terms, resolve=True))


def plain(cfg: DictConfig) -> DictConfig:
    """The same config without the schema's types: enumerations become plain strings, so the config can be
    saved in checkpoints as plain containers."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
