"""The LightningModule of every stage: one trainable model against 0..n frozen teachers.

Teachers are kept in a plain list, not registered as sub-modules: they never reach the optimizer,
the checkpoint, or `.train()`; they are on the device only while training runs them (testing
measures the model alone, with the teachers on the CPU).
"""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from kdcl.common.metric_names import metric_name
from kdcl.losses import DistillLoss
from kdcl.losses.ensemble import ensemble_logits
from kdcl.losses.functional import ce_loss
from kdcl.losses.terms import TermInputs
from kdcl.models import FrozenTeacher
from kdcl.models.predictions import Predictions, unseen_mask
from kdcl.teachers.outputs import TeacherOutputs
from kdcl.training.optim import build_optimizer


def architecture(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)


class DistillationModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        teachers: list[nn.Module],
        loss: DistillLoss,
        optim: DictConfig,
        stage: str,
        num_classes: int,
        hparams: dict,
        seen_classes: list[int] | None = None,
        distill_classes: list[int] | None = None,
        teacher_outputs: TeacherOutputs | None = None,
        ensemble: str = "none",
    ):
        """`seen_classes`: a class-incremental stage predicts only among these (None: all classes);
        `distill_classes`: the teachers are matched on these outputs only (None: all);
        `teacher_outputs`: the stage's store of teacher logits, read by example position instead of
        running the teachers, and filled where empty (batches then carry positions);
        `ensemble`: none (each teacher its own target) | mean | confidence (kdcl/losses/ensemble.py)."""
        super().__init__()
        self.model = model
        self.teachers = [FrozenTeacher(t) for t in teachers]  # plain list: frozen, not saved, not optimised
        self.loss = loss
        example = torch.zeros(1, hparams["in_chans"], hparams["image_size"], hparams["image_size"])
        names = [architecture(m) for m in (model, *teachers)]
        self.loss.attach(self.model, [t.model for t in self.teachers], example, names)  # taps + learned modules
        self.optim_cfg = optim
        self.stage = stage
        self.save_hyperparameters(hparams)  # plain containers only: checkpoints stay weights_only-loadable
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # mean losses as metrics: under DDP they average over every example of every rank, as the accuracies do
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.test_confusion = MulticlassConfusionMatrix(num_classes)  # per-class accuracy (forgetting)
        self.test_per_class: dict[str, list[int]] = {}
        # the test's own logits, kept so that nothing passes this model over the test set again (the report
        # card reads them); one process in fp32 only: under DDP each rank holds a share, and under bf16 or
        # fp16 they would not be the fp32 logits the card compares with the other checkpoints'.
        self.test_predictions: Predictions | None = None
        # the same for the last validation pass (BestCheckpoint saves the handed-on epoch's for the cascade)
        self.val_predictions: Predictions | None = None
        self.val_epoch = -1  # the epoch they are of
        self._batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self.unseen = unseen_mask(num_classes, seen_classes)  # made once: predict_seen runs every step
        self.distill_classes = None if distill_classes is None else torch.as_tensor(distill_classes)
        self.num_classes = num_classes
        self.teacher_outputs = teacher_outputs  # a plain attribute: never in the checkpoint
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def move_teachers(self) -> None:
        for t in self.teachers:
            t.to(self.device).train(False)

    def release_teachers(self) -> None:
        """The teachers back on the CPU: the device's memory is free for the rest of the stage."""
        for t in self.teachers:
            t.to("cpu")

    def teachers_needed(self) -> bool:
        """Whether training still runs the teachers: not once every example's logits are stored."""
        outputs = self.teacher_outputs
        return bool(self.loss.feature_terms) or outputs is None or not outputs.complete

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            for line in self.loss.summaries():  # what the terms' learned modules hold (CRD's memory bank)
                print(f"[{self.stage}] {line}", flush=True)
        if self.teacher_outputs is not None:
            self.teacher_outputs.to(self.device)
        if self.teachers_needed():
            self.move_teachers()

    def on_train_epoch_end(self) -> None:
        if self.teacher_outputs is None:
            return
        if self.trainer.world_size > 1 and not self.teacher_outputs.full:
            self.share_teacher_outputs()
        if self.trainer.is_global_zero:
            self.teacher_outputs.save()  # a resumed stage reads what this epoch stored
        if not self.teachers_needed():
            self.release_teachers()

    def share_teacher_outputs(self) -> None:
        """DDP: every rank receives the teacher logits the other ranks stored this epoch, so each
        example's logits are computed once in all and the store is complete after one epoch."""
        outputs = self.teacher_outputs
        positions, logits = outputs.take_new(len(self.teachers), self.num_classes)
        longest = int(self.all_gather(torch.tensor(len(positions), device=self.device)).max())
        padded_positions = torch.full((longest,), -1, dtype=torch.long, device=self.device)
        padded_positions[: len(positions)] = positions
        padded_logits = logits.new_zeros(logits.shape[0], longest, logits.shape[-1], dtype=torch.float32)
        padded_logits[:, : len(positions)] = logits  # float32: not every backend gathers bf16
        every_position = self.all_gather(padded_positions)  # (ranks, longest)
        every_logit = self.all_gather(padded_logits).transpose(0, 1)  # (teachers, ranks, longest, classes)
        real = every_position >= 0
        outputs.store(every_position[real], list(every_logit[:, real]), shared=True)

    def on_test_start(self) -> None:
        self.release_teachers()  # testing never runs them (after fit they may still be on the device)

    def teacher_logits(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        if not (self.teachers and self.loss.needs_teacher):
            return []
        if self.teacher_outputs is not None:  # the teachers run only on examples with nothing stored
            return self.teacher_outputs.read(positions, lambda rows: self.run_teachers(x if rows.all() else x[rows]))
        return self.run_teachers(x)

    def run_teachers(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t(x) for t in self.teachers]

    def predict_seen(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits with classes not seen yet masked out (a large negative, not -inf, so the
        softmax-based losses stay finite)."""
        logits = self.model(x)
        if self.unseen is None:
            return logits
        return logits.masked_fill(self.unseen.to(logits.device), -1e4)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, *positions = batch  # positions: when teacher outputs are stored or a term needs them (CRD)
        soft = y if y.is_floating_point() else None  # a mixed batch's class probabilities (mixup/cutmix)
        y = y if soft is None else soft.argmax(1)  # its dominant class: accuracy and single-class terms
        logits = self.predict_seen(x)
        teacher_logits, distill_logits = self.teacher_logits(x, positions[0] if positions else None), None
        if self.ensemble != "none" and len(teacher_logits) > 1:  # several teachers, one combined target
            teacher_logits = [ensemble_logits(teacher_logits, self.ensemble)]
        if self.distill_classes is not None and teacher_logits:
            cols = self.distill_classes.to(logits.device)
            distill_logits, teacher_logits = logits[:, cols], [t[:, cols] for t in teacher_logits]
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)  # for scheduled terms
        inputs = TermInputs(logits, teacher_logits, y, distill_logits=distill_logits, soft_target=soft,
                            index=positions[0] if positions else None)  # fmt: skip
        total, parts = self.loss(inputs, progress)
        name = partial(metric_name, self.stage, "train")
        self.log(name("loss"), total, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict({name(f"loss_{k}"): v for k, v in parts.items()}, on_step=True, on_epoch=True)
        scheduled = self.loss.scheduled_values(progress)
        if scheduled:
            self.log_dict({name(k): v for k, v in scheduled.items()}, on_step=True, on_epoch=False)
        self.train_acc(logits.detach(), y)
        self.log(name("acc"), self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return total

    def evaluate(self, batch, split: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self.predict_seen(x)
        self.eval_loss[split](ce_loss(logits, y), weight=len(y))
        self.log(metric_name(self.stage, split, "loss"), self.eval_loss[split], on_epoch=True, prog_bar=split == "val")
        metric(logits, y)
        self.log(metric_name(self.stage, split, "acc"), metric, on_epoch=True, prog_bar=split == "val")
        return logits

    def keep(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of the pass's fp32 logits, on the CPU as they come (a GPU holds one batch of them at most)."""
        if self.trainer.world_size == 1 and str(self.trainer.precision).startswith(("32", "64")):
            self._batches[split].append((logits.detach().float().cpu(), labels.detach().cpu()))

    def kept(self, split: str) -> Predictions | None:
        """The pass's logits and labels, gathered; None when none were kept (DDP, half precision)."""
        batches, self._batches[split] = self._batches[split], []
        if not batches:
            return None
        logits, labels = zip(*batches, strict=True)
        return Predictions(torch.cat(logits), torch.cat(labels).long())

    def validation_step(self, batch, batch_idx: int) -> None:
        self.keep("val", self.evaluate(batch, "val", self.val_acc), batch[1])

    def on_validation_epoch_end(self) -> None:
        self.val_predictions, self.val_epoch = self.kept("val"), self.current_epoch

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self.evaluate(batch, "test", self.test_acc)
        self.test_confusion.update(logits, batch[1])
        self.keep("test", logits, batch[1])

    def on_test_epoch_end(self) -> None:
        confusion = self.test_confusion.compute()
        self.test_per_class = {"correct": confusion.diag().tolist(), "total": confusion.sum(1).tolist()}
        self.test_confusion.reset()
        self.test_predictions = self.kept("test") or self.test_predictions

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(params, self.optim_cfg, self.trainer.estimated_stepping_batches, f"{self.stage}/lr")
