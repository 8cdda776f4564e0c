"""The one place a Lightning Trainer is built: from the `trainer` spec (conf/trainer/*.yaml, a Hydra
`_target_` node), so every Trainer argument a user sets takes effect. Stages and `kdcl eval` get their
Trainer here; kdcl adds only what it must supply per stage (KDCL_SUPPLIES).

`check_trainer_keys` reads the Trainer's own signature without importing Lightning (5 s): a typo in a
Trainer argument is refused as fast as any other unknown key.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdcl.common.errors import KdclError, did_you_mean

# set by kdcl for every stage: the stage's epochs, its callbacks and loggers, where it writes, the progress
# display, and whether a curriculum sampler replaces Lightning's distributed sampler
KDCL_SUPPLIES = ("callbacks", "logger", "default_root_dir", "enable_progress_bar", "use_distributed_sampler")
LIGHTNING_TRAINERS = {"pytorch_lightning.Trainer": "pytorch_lightning", "lightning.pytorch.Trainer": "lightning"}


def lightning_source(package: str, side: str, path: str) -> ast.Module | None:
    """A Lightning source file, parsed without importing the package: `path` inside its `side`, "pytorch"
    (pytorch_lightning or lightning/pytorch) or "fabric" (lightning_fabric or lightning/fabric)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    if package == "pytorch_lightning":
        pytorch, fabric = root, root.parent / "lightning_fabric"
    else:
        pytorch, fabric = root / "pytorch", root / "fabric"
    source = (pytorch if side == "pytorch" else fabric) / path
    return ast.parse(source.read_text()) if source.is_file() else None


def static_trainer_arguments(package: str) -> set[str] | None:
    """The keyword arguments of Lightning's `Trainer.__init__`, read from its source."""
    tree = lightning_source(package, "pytorch", "trainer/trainer.py")
    for node in tree.body if tree else ():
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    return {a.arg for a in fn.args.args + fn.args.kwonlyargs} - {"self"}
    return None


def static_precisions(package: str) -> set[str] | None:
    """The precision values Lightning accepts (its `_PRECISION_INPUT*` Literals), read from the source."""
    tree = lightning_source(package, "fabric", "plugins/precision/precision.py")
    values: set[str] = set()
    for node in tree.body if tree else ():
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id.startswith("_PRECISION_INPUT"):
            literal = node.value
            if isinstance(literal, ast.Subscript) and getattr(literal.value, "id", "") == "Literal":
                items = literal.slice.elts if isinstance(literal.slice, ast.Tuple) else [literal.slice]
                values |= {str(item.value) for item in items if isinstance(item, ast.Constant)}
    return values or None


def check_precision(spec: DictConfig) -> None:
    """trainer.precision is one Lightning knows (read from its source: no import)."""
    package = LIGHTNING_TRAINERS.get(str(spec.get("_target_")))
    allowed = static_precisions(package) if package and "precision" in spec else None
    if allowed and str(spec.precision) not in allowed:
        raise KdclError(f"trainer.precision={spec.precision} is not a precision Lightning knows; use one of "
                        f"{'|'.join(sorted(allowed))}")  # fmt: skip


@lru_cache(maxsize=4)
def trainer_arguments(target: str) -> frozenset[str]:
    """The arguments `target` accepts: read statically for Lightning's Trainer, else from the imported class."""
    package = LIGHTNING_TRAINERS.get(target)
    names = static_trainer_arguments(package) if package else None
    if names is None:
        from hydra.utils import get_class

        try:
            names = set(inspect.signature(get_class(target)).parameters) - {"self", "args", "kwargs"}
        except Exception as exc:  # noqa: BLE001 — any import problem is the user's target
            raise KdclError(
                f"trainer._target_ '{target}' cannot be imported ({exc}); use pytorch_lightning.Trainer"
            ) from None
    return frozenset(names)


def check_trainer_keys(spec: DictConfig) -> None:
    """Every key of the trainer spec is an argument of its Trainer, and none is one kdcl sets per stage."""
    target = spec.get("_target_")
    if not target:
        raise KdclError("trainer._target_ is missing; the trainer group is a Lightning Trainer spec "
                        "(_target_: pytorch_lightning.Trainer)")  # fmt: skip
    known = trainer_arguments(str(target))
    for key in spec:
        if key == "_target_":
            continue
        if key in KDCL_SUPPLIES:
            raise KdclError(f"trainer.{key} is set by kdcl for every stage; remove it (~trainer.{key})")
        if key not in known:
            raise KdclError(
                f"trainer.{key} is not an argument of {target}{did_you_mean(str(key), known)}; "
                "see Lightning's Trainer documentation for the arguments it takes"
            )
    check_precision(spec)


def build_trainer(spec: DictConfig, progress_bar: str = "none", stage_name: str = "", callbacks: list | None = None,
                  logger: Any = False, root_dir: Path | None = None, own_sampler: bool = False, **overrides):  # fmt: skip
    """A Trainer from `spec` plus what kdcl supplies; `overrides` replace spec values (e.g. a stage's
    max_epochs, or `kdcl eval` choosing the device of the machine it runs on)."""
    from hydra.utils import instantiate

    from kdcl.training.callbacks import progress_callbacks

    progress, bar = progress_callbacks(str(progress_bar), stage_name)
    kwargs = OmegaConf.to_container(spec, resolve=True)
    kwargs.update(overrides)
    return instantiate(
        kwargs,
        plugins=with_atomic_checkpoints(kwargs.pop("plugins", None)),
        callbacks=[*(callbacks or []), *progress],
        logger=logger,
        enable_progress_bar=bar,
        default_root_dir=str(root_dir) if root_dir is not None else None,
        use_distributed_sampler=not own_sampler,  # a curriculum sampler splits batches across ranks itself
        _convert_="all",
    )


def with_atomic_checkpoints(plugins) -> list:
    """The spec's plugins plus kdcl's atomic checkpoint writer, unless the spec brings its own CheckpointIO."""
    from hydra.utils import instantiate
    from lightning_fabric.plugins import CheckpointIO

    from kdcl.training.checkpoints import AtomicCheckpointIO

    given = plugins if isinstance(plugins, list) else [] if plugins is None else [plugins]
    given = [instantiate(p) if isinstance(p, dict) else p for p in given]
    return given if any(isinstance(p, CheckpointIO) for p in given) else [*given, AtomicCheckpointIO()]


def quiet_libraries() -> None:
    """Keep the terminal for kdcl's own lines: Lightning's banners and known-harmless warnings go."""
    import pytorch_lightning  # noqa: F401  (sets its loggers to INFO when imported: import first, then lower)

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*LeafSpec.*", ".*isinstance.*treespec.*",
                    ".*when logging on epoch level in distributed setting.*"):  # DDP: training losses are rank 0's  # fmt: skip
        warnings.filterwarnings("ignore", message=pattern)


_CHECKED_TRAINERS: set[str] = set()  # specs Lightning accepted already in this process (sweeps repeat them)


def check_trainer_values(spec: DictConfig) -> None:
    """Let Lightning itself judge accelerator, devices, strategy, precision and the rest (no device work)."""
    text = OmegaConf.to_yaml(spec, resolve=True)
    if text in _CHECKED_TRAINERS:
        return
    quiet_libraries()
    try:
        build_trainer(spec, enable_checkpointing=False)
    except KdclError:
        raise
    except Exception as exc:  # noqa: BLE001 — Lightning's own message is the best explanation
        cause = exc.__cause__ or exc  # instantiate wraps the Trainer's error
        raise KdclError(
            f"trainer: {str(cause).splitlines()[0][:200]}; check the trainer settings (on a CPU-only machine use trainer=cpu)"
        ) from None
    _CHECKED_TRAINERS.add(text)
