"""Build one stage's curriculum from the `curriculum` config: scores (computed once, saved in the stage
directory), the ordered batch sampler, the Lightning callback, and a PNG of the pacing curve.

Where scores come from (`curriculum.source`) matters: a teacher that trained on the very examples it
scores remembers them and calls nearly everything easy. `final` uses the stage's teachers as they are;
`early` their checkpoint after `early_epoch` epochs; `folds` trains `folds` fresh copies of the teacher
for `fold_epochs` epochs, each on the other folds, and scores every example with the copy that never saw it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from kdcl.curriculum.callback import CurriculumCallback, OrderSettings
from kdcl.curriculum.sampler import CurriculumBatchSampler
from kdcl.curriculum.scoring import (
    SCORERS,
    class_order_scores,
    file_scores,
    labels_of,
    loss_scores,
    random_scores,
    warn_if_degenerate,
)
from kdcl.data.datamodule import unaugmented
from kdcl.errors import KdclError
from kdcl.teacher_outputs import TeacherOutputs, pass_device, predict_logits

log = logging.getLogger("kdcl")
EARLY_CHECKPOINT = "early.ckpt"
TEACHER_SCORERS = tuple(s for s in SCORERS if s.startswith("teacher"))


def applies(cfg: DictConfig, stage) -> bool:
    """A curriculum runs in the stages it names, or by default in every stage that has teachers."""
    c = cfg.get("curriculum")
    if not c or c.pacing == "none" or not stage.trains:
        return False
    names = c.get("stages")
    return stage.name in names if names else bool(stage.teachers)


class Normalized(Dataset):
    def __init__(self, base: Dataset, normalize):
        self.base, self.normalize = base, normalize

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.normalize(x[None])[0], y


def train_fold_teacher(model, dataset: Dataset, cfg: DictConfig, dm, epochs: int, fold: int) -> None:
    """Train one out-of-fold teacher on hard labels with a plain, silent Lightning Trainer."""
    from kdcl.losses import DistillLoss
    from kdcl.module import DistillationModule
    from kdcl.pipeline.plan import HARD_LABELS

    hp = {"in_chans": dm.in_chans, "image_size": int(cfg.data.image_size), "stage": f"fold{fold}"}
    module = DistillationModule(model, [], DistillLoss(HARD_LABELS), cfg.optim, f"fold{fold}", dm.num_classes, hp)
    loader = DataLoader(Normalized(dataset, dm.normalize), batch_size=int(cfg.data.batch_size), shuffle=True)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=cfg.trainer.accelerator, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)


def teacher_logits(c: DictConfig, cfg: DictConfig, stage, base: Dataset, dm, teachers: list, make_teacher: Callable,
                   run_dir: Path, handed: dict, outputs: TeacherOutputs | None = None) -> torch.Tensor:  # fmt: skip
    """The teachers' mean logits on every training example, from the configured source (the stage's
    stored teacher outputs when it has them, filled by one pass before training: one pass serves both)."""
    device = pass_device()
    if c.source == "final" and outputs is not None and outputs.complete:
        return outputs.logits.float().mean(0).cpu()
    if c.source == "final":
        models = teachers
    elif c.source == "early":
        models = []
        for name in stage.teacher_stages:
            path = run_dir / Path(handed[name]["checkpoint"]).parent / EARLY_CHECKPOINT
            if not path.is_file():
                raise KdclError(f"curriculum.source=early: stage '{name}' saved no {EARLY_CHECKPOINT} (it did not run "
                                f"curriculum.early_epoch={c.early_epoch} epochs); use source=final or folds")  # fmt: skip
            models.append(make_teacher(name, str(path)))
    else:  # folds: every example is scored by a teacher that never trained on it
        n, k = len(base), int(c.folds)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.seed) + 104729))
        logits = torch.zeros(n, dm.num_classes)
        for fold in range(k):
            held = perm[fold::k]
            rest = torch.cat([perm[j::k] for j in range(k) if j != fold])
            print(
                f"[{stage.name}] curriculum: training out-of-fold teacher {fold + 1}/{k} for {c.fold_epochs} epochs",
                flush=True,
            )
            pl.seed_everything(int(cfg.seed) + 1000 + fold, workers=True, verbose=False)
            model = make_teacher(stage.teacher_stages[0], None)
            train_fold_teacher(model, Subset(base, rest.tolist()), cfg, dm, int(c.fold_epochs), fold)
            logits[held] = predict_logits(model.to(device), Subset(base, held.tolist()), dm.normalize)
        return logits
    return torch.stack([predict_logits(m.to(device), base, dm.normalize) for m in models]).mean(0)


def compute_scores(c, cfg, stage, base, labels, dm, student, teachers, make_teacher, run_dir, handed,
                   outputs=None) -> torch.Tensor:  # fmt: skip
    seed = int(cfg.seed) + stage.index
    if c.scorer == "random":
        return random_scores(len(base), seed)
    if c.scorer == "class_order":
        return class_order_scores(labels, c.get("class_order"), seed)
    if c.scorer == "file":
        return file_scores(c.scores_file, len(base))
    if c.scorer == "student_loss":
        return loss_scores(predict_logits(student, base, dm.normalize), labels)
    logits = teacher_logits(c, cfg, stage, base, dm, teachers, make_teacher, run_dir, handed, outputs)
    return SCORERS[c.scorer](logits, labels)


def plot_pacing(sampler: CurriculumBatchSampler, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(sampler.total_steps + 1))
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(steps, [sampler.fraction_at(t) for t in steps])
    ax.set(xlabel="training step", ylabel="fraction of data available", ylim=(0, 1.05), title=title)
    for e in range(1, sampler.total_steps // sampler.steps_per_epoch):
        ax.axvline(e * sampler.steps_per_epoch, color="0.85", lw=0.5, zorder=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_curriculum(cfg: DictConfig, stage, dm, train_set: Dataset, student, teachers: list,
                     make_teacher: Callable, stage_dir: Path, run_dir: Path, handed: dict,
                     outputs: TeacherOutputs | None = None):  # fmt: skip
    """(batch sampler, callback) for this stage; scores are read back from the stage directory on resume."""
    c = cfg.curriculum
    base = unaugmented(train_set)
    labels = labels_of(base)
    path = stage_dir / "scores.pt"
    if path.is_file():
        scores = torch.load(path, weights_only=True)["scores"]
    else:
        print(f"[{stage.name}] curriculum: scoring {len(base)} examples ({c.scorer}, source {c.source})", flush=True)
        scores = compute_scores(c, cfg, stage, base, labels, dm, student, teachers, make_teacher, run_dir, handed,
                                outputs)  # fmt: skip
        if c.scorer in TEACHER_SCORERS:
            warn_if_degenerate(scores, c.scorer, c.source)
        stage_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"scores": scores, "labels": labels, "scorer": c.scorer, "source": c.source}, tmp)
        tmp.replace(path)
    ordering = OrderSettings(labels, c.order, bool(c.balanced), int(cfg.seed) + stage.index)
    pacing = {
        "name": c.pacing,
        "start": float(c.start),
        "full_at": float(c.full_at),
        "params": dict(c.get("params") or {}),
    }
    sampler = CurriculumBatchSampler(ordering(scores), int(cfg.data.batch_size), stage.epochs, pacing, ordering.seed)
    plot_pacing(sampler, stage_dir / "pacing.png", f"{stage.name}: {c.pacing} pacing, {c.order}")
    callback = CurriculumCallback(
        sampler, scores, ordering, stage.name, base, dm.normalize, advance=c.advance, threshold=float(c.threshold),
        jump=float(c.jump), self_paced=c.scorer == "student_loss", rescore_every=int(c.rescore_every),
    )  # fmt: skip
    return sampler, callback


def check_curriculum_data(cfg: DictConfig, stages: list, n_train: Callable[[object], int]) -> None:
    """Checks that need the data: a scores file must hold one score per training example of its stage."""
    c = cfg.get("curriculum")
    if not c or c.pacing == "none" or c.scorer != "file":
        return
    for stage in stages:
        if applies(cfg, stage):
            file_scores(c.scores_file, n_train(stage))


def stage_size(total: int, fraction: float | None) -> int:
    return total if fraction is None else max(1, math.ceil(fraction * total))
