"""The LightningModule of a mutual stage (deep mutual learning, Zhang et al. 2018): K peers, no teacher.

Every step each peer sees the same batch; peer k's loss is its stage's terms (ce + kd for pipeline=dml) with
the other peers' current logits, detached, as kd's targets: CE(y, p_k) + 1/(K−1) Σ_{j≠k} KL(p_j ‖ p_k).
Detached targets make peer k's loss move peer k alone, so one backward of the sum and one optimizer over all
peers give each peer the update it would get on its own (the simultaneous update of KD_Lib's and
torchdistill's DML; the paper's Algorithm 1 updates the peers in turn). The checkpoint holds every peer
(`model.peers.<k>.`); `peer_checkpoint` writes one peer as the one-model checkpoint every stage has.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from kdcl.common.io import atomic_torch_save
from kdcl.common.metric_names import metric_name
from kdcl.losses import DistillLoss
from kdcl.losses.functional import ce_loss
from kdcl.losses.terms import TermInputs
from kdcl.models.predictions import Predictions
from kdcl.training.checkpoints import WEIGHTS_KEYS
from kdcl.training.optim import build_optimizer


class Cohort(nn.Module):
    """The peers; as one model, the mean of their logits (what a self-paced curriculum scores with)."""

    def __init__(self, peers: Sequence[nn.Module]):
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([peer(x) for peer in self.peers]).mean(0)


def mutual_losses(logits: Sequence[torch.Tensor], inputs: TermInputs, losses: Sequence[DistillLoss],
                  progress: float = 0.0) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:  # fmt: skip
    """Each peer's (total, parts): its loss terms with its logits as the student's and the other peers' as
    targets, detached. `inputs` carries the batch's labels (student_logits and teacher_logits are set here)."""
    out = []
    for k, loss in enumerate(losses):
        others = [x.detach() for j, x in enumerate(logits) if j != k]
        out.append(loss(TermInputs(logits[k], others, inputs.target, soft_target=inputs.soft_target), progress))
    return out


def peer_checkpoint(shared: Path, k: int, hparams: dict, out: Path) -> Path:
    """Peer k of a mutual checkpoint as a one-model kdcl checkpoint (its weights under `model.`, its own
    hyper-parameters): what eval, export, the report card and later stages read from any stage."""
    checkpoint = torch.load(shared, map_location="cpu", weights_only=True)
    prefix = f"model.peers.{k}."
    state = {f"model.{key.removeprefix(prefix)}": v for key, v in checkpoint["state_dict"].items()
             if key.startswith(prefix)}  # fmt: skip
    kept = {key: checkpoint[key] for key in WEIGHTS_KEYS if key in checkpoint}
    atomic_torch_save({**kept, "state_dict": state, "hyper_parameters": hparams}, out)
    return out


def accuracies(num_classes: int, n: int) -> nn.ModuleList:
    return nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in range(n))


class MutualModule(pl.LightningModule):
    def __init__(self, peers: Sequence[nn.Module], losses: Sequence[DistillLoss], optim: DictConfig, group: str,
                 names: Sequence[str], num_classes: int, hparams: dict):  # fmt: skip
        """`names`: the peers' stage names (their metrics' namespaces); `group`: the mutual stage's name, under
        which the cohort's means are logged (`<group>/val/acc`, the mean of the peers': the checkpoint monitor)."""
        super().__init__()
        self.model = Cohort(peers)
        self.losses = nn.ModuleList(losses)  # one per peer: a term's learned parameters (CTKD's) are the peer's
        self.optim_cfg, self.stage, self.names = optim, group, list(names)
        self.save_hyperparameters(hparams)  # plain containers only: checkpoints stay weights_only-loadable
        k = len(self.names)
        # per peer, then the cohort's (index k): fed every peer's predictions, its accuracy is the peers' mean
        self.train_acc, self.val_acc, self.test_acc = (accuracies(num_classes, k + 1) for _ in range(3))
        self.eval_loss = nn.ModuleDict({split: nn.ModuleList(MeanMetric() for _ in range(k + 1))
                                        for split in ("val", "test")})  # fmt: skip
        self.test_confusion = nn.ModuleList(MulticlassConfusionMatrix(num_classes) for _ in range(k))
        self.test_per_class: dict[str, dict[str, list[int]]] = {}  # peer name -> correct/total per class
        self.test_predictions: dict[str, Predictions] = {}  # peer name -> its test logits (one fp32 process)
        self._test_batches: list[list[torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, *_ = batch
        soft = y if y.is_floating_point() else None  # a mixed batch's class probabilities (mixup/cutmix)
        y = y if soft is None else soft.argmax(1)
        logits = [peer(x) for peer in self.model.peers]
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)  # for scheduled terms
        inputs = TermInputs(logits[0], [], y, soft_target=soft)
        per_peer = mutual_losses(logits, inputs, self.losses, progress)
        peers = zip(self.names, per_peer, logits, self.train_acc[:-1], strict=True)
        for name, (total, parts), peer_logits, acc in peers:
            log = partial(metric_name, name, "train")
            self.log(log("loss"), total, on_step=True, on_epoch=True)
            self.log_dict({log(f"loss_{k}"): v for k, v in parts.items()}, on_step=True, on_epoch=True)
            acc(peer_logits.detach(), y)
            self.log(log("acc"), acc, on_step=False, on_epoch=True)
        total = torch.stack([t for t, _ in per_peer]).sum()  # each peer's gradient is its own loss's
        cohort = partial(metric_name, self.stage, "train")
        self.log(cohort("loss"), total / len(per_peer), on_step=True, on_epoch=True, prog_bar=True)
        self.train_acc[-1](torch.cat(logits).detach(), y.repeat(len(logits)))
        self.log(cohort("acc"), self.train_acc[-1], on_step=False, on_epoch=True, prog_bar=True)
        return total

    def evaluate(self, batch, split: str, accs: nn.ModuleList) -> list[torch.Tensor]:
        """Each peer's loss and accuracy, and the cohort's (the peers' means)."""
        x, y = batch
        logits = [peer(x) for peer in self.model.peers]
        losses = self.eval_loss[split]
        for k, (name, peer_logits) in enumerate(zip(self.names, logits, strict=True)):
            loss = ce_loss(peer_logits, y)
            losses[k](loss, weight=len(y))
            losses[-1](loss, weight=len(y))
            accs[k](peer_logits, y)
            self.log(metric_name(name, split, "loss"), losses[k], on_epoch=True)
            self.log(metric_name(name, split, "acc"), accs[k], on_epoch=True)
        accs[-1](torch.cat(logits), y.repeat(len(logits)))
        self.log(metric_name(self.stage, split, "loss"), losses[-1], on_epoch=True, prog_bar=split == "val")
        self.log(metric_name(self.stage, split, "acc"), accs[-1], on_epoch=True, prog_bar=split == "val")
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self.evaluate(batch, "test", self.test_acc)
        for confusion, peer_logits in zip(self.test_confusion, logits, strict=True):
            confusion.update(peer_logits, batch[1])
        if self.trainer.world_size == 1 and str(self.trainer.precision).startswith(("32", "64")):
            self._test_batches.append([*(z.detach().float().cpu() for z in logits), batch[1].detach().cpu()])

    def on_test_epoch_end(self) -> None:
        for name, confusion in zip(self.names, self.test_confusion, strict=True):
            matrix = confusion.compute()
            self.test_per_class[name] = {"correct": matrix.diag().tolist(), "total": matrix.sum(1).tolist()}
            confusion.reset()
        batches, self._test_batches = self._test_batches, []
        if batches:
            labels = torch.cat([b[-1] for b in batches]).long()
            self.test_predictions = {name: Predictions(torch.cat([b[k] for b in batches]), labels)
                                     for k, name in enumerate(self.names)}  # fmt: skip

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """trainer.gradient_clip_val by norm clips each peer (with its loss's parameters) on its own, as K
        separate trainings would, not the cohort's norm as one."""
        if not gradient_clip_val or gradient_clip_algorithm == "value":  # by value: the same either way
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for peer, loss in zip(self.model.peers, self.losses, strict=True):
            torch.nn.utils.clip_grad_norm_([*peer.parameters(), *loss.parameters()], float(gradient_clip_val))
        return None

    def configure_optimizers(self):
        # one optimizer over every peer: per-parameter optimizers (SGD, Adam, AdamW) update each peer as its own
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(params, self.optim_cfg, self.trainer.estimated_stepping_batches, f"{self.stage}/lr")
