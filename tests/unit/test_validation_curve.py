"""The stage's validation curve inside a real Lightning Trainer: one value per epoch, the sanity check left
out, and a stage resumed from last.ckpt keeps the epochs it ran before the interruption."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdcl.common.metric_names import metric_name
from kdcl.run.stage import ValidationCurve

DATA = TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2)


class Known(pl.LightningModule):
    """Logs a made-up validation accuracy: 0.1 × (epoch + 1), and 0.99 in the sanity check."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        value = 0.99 if self.trainer.sanity_checking else 0.1 * (self.current_epoch + 1)
        self.log(metric_name("s", "val", "acc"), value, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(epochs: int, ckpt_dir, resume=None) -> ValidationCurve:
    curve = ValidationCurve("s")
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[curve, ModelCheckpoint(dirpath=ckpt_dir, filename="last")])  # fmt: skip
    loader = DataLoader(DATA, batch_size=4)
    trainer.fit(Known(), loader, loader, ckpt_path=resume, weights_only=True)
    return curve


def test_the_curve_has_one_value_per_epoch_and_survives_a_resume(tmp_path):
    whole = fit(4, tmp_path / "whole")
    assert whole.values == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4})
    fit(2, tmp_path / "killed")  # stopped after two epochs
    resumed = fit(4, tmp_path / "resumed", resume=str(tmp_path / "killed" / "last.ckpt"))
    assert resumed.values == pytest.approx(whole.values)
    speed = resumed.speed(4)
    assert speed.val_auc == pytest.approx(0.25) and speed.val_acc_at_50 == pytest.approx(0.2)


class Tested(Known):
    def test_step(self, batch, batch_idx):
        self.log("t", 0.0)


def test_testing_an_earlier_checkpoint_keeps_the_whole_curve(tmp_path):
    """trainer.test(ckpt_path=...) restores callbacks from that file too: best.ckpt's curve ends at its epoch."""
    curve = ValidationCurve("s")
    every = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch}", save_top_k=-1)
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[curve, every])  # fmt: skip
    loader = DataLoader(DATA, batch_size=4)
    trainer.fit(Tested(), loader, loader)
    trainer.test(Tested(), loader, ckpt_path=str(tmp_path / "eepoch=1.ckpt"), weights_only=True, verbose=False)
    assert curve.values == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4})
