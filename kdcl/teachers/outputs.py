"""Stored teacher outputs: the logits of every training example, computed once per stage and reused.

With `distill.teacher_outputs=cached` the distillation terms read stored logits instead of running
the teachers on every batch. They are stored as they are first needed: during the first epoch the
teachers run on each batch's examples that have no stored outputs yet (so that epoch costs what an
online epoch costs), and every later epoch reads them (so it costs what training the student alone
costs). A curriculum scored by the stage's own teachers needs one pass over the training set before
training anyway; that pass fills the store, and training reads it from the first step.

The store lives in the stage directory under a key over the teachers' weights, the training
examples, the data settings and the normalisation: a store whose key differs is started again, never
used. A complete store is also published to the cache shared by runs (kdcl/common/cache.py, named by its
key), where every later job with the same teachers, examples and settings finds it: that job's
stage starts complete and never runs its teachers. A stored logit belongs to one view of an image, so storing is refused with random
augmentation, and feature terms (which need the teachers' activations) keep the teachers online.
`auto` picks `cached` exactly when it is exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from kdcl.common.cache import cache_bound, publish, read_entry, store_path
from kdcl.common.io import atomic_torch_save
from kdcl.data.datamodule import source_indices
from kdcl.models.input_norm import input_norm_of
from kdcl.models.predictions import dataset_logits, inference_device

log = logging.getLogger("kdcl")
CACHE_FILE = "teacher_logits.pt"


def weights_digest(model: nn.Module) -> str:
    """The model's weights, and its own normalisation where it is not the data's (which every key holds)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    norm = input_norm_of(model)
    if norm is not None and norm.source != "data":
        h.update(json.dumps(norm.to_json(), sort_keys=True).encode())
    return h.hexdigest()


def cache_key(teachers: list[nn.Module], dataset: Dataset, data: dict, cfg: DictConfig, mean, std) -> str:
    """Teachers' weights + which examples, in which order + the data's identity (`data`: every data key
    that can change what a model is given, kdcl.config.schema.data_identity) + the normalisation + the
    precision the teachers run in."""
    what = {
        "teachers": [weights_digest(t) for t in teachers],
        "examples": hashlib.sha256(json.dumps(source_indices(dataset)).encode()).hexdigest(),
        "data": data,
        "seed": int(cfg.seed),
        "transforms": {"mean": list(mean), "std": list(std)},
        "precision": str(cfg.trainer.precision),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def shared_logits_path(cfg: DictConfig, key: str) -> Path:
    """The shared cache's file for stored logits under `key` (the dry run names it too)."""
    return store_path(cfg, "logits", "teachers", key)


class TeacherOutputs:
    """Stored logits (teachers, examples, classes) of one stage's training examples, and which are filled.

    Logits keep the dtype the teachers gave (bf16 under bf16-mixed), so a stored logit is exactly the
    online one."""

    def __init__(self, size: int, key: str = "", path: Path | None = None, logits: torch.Tensor | None = None,
                 filled: torch.Tensor | None = None):  # fmt: skip
        self.key, self.path = key, path
        self.logits = logits  # allocated at the first store, when the number of classes is known
        self.filled = torch.zeros(size, dtype=torch.bool) if filled is None else filled
        self.full = bool(self.filled.all())  # a plain flag: no device sync per step once everything is stored
        self.changed = False
        self.new: list[torch.Tensor] = []  # positions stored by this process since the last share (DDP)
        self.shared: Path | None = None  # the shared cache's file for this key (published once complete)
        self.published = False
        self.who = ""  # the run directory: who built a published store
        self.bound: int | None = None  # paths.cache_max_gb in bytes, for publishing

    @classmethod
    def open(cls, teachers: list[nn.Module], dataset: Dataset, dm, cfg: DictConfig, data: dict, stage_dir: Path,
             stage_name: str) -> TeacherOutputs:  # fmt: skip
        """The stage's store: what an earlier attempt of this stage stored under the same key, else empty.
        `data`: the data's identity (kdcl.config.schema.data_identity; this layer does not read the schema)."""
        src = dm.load()
        key = cache_key(teachers, dataset, data, cfg, src.mean, src.std)
        path = stage_dir / CACHE_FILE
        outputs = cls(len(dataset), key, path)
        if path.is_file():
            try:
                stored = torch.load(path, weights_only=True)
            except Exception:  # a damaged store is only a store: fill it again
                stored = {}
            fits = isinstance(stored, dict) and stored.keys() >= {"key", "logits", "filled"}
            if fits and stored["key"] == key and len(stored["filled"]) == len(dataset):
                outputs = cls(len(dataset), key, path, stored["logits"], stored["filled"])
            else:
                log.warning("[%s] stored teacher outputs are for other teachers, data or settings; starting again",
                            stage_name)  # fmt: skip
        shared = shared_logits_path(cfg, key) if cfg.get("paths") else None
        if shared is not None and not outputs.complete:
            found = read_entry(shared, key)
            if found is not None and len(found[0]["filled"]) == len(dataset):
                outputs = cls(len(dataset), key, path, found[0]["logits"], found[0]["filled"])
                outputs.changed = outputs.published = True  # the stage directory gets its copy at the first save
                print(f"[{stage_name}] reused the shared store {shared}, built by {found[1].built_by}", flush=True)
        outputs.shared, outputs.who, outputs.bound = shared, str(stage_dir.parent.parent), cache_bound(cfg)
        done = int(outputs.filled.sum())
        print(f"[{stage_name}] teacher outputs: {done} of {len(dataset)} examples stored"
              f"{'' if outputs.complete else '; the rest are stored as training meets them'}", flush=True)  # fmt: skip
        return outputs

    @property
    def complete(self) -> bool:
        self.full = self.full or bool(self.filled.all())
        return self.full

    def to(self, device) -> TeacherOutputs:
        """This process's own copy on `device` (a spawned DDP worker would otherwise share CPU storage)."""
        self.filled = self.filled.to(device, copy=True)
        self.logits = None if self.logits is None else self.logits.to(device, copy=True)
        return self

    def store(self, positions: torch.Tensor, logits: list[torch.Tensor], shared: bool = False) -> None:
        """Store logits (one (rows, classes) tensor per teacher); `shared`: received from other ranks."""
        stacked = torch.stack([t.detach() for t in logits])
        if self.logits is None:
            self.logits = stacked.new_zeros(len(stacked), len(self.filled), stacked.shape[-1])
        positions = positions.to(self.filled.device)
        self.logits[:, positions] = stacked.to(self.logits.device, self.logits.dtype)
        self.filled[positions] = True
        self.changed = True
        if not shared:
            self.new.append(positions)

    def take_new(self, teachers: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, (teachers, rows, classes) logits) stored by this process since the last call."""
        device = self.filled.device
        positions = torch.cat(self.new) if self.new else torch.zeros(0, dtype=torch.long, device=device)
        self.new = []
        if self.logits is None:
            return positions, torch.zeros(teachers, 0, classes, device=device)
        return positions, self.logits[:, positions]

    def read(self, positions: torch.Tensor, run_teachers: Callable[[torch.Tensor], list[torch.Tensor]]):
        """The teachers' logits of these examples; `run_teachers(rows)` computes those not stored yet."""
        if not self.full:
            missing = ~self.filled[positions]
            if missing.any():
                self.store(positions[missing], run_teachers(missing))
        return list(self.logits[:, positions])

    def fill(self, teachers: list[nn.Module], dataset: Dataset, to_input, batch_size: int, stage_name: str,
             workers: int = 0) -> None:  # fmt: skip
        """One pass of the teachers over the examples not stored yet, before training (read by `workers`)."""
        rows = (~self.filled).nonzero().squeeze(1)
        if not len(rows):
            return
        print(f"[{stage_name}] teacher outputs: one pass over {len(rows)} examples", flush=True)
        subset = Subset(dataset, rows.tolist())
        self.store(rows, [dataset_logits(t.to(inference_device()), subset, to_input, batch_size, workers=workers)
                         for t in teachers])  # fmt: skip
        self.full, self.new = bool(self.filled.all()), []  # every DDP rank runs this pass: nothing to share
        self.save()

    def save(self) -> None:
        """Write what is stored (atomically; only the first process of a DDP run), if anything changed."""
        if not self.changed or self.path is None or self.logits is None or rank_zero_only.rank != 0:
            return
        stored = {"logits": self.logits.cpu(), "filled": self.filled.cpu()}
        atomic_torch_save({"key": self.key, **stored}, self.path)
        self.changed = False
        if self.shared is not None and not self.published and self.complete:
            publish(self.shared, self.key, {"kind": "logits", "examples": len(self.filled)}, stored, self.who,
                    self.bound)  # fmt: skip
            self.published = True
