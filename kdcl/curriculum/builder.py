"""Build one stage's curriculum from the `curriculum` config: scores (computed once, saved in the stage
directory), the ordered batch sampler, the Lightning callback, and a PNG of the pacing curve.

Which models score difficulty (`curriculum.source`) is the plan's business (kdcl/run/plan.py):
a teacher that trained on the very examples it scores remembers them and calls nearly everything easy,
so `early` scores with the teachers' checkpoints after `early_epoch` epochs and `folds` with out-of-fold
models, each scoring the examples it never trained on. Here they arrive as `ScoringModel`s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from kdcl.common.io import atomic_torch_save
from kdcl.common.plots import saved_figure
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
from kdcl.data.datamodule import noisy_mask, unaugmented
from kdcl.models.predictions import dataset_logits, inference_device
from kdcl.teachers.outputs import TeacherOutputs

TEACHER_SCORERS = tuple(s for s in SCORERS if s.startswith("teacher"))


@dataclass(frozen=True)
class ScoringModel:
    """A model that scores the examples at `positions` of the stage's training set (None: all of them)."""

    model: nn.Module
    positions: torch.Tensor | None = None


@dataclass(frozen=True)
class CurriculumInputs:
    """What a stage hands the curriculum: its name, budget and data, and how to reach its models."""

    stage: str
    epochs: int
    batch_size: int
    seed: int  # the stage's seed: orders and random scores
    train_set: Dataset
    to_input: Callable[[torch.Tensor], torch.Tensor]
    student: nn.Module
    scoring_models: Callable[[], list[ScoringModel]]  # built only when scores are computed (not on resume)
    outputs: TeacherOutputs | None = None  # the stage's stored teacher outputs, when complete
    eval_batch_size: int = 256  # the scoring passes read the training set in these batches (data.eval_batch_size)
    workers: int = 0  # ... with these loader processes (data.num_workers)


def model_logits(scoring: list[ScoringModel], base: Dataset, inp: CurriculumInputs) -> torch.Tensor:
    """Every example's logits averaged over the models that score it."""
    device = inference_device()
    total, count = None, torch.zeros(len(base))
    for s in scoring:
        idx = torch.arange(len(base)) if s.positions is None else s.positions
        logits = dataset_logits(s.model.to(device), Subset(base, idx.tolist()), inp.to_input, inp.eval_batch_size,
                                workers=inp.workers)  # fmt: skip
        total = torch.zeros(len(base), logits.shape[1]) if total is None else total
        total[idx] += logits
        count[idx] += 1
    return total / count.clamp_min(1)[:, None]


def compute_scores(c: DictConfig, inp: CurriculumInputs, base: Dataset, labels: torch.Tensor) -> torch.Tensor:
    if c.scorer == "random":
        return random_scores(len(base), inp.seed)
    if c.scorer == "class_order":
        return class_order_scores(labels, c.get("class_order"), inp.seed)
    if c.scorer == "file":
        return file_scores(c.scores_file, len(base))
    if c.scorer == "student_loss":
        logits = dataset_logits(inp.student, base, inp.to_input, inp.eval_batch_size, workers=inp.workers)
        return loss_scores(logits, labels)
    if c.source == "final" and inp.outputs is not None and inp.outputs.complete:  # one pass serves both
        logits = inp.outputs.logits.float().mean(0).cpu()
    else:
        logits = model_logits(inp.scoring_models(), base, inp)
    return SCORERS[c.scorer](logits, labels)


def load_or_score(c: DictConfig, inp: CurriculumInputs, stage_dir: Path, base: Dataset, labels) -> torch.Tensor:
    """The stage's scores: read back from its directory (a resumed stage), else computed and saved."""
    path = stage_dir / "scores.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["scores"]
    print(f"[{inp.stage}] curriculum: scoring {len(base)} examples ({c.scorer}, source {c.source})", flush=True)
    scores = compute_scores(c, inp, base, labels)
    if c.scorer in TEACHER_SCORERS:
        warn_if_degenerate(scores, c.scorer, c.source)
    atomic_torch_save({"scores": scores, "labels": labels, "scorer": c.scorer, "source": c.source}, path)
    return scores


def plot_pacing(sampler: CurriculumBatchSampler, path: Path, title: str) -> None:
    steps = list(range(sampler.total_steps + 1))
    with saved_figure(path, size=(5, 3)) as ax:
        ax.plot(steps, [sampler.fraction_at(t) for t in steps])
        ax.set(xlabel="training step", ylabel="fraction of data available", ylim=(0, 1.05), title=title)
        for e in range(1, sampler.total_steps // sampler.steps_per_epoch):
            ax.axvline(e * sampler.steps_per_epoch, color="0.85", lw=0.5, zorder=0)


def build_curriculum(c: DictConfig, inp: CurriculumInputs, stage_dir: Path):
    """(batch sampler, callback) for one stage."""
    base = unaugmented(inp.train_set)
    labels = labels_of(base)
    scores = load_or_score(c, inp, stage_dir, base, labels)
    ordering = OrderSettings(labels, c.order, bool(c.balanced), inp.seed)
    pacing = {"name": c.pacing, "start": float(c.start), "full_at": float(c.full_at),
              "params": dict(c.get("params") or {})}  # fmt: skip
    sampler = CurriculumBatchSampler(ordering(scores), inp.batch_size, inp.epochs, pacing, ordering.seed)
    plot_pacing(sampler, stage_dir / "pacing.png", f"{inp.stage}: {c.pacing} pacing, {c.order}")
    callback = CurriculumCallback(
        sampler, scores, ordering, inp.stage, base, inp.to_input, advance=c.advance, threshold=float(c.threshold),
        jump=float(c.jump), self_paced=c.scorer == "student_loss", rescore_every=int(c.rescore_every),
        noisy=noisy_mask(base), eval_batch_size=inp.eval_batch_size, workers=inp.workers,
    )  # fmt: skip
    return sampler, callback
