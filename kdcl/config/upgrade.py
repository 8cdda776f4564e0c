"""Configs that older kdcl versions wrote, read by this one.

A run keeps its composed config (config.yaml, and every checkpoint's hyper-parameters). Everything that reads
one back (resume, a requeued job, kdcl eval, kdcl export, the cascade) goes through `upgrade_saved`, so a run
written before a key moved still resumes, evaluates and exports. A moved key typed on the command line is
refused by `check_renamed` with one line that names its new spelling. No torch, Lightning or timm here.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from kdcl.common.errors import KdclError

OLD_TRAINER_SWITCHES = {"progress_bar": "progress_bar", "channels_last": "speed.channels_last",
                        "compile": "speed.compile"}  # fmt: skip

# issue 23: `report:` held only latency settings, and "report" also names `kdcl report` and the report card
OLD_LATENCY_KEYS = {"latency_batches": "batches", "latency_runtimes": "runtimes", "speedup_runtime": "speedup_runtime"}
RENAMED = {"report": "latency", **{f"report.{old}": f"latency.{new}" for old, new in OLD_LATENCY_KEYS.items()}}


def editable(cfg: DictConfig) -> DictConfig:
    """A copy that keys can be added to and removed from (the caller's config stays as it was)."""
    return OmegaConf.create(OmegaConf.to_container(cfg))


def trainer_as_spec(cfg: DictConfig) -> DictConfig:
    """A config saved before `trainer` became a Lightning spec: kdcl's own switches move out of it and it
    gets its `_target_`."""
    trainer = cfg.get("trainer")
    if trainer is None or "_target_" in trainer:
        return cfg
    cfg = editable(cfg)
    for old, new in OLD_TRAINER_SWITCHES.items():
        if old in cfg.trainer:
            OmegaConf.update(cfg, new, cfg.trainer.pop(old), force_add=True)
    cfg.trainer["_target_"] = "pytorch_lightning.Trainer"
    return cfg


def latency_node(cfg: DictConfig) -> DictConfig:
    """A config saved before issue 23: `report: {latency_batches, latency_runtimes, speedup_runtime}` becomes
    `latency: {batches, runtimes, speedup_runtime}` (the schema has no `report` node to merge it into)."""
    if "report" not in cfg:
        return cfg
    cfg = editable(cfg)
    old = cfg.pop("report") or {}
    cfg["latency"] = {OLD_LATENCY_KEYS[k]: v for k, v in old.items() if k in OLD_LATENCY_KEYS}
    return cfg


def optimizer_loop_kept(cfg: DictConfig) -> DictConfig:
    """A config saved before `optim.fused`: the run continues with torch's per-tensor loop it started with,
    so a resumed run takes the steps it would have taken (the fused kernel differs in float rounding)."""
    optim = cfg.get("optim")
    if optim is None or "fused" in optim:
        return cfg
    cfg = editable(cfg)
    cfg.optim["fused"] = False
    return cfg


UPGRADES: tuple[Callable[[DictConfig], DictConfig], ...] = (
    trainer_as_spec,
    latency_node,
    optimizer_loop_kept,
)  # oldest change first


def upgrade_saved(cfg: DictConfig) -> DictConfig:
    """A run's saved config in today's keys (the same config when nothing in it is old)."""
    for upgrade in UPGRADES:
        cfg = upgrade(cfg)
    return cfg


def renamed(override: str) -> str | None:
    """The override spelled with its key's new name (`report.latency_batches=[1]` → `latency.batches=[1]`),
    or None when its key was not renamed. `~` stays in front; `+` goes (the new key is in the schema, and
    Hydra refuses to add a key that exists)."""
    body = override.lstrip("+~")
    key, eq, value = body.partition("=")
    new = RENAMED.get(key.strip())
    return None if new is None else f"{'~' if override.startswith('~') else ''}{new}{eq}{value}"


def check_renamed(overrides: list[str]) -> None:
    """An old key on the command line: one line naming the new one, before anything is composed."""
    for override in overrides:
        new = renamed(override)
        if new is not None:
            old = override.lstrip("+~").partition("=")[0].strip()
            raise KdclError(f"{old} was renamed: use {new}")
