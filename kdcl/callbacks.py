"""Progress output: rich bars on a terminal, one line per epoch in logs and CI."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class EpochSummary(pl.Callback):
    """Prints `stage epoch i/n · train loss · train acc · val acc · elapsed` after each epoch."""

    def __init__(self, stage: str):
        self.stage, self.start = stage, time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics

        def fmt(key: str) -> str:
            v = m.get(f"{self.stage}/{key}")
            return f"{float(v):.4f}" if v is not None else "-"

        print(
            f"[{self.stage}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
            f"train loss {fmt('train/loss_epoch')}  train acc {fmt('train/acc')}  val acc {fmt('val/acc')}  "
            f"{time.perf_counter() - self.start:.0f}s",
            flush=True,
        )


def progress_callbacks(mode: str, stage: str) -> tuple[list[pl.Callback], bool]:
    """(callbacks, enable_progress_bar) for trainer.progress_bar = auto | rich | lines | none."""
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "lines"
    if mode == "rich":
        return [RichProgressBar(leave=True)], True
    if mode == "lines":
        return [EpochSummary(stage)], False
    return [], False
