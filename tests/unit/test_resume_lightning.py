"""A stage resumed with a lower optim.lr (the remedy for divergence) inside a real Lightning Trainer."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdcl.training.callbacks import FollowChangedLearningRate

DATA = TensorDataset(torch.randn(20, 2, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2)


class Recorder(pl.LightningModule):
    """One-cycle schedule over 4 epochs of 5 steps; records the learning rate of every step."""

    def __init__(self, lr: float):
        super().__init__()
        self.save_hyperparameters({"config": {"optim": {"lr": lr}}})  # as kdcl's stage modules keep it
        self.layer = nn.Linear(2, 2)
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        lr = self.hparams["config"]["optim"]["lr"]
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=20)
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]


def fit(lr: float, epochs: int, ckpt_dir, resume=None) -> list[float]:
    module = Recorder(lr)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[FollowChangedLearningRate(), ModelCheckpoint(dirpath=ckpt_dir, filename="last")])  # fmt: skip
    trainer.fit(module, DataLoader(DATA, batch_size=4), ckpt_path=resume)
    return module.lrs


def test_a_stage_resumed_with_a_lower_lr_follows_the_schedule_at_the_new_scale(tmp_path):
    at_new_scale = fit(0.01, 4, tmp_path / "new")
    fit(1.0, 2, tmp_path / "old")  # two epochs at the rate that diverged, then stopped
    resumed = fit(0.01, 4, tmp_path / "resumed", resume=str(tmp_path / "old" / "last.ckpt"))
    assert resumed == pytest.approx(at_new_scale[10:], rel=1e-9)
    assert resumed != pytest.approx(fit(1.0, 4, tmp_path / "old-scale")[10:], rel=1e-3)  # the rescale mattered
