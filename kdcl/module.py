"""The LightningModule of every stage: one trainable model against 0..n frozen teachers.

Teachers are kept in a plain list, not registered as sub-modules: they never reach the optimizer,
the checkpoint, or `.train()`; they are moved to the device at the start of each loop.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kdcl.losses import DistillLoss
from kdcl.losses.functional import ce_loss
from kdcl.losses.terms import TermInputs
from kdcl.models import FrozenTeacher
from kdcl.optim import build_optimizer


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
    ):
        super().__init__()
        self.model = model
        self.teachers = [FrozenTeacher(t) for t in teachers]  # plain list: frozen, not saved, not optimised
        self.loss = loss
        example = torch.zeros(1, hparams["in_chans"], hparams["image_size"], hparams["image_size"])
        names = [architecture(m) for m in (model, *teachers)]
        self.loss.attach(self.model, [t.model for t in self.teachers], example, names)  # feature taps + bridges
        self.optim_cfg = optim
        self.stage = stage
        self.save_hyperparameters(hparams)  # plain containers only: checkpoints stay weights_only-loadable
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def move_teachers(self) -> None:
        for t in self.teachers:
            t.to(self.device).train(False)

    def on_fit_start(self) -> None:
        self.move_teachers()

    def on_test_start(self) -> None:
        self.move_teachers()

    def teacher_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not (self.teachers and self.loss.needs_teacher):
            return []
        with torch.no_grad():
            return [t(x) for t in self.teachers]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)  # for scheduled terms
        total, parts = self.loss(TermInputs(logits, self.teacher_logits(x), y), progress)
        prefix = f"{self.stage}/train"
        self.log(f"{prefix}/loss", total, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict({f"{prefix}/loss_{k}": v for k, v in parts.items()}, on_step=True, on_epoch=True)
        scheduled = self.loss.scheduled_values(progress)
        if scheduled:
            self.log_dict({f"{prefix}/{k}": v for k, v in scheduled.items()}, on_step=True, on_epoch=False)
        self.train_acc(logits.detach(), y)
        self.log(f"{prefix}/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return total

    def evaluate(self, batch, split: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{self.stage}/{split}/loss", ce_loss(logits, y), on_epoch=True, prog_bar=split == "val")
        metric(logits, y)
        self.log(f"{self.stage}/{split}/acc", metric, on_epoch=True, prog_bar=split == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(params, self.optim_cfg, self.trainer.estimated_stepping_batches, f"{self.stage}/lr")
