"""The Lightning side of a curriculum: the pacing clock, adaptive advance, self-paced re-scoring, logging.

The clock says how far along its pacing curve the curriculum is. With `advance=schedule` it is the
training step; `on_plateau` holds it for an epoch whose validation accuracy did not improve (the
student stays on easier data); `on_threshold` jumps it ahead by `jump`·T after an epoch whose
validation accuracy reaches `threshold`. Its state is saved in every checkpoint, so a resumed stage
continues on the same curve.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from kdcl.curriculum.sampler import CurriculumBatchSampler

ADVANCE = ("schedule", "on_plateau", "on_threshold")


def advance_clock(mode: str, clock: int, steps: int, acc: float, best: float, threshold: float, jump: int) -> int:
    """The pacing clock after an epoch of `steps` steps that reached validation accuracy `acc`."""
    if mode == "on_plateau":
        return clock + steps if acc > best else clock  # no progress: another epoch on the same data
    if mode == "on_threshold":
        return clock + steps + (jump if acc >= threshold else 0)
    return clock + steps


class CurriculumCallback(pl.Callback):
    def __init__(
        self,
        sampler: CurriculumBatchSampler,
        scores: torch.Tensor,
        stage: str,
        advance: str = "schedule",
        threshold: float = 0.9,
        jump: float = 0.1,
        rescore: Callable[[pl.LightningModule], torch.Tensor] | None = None,
        rescore_every: int = 1,
        reorder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_start: Callable[[pl.Trainer, torch.Tensor], None] | None = None,
    ):
        self.sampler, self.scores, self.stage = sampler, scores, stage
        self.advance, self.threshold, self.jump = advance, threshold, jump
        self.rescore, self.rescore_every, self.reorder = rescore, rescore_every, reorder
        self.on_start = on_start
        self.clock = 0
        self.best = float("-inf")

    # saved in every checkpoint: a resumed stage continues with the same clock and scores
    def state_dict(self) -> dict:
        return {"clock": self.clock, "best": self.best, "scores": self.scores.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.clock, self.best = int(state["clock"]), float(state["best"])
        self.scores = state["scores"]
        if self.reorder is not None:
            self.sampler.order = self.reorder(self.scores)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sampler.set_distributed(trainer.global_rank, trainer.world_size)
        if trainer.global_step == 0 and self.on_start is not None and trainer.is_global_zero:
            self.on_start(trainer, self.scores)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.rescore is not None and epoch > 0 and epoch % self.rescore_every == 0:
            self.scores = self.rescore(pl_module)  # self-paced: the current student judges difficulty
            self.sampler.order = self.reorder(self.scores)
        self.sampler.clock_start = self.clock

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step - 1  # the step this batch was drawn for
        if step % trainer.log_every_n_steps and batch_idx != 0:
            return
        clock = self.clock + batch_idx
        indices = self.sampler.batch_at(step, clock)
        metrics = {
            "curriculum/fraction": self.sampler.fraction_at(clock),
            "curriculum/batch_difficulty": float(self.scores[indices].mean()),
        }
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get(f"{self.stage}/val/acc")
        acc = float(acc) if acc is not None else float("-inf")
        self.clock = advance_clock(self.advance, self.clock, self.sampler.steps_per_epoch, acc, self.best,
                                   self.threshold, round(self.jump * self.sampler.total_steps))  # fmt: skip
        self.best = max(self.best, acc)


def log_scores_to_tensorboard(
    trainer: pl.Trainer, scores: torch.Tensor, images: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """A histogram of the scores and grids of the 32 easiest and 32 hardest examples, at stage start."""
    from torchvision.utils import make_grid

    order = torch.argsort(scores, stable=True)
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            tb = lg.experiment
            tb.add_histogram("curriculum/scores", scores, 0)
            tb.add_image("curriculum/easiest", make_grid(images(order[:32]), nrow=8, pad_value=1.0), 0)
            tb.add_image("curriculum/hardest", make_grid(images(order.flip(0)[:32]), nrow=8, pad_value=1.0), 0)
