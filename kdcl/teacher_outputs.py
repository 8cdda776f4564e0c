"""One teacher pass per stage: the logits of every training example, stored and reused.

With `distill.teacher_outputs=cached` the distillation terms read these stored logits instead of
running the teachers on every batch, so a distillation step costs what a student-only step costs;
the curriculum's teacher scorers read the same pass. The cache lives in the stage directory under a
key over the teachers' weights, the training examples, the transforms and the resolution: a cache
whose key differs is recomputed, never used. A stored logit belongs to one view of an image, so the
cache is refused with random augmentation, and feature terms (which need the teachers' activations)
keep the teachers online. `auto` picks `cached` exactly when it is exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from kdcl.errors import KdclError, did_you_mean

log = logging.getLogger("kdcl")
MODES = ("online", "cached", "auto")
CACHE_FILE = "teacher_logits.pt"


def choose_mode(mode: str, augment: bool, feature_terms: list[str]) -> str:
    """online | cached for a stage whose loss needs teachers; errors name the setting that forbids caching."""
    if mode not in MODES:
        raise KdclError(
            f"distill.teacher_outputs '{mode}' must be one of {'|'.join(MODES)}{did_you_mean(str(mode), MODES)}"
        )
    if mode == "online":
        return "online"
    if mode == "auto":
        return "online" if augment or feature_terms else "cached"
    if augment:
        raise KdclError(
            "distill.teacher_outputs=cached with data.augment=true would pair a stored logit with a new random "
            "view of each image; use distill.teacher_outputs=auto|online or data.augment=false"
        )
    if feature_terms:
        raise KdclError(
            f"distill.teacher_outputs=cached: the feature terms {', '.join(feature_terms)} need the teachers' "
            "activations on every batch; use distill.teacher_outputs=auto|online"
        )
    return "cached"


def source_indices(ds: Dataset) -> list[int]:
    """Positions of a (nested) subset's examples in the underlying dataset."""
    if isinstance(ds, Subset):
        inner = source_indices(ds.dataset)
        return [inner[i] for i in ds.indices]
    base = getattr(ds, "base", None)
    return source_indices(base) if base is not None else list(range(len(ds)))


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(teachers: list[nn.Module], dataset: Dataset, data_cfg: DictConfig, seed: int, mean, std) -> str:
    """Teachers' weights + which examples, in which order + how they are read, resized and normalised."""
    data = OmegaConf.to_container(data_cfg, resolve=True)
    what = {
        "teachers": [weights_digest(t) for t in teachers],
        "examples": hashlib.sha256(json.dumps(source_indices(dataset)).encode()).hexdigest(),
        "data": {k: data.get(k) for k in ("name", "root", "image_size", "fraction", "val_fraction", "test_fraction")},
        "seed": seed,
        "transforms": {"augment": bool(data.get("augment")), "mean": list(mean), "std": list(std)},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def teacher_pass(teachers: list[nn.Module], dataset: Dataset, normalize, batch_size: int) -> torch.Tensor:
    """(teachers, examples, classes) logits on the plain images, in dataset order, in eval mode."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = []
    with torch.random.fork_rng(devices=[]):  # the pass leaves the random state as it found it, so a
        for model in teachers:  # cached run shuffles exactly like an online one
            was_training = model.training
            model = model.to(device).eval()
            loader = DataLoader(dataset, batch_size=batch_size)
            with torch.inference_mode():
                logits = [model(normalize(x.to(device))).float().cpu() for x, _ in loader]
            out.append(torch.cat(logits).clone())  # a normal tensor again: the loss may save it for backward
            model.train(was_training)
    return torch.stack(out)


def cached_logits(teachers: list[nn.Module], dataset: Dataset, dm, cfg: DictConfig, stage_dir: Path,
                  stage_name: str) -> torch.Tensor:  # fmt: skip
    """The stage's stored teacher logits, computed now unless a cache with the same key is there."""
    src = dm.load()
    key = cache_key(teachers, dataset, cfg.data, int(cfg.seed), src.mean, src.std)
    path = stage_dir / CACHE_FILE
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
        except Exception:  # a damaged cache is only a cache: compute it again
            stored = {}
        if stored.get("key") == key:
            return stored["logits"]
        log.warning("[%s] stored teacher outputs do not match this stage (key differs); recomputing", stage_name)
    print(f"[{stage_name}] teacher outputs: one pass over {len(dataset)} examples, stored for the stage", flush=True)
    logits = teacher_pass(teachers, dataset, dm.normalize, int(cfg.data.eval_batch_size))
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "logits": logits}, tmp)
    tmp.replace(path)
    return logits
