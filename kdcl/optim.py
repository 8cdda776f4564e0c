"""Optimizers and learning-rate schedules from the `optim` config (all from torch.optim)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from kdcl.errors import KdclError, did_you_mean

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "constant")


def check_optim(cfg: DictConfig, key: str = "optim") -> None:
    if cfg.name not in OPTIMIZERS:
        raise KdclError(
            f"{key}.name '{cfg.name}' is unknown{did_you_mean(cfg.name, OPTIMIZERS)}; use {'|'.join(OPTIMIZERS)}"
        )
    if cfg.scheduler not in SCHEDULERS:
        raise KdclError(
            f"{key}.scheduler '{cfg.scheduler}' is unknown{did_you_mean(cfg.scheduler, SCHEDULERS)}; use {'|'.join(SCHEDULERS)}"
        )
    if not isinstance(cfg.lr, (int, float)) or cfg.lr <= 0:
        raise KdclError(f"{key}.lr={cfg.lr} must be > 0 (e.g. 3e-3)")
    for k in ("weight_decay", "warmup", "momentum"):
        if k in cfg and not isinstance(cfg[k], (int, float)):
            raise KdclError(f"{key}.{k}={cfg[k]} must be a number")
    if cfg.get("momentum", 0.0) < 0:
        raise KdclError(f"{key}.momentum={cfg.momentum} must be ≥ 0")
    if cfg.weight_decay < 0:
        raise KdclError(f"{key}.weight_decay={cfg.weight_decay} must be ≥ 0")
    if not 0 <= cfg.get("warmup", 0.0) < 1:
        raise KdclError(f"{key}.warmup={cfg.warmup} must be in [0, 1)")


def build_optimizer(params, cfg: DictConfig, total_steps: int, name: str) -> dict:
    """Lightning's optimizer dict; the schedule steps every batch over the stage's `total_steps`."""
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.get("momentum", 0.9), nesterov=True,
                              weight_decay=cfg.weight_decay)  # fmt: skip
    elif cfg.name == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = max(1, int(total_steps))
    if cfg.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(cfg.get("warmup", 0.15), 1e-3)
        )
    elif cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": name}}
