"""Stage checkpoints on disk: written atomically, checked before a resume reads them.

Lightning's TorchCheckpointIO writes through a temporary file in the system's temp directory and then
moves it; across file systems that move is a copy that a full disk or a kill can leave half-written,
and a failed write surfaces as a long traceback. This CheckpointIO writes through kdcl's atomic
writer instead (same directory, fsync, rename), so a checkpoint file is always whole, and a failed
write is one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from kdcl.common.io import atomic_torch_save

# what a checkpoint must hold for Lightning to continue training from it (epoch checkpoints kept for
# later stages are weights-only and cannot)
RESUMABLE_KEYS = ("state_dict", "optimizer_states", "loops")


# what a finished stage's checkpoint keeps with checkpoint.keep=weights: all that eval, export, the cascade,
# the report card, a later stage's teacher or init read (kdcl.models.load_kdcl_checkpoint)
WEIGHTS_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "hyper_parameters")


def keep_weights_only(path: Path) -> int:
    """Rewrite a finished stage's checkpoint as its weights only (atomically: a reader sees the old file or
    the new one); returns the bytes freed (0 when there is no such file or it holds only weights)."""
    if not path.is_file():
        return 0
    before = path.stat().st_size
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if set(checkpoint) <= set(WEIGHTS_KEYS):
        return 0
    atomic_torch_save({k: checkpoint[k] for k in WEIGHTS_KEYS if k in checkpoint}, path)
    return before - path.stat().st_size


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, Path(path))


def unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot resume training (truncated, corrupt, not a training checkpoint), or None."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any failure to parse means the file cannot be used
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    missing = [k for k in RESUMABLE_KEYS if k not in checkpoint]
    return f"it lacks {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class ResumePoint:
    """Where a stopped stage continues: a checkpoint (None: from its beginning), and what was done
    instead of reading last.ckpt when that file could not be read (None when it could)."""

    checkpoint: Path | None
    recovery: str | None = None


def resume_point(ckpt_dir: Path) -> ResumePoint:
    """last.ckpt when it is readable; otherwise (the unreadable file set aside as last.ckpt.unreadable)
    the newest readable training checkpoint of the stage; otherwise the stage's beginning."""
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return ResumePoint(None)
    reason = unreadable_reason(last)
    if reason is None:
        return ResumePoint(last)
    last.replace(last.with_name(f"{last.name}.unreadable"))
    others = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for candidate in others:
        if unreadable_reason(candidate) is None:
            return ResumePoint(candidate, f"{last.name} unreadable ({reason}); resumed from {candidate.name}")
    return ResumePoint(None, f"{last.name} unreadable ({reason}) and no other readable checkpoint; stage restarted")


class StageCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose state survives a run directory that was moved or copied. Lightning restores the best
    score and paths only when the saved dirpath equals the current one, and otherwise keeps the old absolute
    best path: a resumed stage would then record no best score and a checkpoint outside its run. A stage's
    checkpoints live in its own folder, so paths under the old folder are the same names in the new one
    (written here: Lightning has no option for it)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = relocated(state_dict, str(old), str(self.dirpath))
        super().load_state_dict(state_dict)


def relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A ModelCheckpoint state with every path under `old` moved to the same name under `new`."""

    def move(path):
        if not path or not Path(path).is_relative_to(old):
            return path
        return str(Path(new) / Path(path).relative_to(old))

    moved = {k: move(state.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path") if k in state}
    best_k = {move(k): v for k, v in (state.get("best_k_models") or {}).items()}
    return {**state, **moved, "dirpath": new, "best_k_models": best_k}


class BestCheckpoint(StageCheckpoint):
    """best.ckpt, and next to it the validation logits of the epoch a stage hands on (the epoch best.ckpt
    holds, or with `select: last` the latest), so that `kdcl eval RUN cascade=true` reads them instead of
    passing the model over the validation set again. Tagged with the best score and the epoch: after a kill
    between the checkpoint and this file the tag no longer matches, and the cascade recomputes them. Done
    here, around Lightning's own saving (at the end of the epoch or of validation, whichever it saves on)."""

    def __init__(self, *args, predictions: Path | None = None, select: str = "best", **kwargs):
        super().__init__(*args, **kwargs)
        self.predictions, self.select = predictions, select
        self.written: tuple[float | None, int] | None = None  # (score, epoch) last written: each is written once

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.keeping(trainer, pl_module, super().on_train_epoch_end)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.keeping(trainer, pl_module, super().on_validation_end)

    def keeping(self, trainer: pl.Trainer, pl_module: pl.LightningModule, save) -> None:
        before = best_score(self)
        save(trainer, pl_module)
        score, kept = best_score(self), getattr(pl_module, "val_predictions", None)
        if self.predictions is None or kept is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        tag = (score, pl_module.val_epoch)
        if tag != self.written and ((score is not None and score != before) or self.select == "last"):
            atomic_torch_save({"score": score, "epoch": pl_module.val_epoch, "logits": kept.logits,
                               "labels": kept.labels}, self.predictions)  # fmt: skip
            self.written = tag


def best_score(checkpoint: ModelCheckpoint) -> float | None:
    score = checkpoint.best_model_score
    return None if score is None else float(score)


def val_predictions_match(path: Path, select: str, best_val_acc: float | None, last_epoch: int) -> bool:
    """Whether the saved validation logits belong to the checkpoint the stage handed on."""
    if not path.is_file():
        return False
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved["epoch"] == last_epoch if select == "last" else saved["score"] == best_val_acc
