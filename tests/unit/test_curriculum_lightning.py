"""The curriculum sampler and callback inside a real Lightning Trainer: epochs advance, resume is exact."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdcl.curriculum.callback import CurriculumCallback, OrderSettings
from kdcl.curriculum.sampler import CurriculumBatchSampler

N, B = 40, 8  # 5 steps per epoch
DATA = TensorDataset(torch.arange(N).float()[:, None], torch.arange(N) % 2)  # x = the example's index
SCORES = torch.rand(N, generator=torch.Generator().manual_seed(0))


class Recorder(pl.LightningModule):
    """Trains a linear layer and records which examples every step saw."""

    def __init__(self):
        super().__init__()
        self.model = nn.Linear(1, 2)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x[:, 0].long().tolist())
        return nn.functional.cross_entropy(self.model(x / N), y)

    def validation_step(self, batch, batch_idx):
        self.log("s/val/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(epochs: int, ckpt_dir, resume: str | None = None) -> list[list[int]]:
    ordering = OrderSettings(torch.arange(N) % 2, "easy_first", False, seed=3)
    pacing = {"name": "linear", "start": 0.25, "full_at": 0.5}
    sampler = CurriculumBatchSampler(ordering(SCORES), B, epochs=4, pacing=pacing, seed=3)
    callback = CurriculumCallback(sampler, SCORES, ordering, "s", DATA, to_input=lambda x: x)
    module = Recorder()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False,
                         callbacks=[callback, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])  # fmt: skip
    trainer.fit(module, DataLoader(DATA, batch_sampler=sampler), DataLoader(DATA, batch_size=N), ckpt_path=resume)
    return module.seen


def test_epochs_draw_new_batches_and_cover_the_data(tmp_path):
    seen = fit(4, tmp_path)
    assert len(seen) == 20
    epochs = [seen[i : i + 5] for i in range(0, 20, 5)]
    assert epochs[2] != epochs[3]  # all data is available in both: still different batches
    assert {i for batch in seen for i in batch} == set(range(N))
    easiest = set(SCORES.argsort()[:10].tolist())
    assert set(seen[0]) <= easiest


def test_resuming_from_an_epoch_checkpoint_draws_the_same_batches(tmp_path):
    full = fit(4, tmp_path / "full")
    fit(1, tmp_path / "cut")  # stopped while the pool still grows
    resumed = fit(4, tmp_path / "cut2", resume=str(tmp_path / "cut" / "last.ckpt"))
    assert resumed == full[5:]
