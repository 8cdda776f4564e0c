"""A step-level curriculum batch sampler: batch t is drawn from the easiest ceil(fraction(t)·N) examples.

Every batch is a pure function of (seed, step, curriculum clock), so a resumed stage draws exactly
the batches an uninterrupted one would, and under DDP every rank computes the same global batch and
keeps its own slice. Within a pool, batches walk through a seeded permutation of it (a new one per
pass), so once all data is available each example is drawn once per pass, as in a normal epoch.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler

from kdcl.curriculum.pacing import fraction


def curriculum_order(scores: torch.Tensor, labels: torch.Tensor, order: str, balanced: bool, seed: int) -> torch.Tensor:
    """Example indices from first-available to last-available.

    easy_first sorts by score, hard_first by −score (anti-curriculum), random by a fixed seeded
    permutation (the control). `balanced` ranks each example by its quantile within its class, so every
    prefix holds every class in proportion.
    """
    n = len(scores)
    if order == "random":
        key = torch.rand(n, generator=torch.Generator().manual_seed(seed + 7919)).double()
    else:
        key = scores.double() if order == "easy_first" else -scores.double()
    if balanced:
        quantile = torch.empty(n, dtype=torch.float64)
        for c in labels.unique():
            members = (labels == c).nonzero().squeeze(1)
            ranks = torch.argsort(torch.argsort(key[members], stable=True), stable=True)
            quantile[members] = (ranks.double() + 0.5) / len(members)
        key = quantile
    return torch.argsort(key, stable=True)


class CurriculumBatchSampler(Sampler[list[int]]):
    def __init__(self, order: torch.Tensor, batch_size: int, epochs: int, pacing: dict, seed: int,
                 rank: int = 0, world_size: int = 1):  # fmt: skip
        self.order = order  # positions 0.. of the difficulty order -> dataset index
        self.n = len(order)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.global_batch = batch_size * world_size
        self.epochs = epochs
        self.steps_per_epoch = math.ceil(self.n / self.global_batch)  # the same budget as a plain epoch
        self.total_steps = self.steps_per_epoch * epochs
        self.pacing = dict(pacing)  # name, start, full_at, params
        self.seed = seed
        self.epoch = 0
        self.clock_start = 0  # the curriculum clock at the start of the epoch (moved by adaptive pacing)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Under DDP every rank computes the same global batch and keeps slice `rank` of it."""
        self.rank, self.world_size = rank, world_size
        self.global_batch = self.batch_size * world_size
        self.steps_per_epoch = math.ceil(self.n / self.global_batch)
        self.total_steps = self.steps_per_epoch * self.epochs

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def fraction_at(self, clock: int) -> float:
        p = self.pacing
        return fraction(p["name"], clock, self.total_steps, p["start"], p["full_at"], **p.get("params", {}))

    def pool_size(self, clock: int) -> int:
        return min(self.n, max(1, math.ceil(self.fraction_at(clock) * self.n)))

    def permutation(self, pass_index: int, m: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + pass_index * 9_973 + m) % (2**62))
        return torch.randperm(m, generator=g)

    def global_batch_at(self, step: int, clock: int) -> list[int]:
        """The dataset indices of the whole (all ranks) batch at training step `step`."""
        m = self.pool_size(clock)
        first = step * self.global_batch
        out, perms = [], {}
        for k in range(first, first + self.global_batch):  # a pool smaller than a batch repeats examples
            pass_index, pos = divmod(k, m)
            if pass_index not in perms:
                perms[pass_index] = self.permutation(pass_index, m)
            out.append(int(self.order[perms[pass_index][pos]]))
        return out

    def batch_at(self, step: int, clock: int) -> list[int]:
        batch = self.global_batch_at(step, clock)
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self):
        first = self.epoch * self.steps_per_epoch
        for i in range(self.steps_per_epoch):
            yield self.batch_at(first + i, self.clock_start + i)
