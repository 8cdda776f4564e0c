"""Stage callbacks: progress output (rich bars on a terminal, one line per epoch in logs and CI),
checkpoints kept after chosen epochs, and the random state carried through a resume."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar

from kdcl.common.metric_names import metric_name


class EpochSummary(pl.Callback):
    """Prints `stage epoch i/n · train loss · train acc · val acc · elapsed` after each epoch."""

    def __init__(self, stage: str):
        self.stage, self.start = stage, time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics  # on every rank: computing a logged metric syncs it across ranks
        if not trainer.is_global_zero:
            return

        def fmt(split: str, metric: str) -> str:
            v = m.get(metric_name(self.stage, split, metric))
            return f"{float(v):.4f}" if v is not None else "-"

        print(
            f"[{self.stage}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
            f"train loss {fmt('train', 'loss_epoch')}  train acc {fmt('train', 'acc')}  val acc {fmt('val', 'acc')}  "
            f"{time.perf_counter() - self.start:.0f}s",
            flush=True,
        )


def progress_callbacks(mode: str, stage: str) -> tuple[list[pl.Callback], bool]:
    """(callbacks, enable_progress_bar) for progress_bar = auto | rich | lines | none."""
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "lines"
    if mode == "rich":
        return [RichProgressBar(leave=True)], True
    if mode == "lines":
        return [EpochSummary(stage)], False
    return [], False


class SaveAfterEpochs(pl.Callback):
    """Keeps the model after chosen epochs ({epoch: path}): teachers for `name@E` references (anchors)
    and early-teacher curriculum scores. Written through the Trainer's atomic CheckpointIO
    (kdcl/training/checkpoints.py), so a kill mid-save leaves no half-written checkpoint."""

    def __init__(self, paths: dict[int, list[Path]]):
        self.paths = paths

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for path in self.paths.get(trainer.current_epoch + 1, []):
            trainer.save_checkpoint(path, weights_only=True)


class KeepRandomState(pl.Callback):
    """Stores the random generators (torch, CUDA, NumPy, Python) in every checkpoint and restores them
    when a stage resumes, so shuffling, augmentation and dropout continue exactly as an uninterrupted
    run would. Lightning does not keep them; plain containers keep the checkpoint weights_only-loadable."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, state, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(state), gauss_next],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore at once: Lightning restores callbacks just before it builds the resumed epoch's
        data iterator (which draws the shuffle), with nothing random in between."""
        s = state_dict
        torch.set_rng_state(s["torch"])
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        kind, keys, pos, has_gauss, gauss = s["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, state, gauss_next = s["python"]
        random.setstate((version, tuple(state), gauss_next))


class StopOnNonFiniteLoss(pl.Callback):
    """Stops the stage at the first non-finite training loss, before its backward pass: the weights stay
    as the last finite step left them and no checkpoint of a diverged model is written. Lightning's
    EarlyStopping(check_finite=True) looks only at epoch-level metrics, after NaN weights were saved.
    The check reads one scalar per step (on a GPU a synchronisation, as the progress bar's loss is)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):  # any rank: every rank stops
            return
        from kdcl.common.errors import Diverged

        raise Diverged(
            f"[{self.stage}] the training loss became {float(loss.detach().float().mean()) if bad else 'non-finite on another rank'} "
            f"at epoch {trainer.current_epoch + 1}, step {trainer.global_step + 1}: the stage stopped and no later "
            "stage ran; lower optim.lr, set trainer.gradient_clip_val (e.g. 1.0) or lower distill.temperature"
        )


class FollowChangedLearningRate(pl.Callback):
    """A stage resumed with a changed `optim.lr` (a remedy for divergence): Lightning restores the
    optimizer and scheduler of the checkpoint, with the old rates; every rate they hold is rescaled
    by new/old, so the schedule goes on from where it was, at the new scale."""

    def __init__(self):
        self.ratio = 1.0

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = ((checkpoint.get("hyper_parameters") or {}).get("config") or {}).get("optim", {}).get("lr")
        now = pl_module.hparams["config"]["optim"]["lr"]
        self.ratio = float(now) / float(saved) if saved else 1.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ratio == 1.0:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # the keys torch's schedulers keep
                    if key in group:
                        group[key] *= self.ratio
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * self.ratio for lr in config.scheduler.base_lrs]
            config.scheduler._last_lr = [group["lr"] for group in config.scheduler.optimizer.param_groups]
