"""Stored teacher views (`distill.teacher_outputs=views`): distillation with augmentation at the cost
of training the student alone, exact by construction.

Before the stage, one pass draws `data.views` (K) augmentation parameter sets per training example
from a generator seeded by `seed` — the crop's offsets into the zero-padded image and the flip —
rebuilds exactly those views and stores, per teacher, the parameters and the teacher's logits of each
view (FKD, Shen & Xing, ECCV 2022). Training draws one of an example's K views per epoch (a pure
function of seed, epoch and position: a resumed epoch draws the same), rebuilds its pixels on the
device from the stored parameters with the same function that draws random views
(kdcl.data.replay.crop_flip), and reads the teacher's logits of those pixels instead of running
the teacher. With today's augmentation — timm's RandomResizedCrop of a folder's originals (augment.crop=rrc),
mixup and cutmix — a view is its crop box, flip, mixing partner, λ and cutmix box (kdcl/data/replay.py): the
loader's workers rebuild each view from the originals and the device mixes them, in the pass and in training
alike. RandAugment, colour jitter and random erasing draw pixels, not a few numbers: they are not stored.

Many classes: only the top `distill.store_topk` logits are kept (fp16 values, int16 indices) with one
more value per view, the log-mean-exp of the other logits; expanding gives those classes their
stored logits and every other class that value, so at temperature 1 the top-k probabilities are the
teacher's and the rest of the mass is spread evenly over the other classes (FKD's marginal smoothing).
Few classes: every logit, in the teacher's dtype.

Stores live in the shared cache (kdcl/common/cache.py), one file per teacher, named by a key over the
teacher's weights, the examples, the data and transforms, K, the seed, the precision and the
storage: every job with the same teacher and data reuses one pass, and a changed setting is a
different file, so a stale store is never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from kdcl.common.cache import CacheEntry, cache_bound, cache_dir, load_or_build, store_path
from kdcl.common.errors import KdclError
from kdcl.data.datamodule import crop_padding, dataset_labels, source_indices, unaugmented, unwrap
from kdcl.data.replay import (
    TABLE_KEYS,
    ReplayedViews,
    ReplayRecipe,
    crop_flip,
    draw_table,
    image_sizes,
    mix_views,
    mixed_targets,
)
from kdcl.models.predictions import evaluating, inference_device
from kdcl.teachers.outputs import TeacherOutputs, weights_digest

VIEW_SEED = 7_368_787  # the view generator's seed offset (fixed: a resumed or repeated job draws alike)
ALL_LOGITS_UP_TO = 100  # distill.store_topk=null keeps every logit up to this many classes ...
AUTO_TOPK = 10  # ... and the top 10 above it


@dataclass(frozen=True)
class ViewSpec:
    """How the views are drawn and stored (everything the store's key needs besides teacher and data)."""

    k: int  # views per example
    seed: int
    pad: int  # the crops' zero padding
    hflip: bool
    topk: int | None  # None: every logit
    bf16: bool  # the pass runs under bf16 autocast (a GPU, when training is bf16)
    plain: bool  # also the un-augmented view's logits (a teacher-scored curriculum)
    recipe: ReplayRecipe | None = None  # views rebuilt per image (timm's crops, mixup/cutmix); None: pad-crop

    @classmethod
    def of(cls, cfg: DictConfig, classes: int, plain: bool, epochs: int) -> ViewSpec:
        """data.views views per example, but never more than the stage's epochs: each epoch shows the next
        view of each example (TeacherViews.choice), so views beyond the epochs would be passed, stored and
        never shown."""
        topk = cfg.distill.get("store_topk")
        topk = (None if classes <= ALL_LOGITS_UP_TO else AUTO_TOPK) if topk is None else int(topk)
        bf16 = str(cfg.trainer.get("precision", "32")).startswith("bf16") and inference_device().type == "cuda"
        pad = crop_padding(cfg.data)
        return cls(min(int(cfg.data.views), int(epochs)), int(cfg.seed), pad, bool(cfg.data.get("hflip", False)),
                   None if topk is None or topk >= classes else topk, bf16, plain,
                   ReplayRecipe.of(cfg.data, cfg.get("augment"), pad))  # fmt: skip


def store_bytes(n: int, classes: int, spec: ViewSpec) -> int:
    """The size of one teacher's store of n examples (tensor data; the file adds a few kB)."""
    per_view = 4 * classes if spec.topk is None else 4 * spec.topk + 2  # fp32 logits | fp16 + int16, rest
    params = 3 * 2 if spec.recipe is None else 5 * 4 + 8 + 4 + 4 * 2 + 4  # crop, partner, blend, box, lam
    return n * spec.k * (per_view + params) + (n * classes * 4 if spec.plain else 0)


def store_problem(stage: str, n: int, classes: int, teachers: int, spec: ViewSpec, budget_mb: float | None,
                  directory: Path | None) -> str | None:  # fmt: skip
    """Why the stage's stores cannot be made (over distill.store_max_mb, or more than `directory`'s free
    space), as the one-line error; None when they fit."""
    mb = teachers * store_bytes(n, classes, spec) / 2**20
    logits = f"all {classes}" if spec.topk is None else f"the top {spec.topk}"
    size = (f"distill.teacher_outputs=views: stage '{stage}' needs a view store of {mb:.1f} MB ({n} examples × "
            f"data.views={spec.k} × {logits} logits × {teachers} teacher(s))")  # fmt: skip
    if budget_mb is not None and mb > budget_mb:
        return (f"{size}, over distill.store_max_mb={budget_mb:g}; lower data.views, set distill.store_topk, or "
                "raise distill.store_max_mb")  # fmt: skip
    if directory is not None:
        existing = next(p for p in (directory.absolute(), *directory.absolute().parents) if p.exists())
        free = shutil.disk_usage(existing).free / 2**20
        if mb > free:
            return (f"{size}, but paths.cache_dir '{directory}' has only {free:.1f} MB free; free space, set "
                    "paths.cache_dir elsewhere or lower data.views")  # fmt: skip
    return None


def draw_views(n: int, spec: ViewSpec) -> torch.Tensor:
    """(n, K, 3) int16: each view's crop offsets (dy, dx) into the padded image and its flip (0/1)."""
    g = torch.Generator().manual_seed(spec.seed + VIEW_SEED)
    offsets = torch.randint(0, 2 * spec.pad + 1, (n, spec.k, 2), generator=g)
    flips = (torch.rand(n, spec.k, generator=g) < 0.5) if spec.hflip else torch.zeros(n, spec.k, dtype=torch.bool)
    return torch.cat([offsets, flips[..., None].long()], -1).to(torch.int16)


def rebuild(x: torch.Tensor, params: torch.Tensor, pad: int) -> torch.Tensor:
    """The views of images `x` (uint8, on any device) that `params` (rows, 3) describe."""
    params = params.to(x.device).long()
    return crop_flip(x, params[:, 0], params[:, 1], params[:, 2], pad)


def views_key(teacher: nn.Module, dataset: Dataset, data: dict, mean, std, spec: ViewSpec,
              sizes: list[tuple[int, int]] | None = None) -> tuple[str, dict]:  # fmt: skip
    """(key, what it is made of): the teacher's weights, which examples, the data's identity (`data`:
    kdcl.config.schema.data_identity), the normalisation, and how the views are drawn and stored (with a
    per-image recipe, also the originals' sizes, which its crop boxes are drawn in)."""
    what = {
        "kind": "views",
        "teacher": weights_digest(teacher),
        "examples": hashlib.sha256(json.dumps(source_indices(dataset)).encode()).hexdigest(),
        "data": data,
        "normalize": {"mean": list(mean), "std": list(std)},
        "views": {"k": spec.k, "seed": spec.seed, "pad": spec.pad, "hflip": spec.hflip, "plain": spec.plain},
        "store": {"topk": spec.topk, "bf16": spec.bf16},
    }
    if spec.recipe is not None:  # absent otherwise: pad-crop stores keep their keys
        what["recipe"] = spec.recipe.to_json()
        what["sizes"] = hashlib.sha256(json.dumps(sizes).encode()).hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


def views_store_path(cfg: DictConfig, teacher: nn.Module, key: str) -> Path:
    """The shared cache's file for a teacher's views under `key` (the dry run names it too)."""
    return store_path(cfg, "views", getattr(teacher, "pretrained_cfg", {}).get("architecture", "teacher"), key)


def compress(logits: torch.Tensor, topk: int | None) -> dict[str, torch.Tensor]:
    """Logits (..., classes) as stored: all of them, or the top k (fp16) and the others' log-mean-exp."""
    if topk is None:
        return {"logits": logits}
    values, indices = logits.float().topk(topk, dim=-1)
    others = logits.float().scatter(-1, indices, float("-inf"))
    rest = others.logsumexp(-1) - torch.log(torch.tensor(float(logits.shape[-1] - topk)))
    return {"values": values.half(), "indices": indices.to(torch.int16), "rest": rest.half()}


def expand(stored: dict[str, torch.Tensor], rows: torch.Tensor, classes: int) -> torch.Tensor:
    """The logits of flat view rows: stored ones as they are; a top-k store expanded (marginal smoothing)."""
    if "logits" in stored:
        return stored["logits"][rows]
    full = stored["rest"][rows].float()[:, None].expand(len(rows), classes).clone()
    return full.scatter_(1, stored["indices"][rows].long(), stored["values"][rows].float())


def view_pass(teacher: nn.Module, dataset: Dataset, params: torch.Tensor, to_input, batch_size: int,
              spec: ViewSpec, workers: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """The teacher's logits of every stored view (and of the plain view with spec.plain), in eval and
    inference mode. Examples are read once, by `workers` loader processes (a folder's decoding overlaps the
    teacher, as in training); each batch of them is run at each of its K views."""
    by_view, plain = [], []
    positions = DataLoader(range(len(dataset)), batch_size)  # the batch's positions, in order
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=spec.bf16)
    # evaluating: back on its own device afterwards (training never runs it: its memory stays free)
    with evaluating(teacher) as device, autocast:
        for (x, *_), idx in zip(DataLoader(dataset, batch_size, num_workers=workers), positions, strict=True):
            x = x.to(device)
            views = [teacher(to_input(rebuild(x, params[idx, v], spec.pad))) for v in range(spec.k)]
            by_view.append(torch.stack(views, 1).cpu())  # (batch, K, classes)
            if spec.plain:
                plain.append(teacher(to_input(x)).cpu())
    logits = torch.cat(by_view)
    stored = {"params": params, **compress(logits, spec.topk)}
    if spec.plain:
        stored["plain"] = torch.cat(plain)
    return stored


def replay_pass(teacher: nn.Module, replayed: ReplayedViews, plain: Dataset, table: dict[str, torch.Tensor],
                to_input, batch_size: int, workers: int, spec: ViewSpec) -> dict[str, torch.Tensor]:  # fmt: skip
    """view_pass for views rebuilt per image: every view row in order, its pixels made by the loader's
    workers and mixed on the teacher's device, exactly as training makes them."""
    logits = []  # compressed per batch: a top-k store never holds every class's logits of every view
    blend, box = table["blend"].flatten(), table["box"].flatten(0, 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=spec.bf16)
    with evaluating(teacher) as device, autocast:
        for x, other, _, _, rows in DataLoader(replayed, batch_size, num_workers=workers):
            x = mix_views(to_input(x.to(device)), to_input(other.to(device)), blend[rows].to(device),
                          box[rows].to(device))  # fmt: skip
            logits.append(compress(teacher(x).cpu(), spec.topk))
        plain_logits = (
            [teacher(to_input(x.to(device))).cpu() for x, _ in DataLoader(plain, batch_size, num_workers=workers)]
            if spec.plain
            else []
        )
    n = len(plain)
    by_view = {name: torch.cat([b[name] for b in logits]).reshape(n, spec.k, *logits[0][name].shape[1:])
               for name in logits[0]}  # fmt: skip
    stored = {**table, **by_view}
    if spec.plain:
        stored["plain"] = torch.cat(plain_logits)
    return stored


@dataclass
class TeacherViewStore:
    """One teacher's stored views, indexed by flat view row (position * K + view), and where they came from."""

    entry: CacheEntry
    tensors: dict[str, torch.Tensor]  # params (N, K, 3); logits (N, K, C) or values/indices/rest; plain
    classes: int

    def __post_init__(self) -> None:
        self.to("cpu")

    @property
    def params(self) -> torch.Tensor:
        """How each view was drawn: pad-crop's (dy, dx, flip), or a per-image recipe's crop rows."""
        return self.tensors["params"] if "params" in self.tensors else self.tensors["crop"]

    def to(self, device) -> TeacherViewStore:
        self.params_on = self.params.to(device)
        self.flat = {name: t.to(device).flatten(0, 1) for name, t in self.tensors.items()
                     if name not in ("params", "plain")}  # fmt: skip
        return self

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return expand(self.flat, rows, self.classes)


@dataclass
class StageExamples:
    """A stage's training examples as its views read them."""

    plain: Dataset  # decoded at data.image_size, unaugmented: pad-crop views and the plain logits start here
    originals: Dataset | None = None  # with a per-image recipe: as timm's crop reads them (a folder's originals)
    labels: torch.Tensor | None = None  # ... the labels training sees (data.label_noise's too)
    sizes: list[tuple[int, int]] | None = None  # ... and each original's (height, width)

    @classmethod
    def of(cls, train_set: Dataset, spec: ViewSpec) -> StageExamples:
        plain = unaugmented(train_set)
        if spec.recipe is None:
            return cls(plain)
        originals = Subset(*unwrap(train_set))
        size = spec.recipe.image_size  # pad-crop and mixing alone start from the images at data.image_size
        sizes = image_sizes(originals) if spec.recipe.crop == "rrc" else [(size, size)] * len(originals)
        return cls(plain, originals, dataset_labels(train_set), sizes)

    def replayed(self, table: dict[str, torch.Tensor], spec: ViewSpec) -> ReplayedViews:
        return ReplayedViews(self.originals, self.labels, table, spec.recipe)


def open_views(teacher: nn.Module, examples: StageExamples, dm, cfg: DictConfig, data: dict, spec: ViewSpec,
               stage_name: str, run_dir: Path) -> TeacherViewStore:  # fmt: skip
    """The teacher's views of the stage's examples: read from the shared cache, else drawn, passed and stored."""
    src, dataset = dm.load(), examples.plain
    key, what = views_key(teacher, dataset, data, src.mean, src.std, spec, examples.sizes)
    path = views_store_path(cfg, teacher, key)
    batch, workers = int(cfg.data.eval_batch_size), int(cfg.data.num_workers)

    def build() -> dict[str, torch.Tensor]:
        problem = store_problem(stage_name, len(dataset), src.num_classes, 1, spec, None, cache_dir(cfg))
        if problem:  # checked only where a store is to be written: reading one needs no space
            raise KdclError(problem)
        print(f"[{stage_name}] teacher views: one pass over {len(dataset)} examples × {spec.k} views", flush=True)
        if spec.recipe is None:
            return view_pass(teacher, dataset, draw_views(len(dataset), spec), dm.scale, batch, spec, workers)
        table = draw_table(examples.sizes, spec.k, spec.recipe, spec.seed + VIEW_SEED)
        return replay_pass(teacher, examples.replayed(table, spec), dataset, table, dm.scale, batch, workers, spec)

    tensors, entry = load_or_build(path, key, what, build, str(run_dir), stage_name, cache_bound(cfg))
    return TeacherViewStore(entry, tensors, src.num_classes)


class TeacherViews:
    """A stage's stored views, one store per teacher (a list of teachers' logits stays combinable):
    `replay` rebuilds each batch example's view of this epoch, `read` gives the teachers' logits of it.
    Complete from the start: the module never runs the teachers."""

    full = complete = True

    def __init__(self, stores: list[TeacherViewStore], spec: ViewSpec, replayed: ReplayedViews | None = None):
        params = [s.params for s in stores]
        drawn = ("params", *TABLE_KEYS)  # training mixes with the first store's table: all must agree
        if any(not torch.equal(stores[0].tensors[k], s.tensors[k]) for s in stores[1:] for k in drawn
               if k in stores[0].tensors):  # fmt: skip
            raise RuntimeError("teachers' view stores were drawn differently")  # one spec and key: cannot happen
        self.stores, self.spec = stores, spec
        self.replayed = replayed  # the loader's dataset of views rebuilt per image (None: pad-crop on the device)
        self.n, self.k = params[0].shape[:2]
        self.device = torch.device("cpu")
        self.drawn: dict[int, torch.Tensor] = {}

    @property
    def mixing(self) -> bool:
        return self.spec.recipe is not None and self.spec.recipe.mixing

    def mix(self, x: torch.Tensor, other: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A batch of per-image views (in [0, 1]) mixed with their partners as the pass mixed them."""
        flat = self.stores[0].flat
        return mix_views(x, other, flat["blend"][rows], flat["box"][rows])

    def targets(self, y: torch.Tensor, other: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return mixed_targets(y, other, self.stores[0].flat["lam"][rows], self.stores[0].classes)

    def to(self, device) -> TeacherViews:
        self.device = torch.device(device)
        self.drawn = {}
        for s in self.stores:
            s.to(self.device)
        return self

    def choice(self, epoch: int) -> torch.Tensor:
        """Which of its K views each example shows in `epoch`: example i starts at a seeded view and takes
        the next one each epoch, so any K epochs in a row show each of its views once (the views themselves
        are independent random draws). A function of (seed, epoch) only: a resumed epoch shows the same."""
        if epoch not in self.drawn:
            g = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + VIEW_SEED)
            start = torch.randint(0, self.k, (self.n,), generator=g)
            self.drawn = {epoch: ((start + epoch) % self.k).to(self.device)}
        return self.drawn[epoch]

    def replay(self, x: torch.Tensor, positions: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch's views of this epoch, their flat view rows) for uint8 images at `positions`."""
        positions = positions.to(self.device)
        view = self.choice(epoch)[positions]
        params = self.stores[0].params_on[positions, view]
        return rebuild(x, params, self.spec.pad), positions * self.k + view

    def read(self, rows: torch.Tensor, run_teachers=None) -> list[torch.Tensor]:
        """The teachers' logits of the views at flat `rows`."""
        return [s.logits(rows.to(self.device)) for s in self.stores]

    def save(self) -> None:
        """Nothing to save: the stores were written once, before training."""

    def plain_outputs(self) -> TeacherOutputs | None:
        """The un-augmented view's logits (for a teacher-scored curriculum), when the pass made them."""
        if not self.spec.plain:
            return None
        logits = torch.stack([s.tensors["plain"] for s in self.stores])
        return TeacherOutputs(self.n, logits=logits, filled=torch.ones(self.n, dtype=torch.bool))

    def summary(self) -> dict:
        """What the stage records: the stores' files, size on disk, whether this job built them, pass time."""
        entries = [s.entry for s in self.stores]
        return {
            "mode": "views",
            "views": self.k,
            "stores": [e.to_json() for e in entries],
            "size_mb": round(sum(e.size_mb for e in entries), 3),
            "pass_s": round(sum(e.pass_s for e in entries if e.built), 2),
            "built": any(e.built for e in entries),
        }


def open_teacher_views(teachers: list[nn.Module], train_set: Dataset, dm, cfg: DictConfig, data: dict,
                       stage_name: str, run_dir: Path, plain: bool, epochs: int) -> TeacherViews:  # fmt: skip
    """The stage's views of every teacher; a store that cannot fit is one line (exit 2) before any pass.
    `data`: the data's identity (kdcl.config.schema.data_identity; this layer does not read the schema)."""
    spec = ViewSpec.of(cfg, dm.num_classes, plain, epochs)
    examples = StageExamples.of(train_set, spec)
    problem = store_problem(stage_name, len(train_set), dm.num_classes, len(teachers), spec,
                            cfg.distill.get("store_max_mb"), None)  # fmt: skip
    if problem:
        raise KdclError(problem)
    started = time.perf_counter()
    stores = [open_views(t, examples, dm, cfg, data, spec, stage_name, run_dir) for t in teachers]
    table = {name: stores[0].tensors[name] for name in TABLE_KEYS} if spec.recipe is not None else None
    views = TeacherViews(stores, spec, examples.replayed(table, spec) if table else None)
    print(f"[{stage_name}] teacher views ready in {time.perf_counter() - started:.1f}s", flush=True)
    return views
