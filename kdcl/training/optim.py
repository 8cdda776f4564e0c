"""Optimizers and learning-rate schedules from the `optim` config (all from torch.optim)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def build_optimizer(params, cfg: DictConfig, total_steps: int, name: str) -> dict:
    """Lightning's optimizer dict; the schedule steps every batch over the stage's `total_steps`."""
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.get("momentum", 0.9),
                              nesterov=cfg.get("nesterov", True), weight_decay=cfg.weight_decay)  # fmt: skip
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
