"""The Lightning side of a curriculum: the pacing clock, adaptive advance, self-paced re-scoring, logging.

The clock says how far along its pacing curve the curriculum is. With `advance=schedule` it is the
training step; `on_plateau` holds it for an epoch whose validation accuracy did not improve (the
student stays on easier data); `on_threshold` jumps it ahead by `jump`·T after an epoch whose
validation accuracy reaches `threshold`. Its state is saved in every checkpoint, so a resumed stage
continues on the same curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import Dataset

from kdcl.common.metric_names import metric_name
from kdcl.curriculum.sampler import CurriculumBatchSampler, curriculum_order
from kdcl.curriculum.scoring import loss_scores
from kdcl.models.predictions import dataset_logits


def noisy_share(order: torch.Tensor, pool_size: int, noisy: torch.Tensor) -> float:
    """The share of wrong labels (data.label_noise) among the examples the curriculum has admitted: the
    first `pool_size` of its order."""
    return float(noisy[order[:pool_size]].float().mean())


def advance_clock(mode: str, clock: int, steps: int, acc: float, best: float, threshold: float, jump: int) -> int:
    """The pacing clock after an epoch of `steps` steps that reached validation accuracy `acc` (the modes:
    kdcl.config.schema.Advance)."""
    if mode == "on_plateau":
        return clock + steps if acc > best else clock  # no progress: another epoch on the same data
    if mode == "on_threshold":
        return clock + steps + (jump if acc >= threshold else 0)
    return clock + steps


@dataclass
class OrderSettings:
    """How scores become an order (kept as data, not a closure, so ddp_spawn can pickle the callback)."""

    labels: torch.Tensor
    order: str
    balanced: bool
    seed: int

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return curriculum_order(scores, self.labels, self.order, self.balanced, self.seed)


class CurriculumCallback(pl.Callback):
    def __init__(
        self,
        sampler: CurriculumBatchSampler,
        scores: torch.Tensor,
        ordering: OrderSettings,
        stage: str,
        images: Dataset,  # the stage's un-augmented training images, for grids and self-paced re-scoring
        to_input: Callable[[torch.Tensor], torch.Tensor],
        advance: str = "schedule",
        threshold: float = 0.9,
        jump: float = 0.1,
        self_paced: bool = False,
        rescore_every: int = 1,
        noisy: torch.Tensor | None = None,  # data.label_noise: which training examples carry a wrong label
        eval_batch_size: int = 256,  # the re-scoring pass reads in these batches (data.eval_batch_size)
        workers: int = 0,  # ... with these loader processes (data.num_workers)
    ):
        self.noisy, self.eval_batch_size, self.workers = noisy, eval_batch_size, workers
        self.sampler, self.scores, self.ordering, self.stage = sampler, scores, ordering, stage
        self.images, self.to_input = images, to_input
        self.advance, self.threshold, self.jump = advance, threshold, jump
        self.self_paced, self.rescore_every = self_paced, rescore_every
        self.clock = 0
        self.best = float("-inf")
        self.next_epoch = 0
        self.validated = False
        self.logged_scores = False

    # saved in every checkpoint: a resumed stage continues with the same clock, epoch and scores
    def state_dict(self) -> dict:
        return {"clock": self.clock, "best": self.best, "scores": self.scores.clone(), "next_epoch": self.next_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.clock, self.best = int(state["clock"]), float(state["best"])
        self.scores, self.next_epoch = state["scores"], int(state["next_epoch"])
        self.logged_scores = True  # already in TensorBoard from the first start
        # Lightning builds the first epoch's iterator before on_train_epoch_start: position the sampler now
        self.sampler.order = self.ordering(self.scores)
        self.sampler.set_epoch(self.next_epoch)
        self.sampler.clock_start = self.clock

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before configure_optimizers reads the number of steps per epoch
        self.sampler.set_distributed(trainer.global_rank, trainer.world_size)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.logged_scores and trainer.is_global_zero:
            log_scores_to_tensorboard(trainer, self.scores, self.images)
        self.logged_scores = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.self_paced and epoch > 0 and epoch % self.rescore_every == 0:
            # self-paced: the current student judges difficulty (every rank computes the same scores)
            # where the student trains: the Trainer's device, not kdcl's inference device (trainer=cpu on a GPU host)
            logits = dataset_logits(pl_module.model, self.images, self.to_input, self.eval_batch_size,
                                    pl_module.device, self.workers)  # fmt: skip
            self.scores = loss_scores(logits, self.ordering.labels)
            self.sampler.order = self.ordering(self.scores)
        # Lightning's own set_epoch does not reach a batch sampler without .sampler: set it here
        self.sampler.set_epoch(epoch)
        self.sampler.clock_start = self.clock
        self.validated = False

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
        if self.noisy is not None:
            metrics["curriculum/noisy_share"] = noisy_share(
                self.sampler.order, self.sampler.pool_size(clock), self.noisy
            )
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get(metric_name(self.stage, "val", "acc"))
        self.end_epoch(trainer, self.advance, float(acc) if acc is not None else float("-inf"))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.validated:  # no validation this epoch (e.g. limit_val_batches=0): keep to the schedule
            self.end_epoch(trainer, "schedule", float("-inf"))

    def end_epoch(self, trainer: pl.Trainer, mode: str, acc: float) -> None:
        """Advance the clock once per epoch, before the epoch's checkpoint is written."""
        self.clock = advance_clock(mode, self.clock, self.sampler.steps_per_epoch, acc, self.best,
                                   self.threshold, round(self.jump * self.sampler.total_steps))  # fmt: skip
        self.best = max(self.best, acc)
        self.next_epoch = trainer.current_epoch + 1
        self.validated = True


def log_scores_to_tensorboard(trainer: pl.Trainer, scores: torch.Tensor, dataset: Dataset) -> None:
    """A histogram of the scores and grids of the 32 easiest and 32 hardest examples, at stage start."""
    from torchvision.utils import make_grid

    def images(idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([dataset[int(i)][0] for i in idx]).float() / 255

    order = torch.argsort(scores, stable=True)
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            tb = lg.experiment
            tb.add_histogram("curriculum/scores", scores, 0)
            tb.add_image("curriculum/easiest", make_grid(images(order[:32]), nrow=8, pad_value=1.0), 0)
            tb.add_image("curriculum/hardest", make_grid(images(order.flip(0)[:32]), nrow=8, pad_value=1.0), 0)
