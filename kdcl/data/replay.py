"""Views that can be rebuilt exactly from a few stored numbers (distill.teacher_outputs=views).

Two kinds. data.augment's pad-crop and flip of in-memory images: (dy, dx, flip), rebuilt for a whole batch
on the device by `crop_flip`. Today's augmentation — timm's RandomResizedCrop and flip of a folder's
originals (augment.crop=rrc), and mixup or cutmix over any crop — per view: the crop box and flip, the
mixing partner (another example, shown at its own crop of the same view index), λ and the cutmix box, as
FKD stores them (Shen & Xing, ECCV 2022). Those views are rebuilt per image by the loader's workers
(`ReplayedViews`) and mixed per batch on the device (`mix_views`). The teachers' pass and training both
rebuild them with these functions, so a replayed view is the pixels the teacher was given.

The parameters are drawn by timm's own samplers (RandomResizedCropAndInterpolation.get_params, Mixup's
per-element λ and cutmix_bbox_and_lam) under a fixed seed, so a view is distributed as timm's online
augmentation draws it. Not replayable (the loader would need each view's random pixels, not a few numbers):
RandAugment and other policies, colour jitter, random erasing, a random interpolation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Sampler

Table = dict[str, torch.Tensor]  # crop (N, K, 5), partner (N, K), blend (N, K), box (N, K, 4), lam (N, K)
TABLE_KEYS = ("crop", "partner", "blend", "box", "lam")


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Each image's crop at (dy, dx) of its zero-padded copy (and mirrored where `flip`), on x's device:
    one batched gather. The same function draws random views and rebuilds stored ones
    (kdcl/teachers/views.py), so a replayed view is the same pixels."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy.reshape(n, 1) + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx.reshape(n, 1) + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    if flip is not None:
        out = torch.where(flip.reshape(n, 1, 1, 1).bool(), out.flip(-1), out)
    return out


@dataclass(frozen=True)
class ReplayRecipe:
    """How each view is made (everything a store's key needs to know about the augmentation)."""

    crop: str  # rrc: timm's RandomResizedCrop of the original | padcrop: data.augment's | none
    image_size: int
    pad: int  # padcrop's zero padding
    hflip: float  # probability of a horizontal flip
    scale: tuple[float, float]  # rrc's area range ...
    ratio: tuple[float, float]  # ... and aspect-ratio range
    interpolation: str  # rrc's resize
    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    switch_prob: float

    @classmethod
    def of(cls, data: DictConfig, aug: DictConfig | None, pad: int) -> ReplayRecipe | None:
        """The per-image recipe for augment.crop=rrc or mixup/cutmix; None for data.augment's pad-crop alone
        (rebuilt on the device from (dy, dx, flip): kdcl/teachers/views.py)."""
        rrc = aug is not None and str(aug.get("crop", "none")) == "rrc"
        alphas = [float(aug.get(k) or 0) if aug is not None else 0.0 for k in ("mixup_alpha", "cutmix_alpha")]
        if not rrc and not any(a > 0 for a in alphas):
            return None
        crop = "rrc" if rrc else ("padcrop" if data.augment else "none")
        hflip = float(aug.hflip) if rrc else (0.5 if data.augment and data.get("hflip") else 0.0)
        return cls(crop, int(data.image_size), pad, hflip, tuple(aug.scale), tuple(aug.ratio), str(aug.interpolation),
                   *alphas, float(aug.mix_prob), float(aug.switch_prob))  # fmt: skip

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def to_json(self) -> dict:
        """The recipe, and the libraries that draw and rebuild its views (timm's samplers and transform,
        Pillow's resize: another version may draw or resize differently, so it is another store)."""
        import PIL
        import timm
        import torchvision

        versions = {"timm": timm.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__}
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}, "versions": versions}


@contextmanager
def seeded_global_rngs(seed: int):
    """Python's and NumPy's global generators seeded for the block, then restored: timm's samplers draw
    from them, and the views must be the same in every job with the same seed."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def draw_table(sizes: list[tuple[int, int]], k: int, recipe: ReplayRecipe, seed: int) -> Table:
    """K views per example, `sizes` the (height, width) of each example's original."""
    with seeded_global_rngs(seed):
        crop = torch.tensor([draw_crop(h, w, recipe) for h, w in sizes for _ in range(k)], dtype=torch.int32)
        mixing = draw_mixing(len(sizes), k, recipe)
    return {"crop": crop.reshape(len(sizes), k, 5), **mixing}


def draw_crop(h: int, w: int, recipe: ReplayRecipe) -> list[int]:
    """(top, left, height, width, flip) of one view: timm's RandomResizedCrop box, or pad-crop's offsets
    (dy, dx) into the padded image."""
    if recipe.crop == "rrc":
        from timm.data.transforms import RandomResizedCropAndInterpolation

        size = torch.empty(1, 1, 1).expand(1, h, w)  # get_params reads only the size (no pixels allocated)
        box = list(RandomResizedCropAndInterpolation.get_params(size, recipe.scale, recipe.ratio))
    elif recipe.crop == "padcrop":
        box = [random.randint(0, 2 * recipe.pad), random.randint(0, 2 * recipe.pad), h, w]
    else:
        box = [0, 0, h, w]
    return [*box, int(random.random() < recipe.hflip)]


def draw_mixing(n: int, k: int, recipe: ReplayRecipe) -> Table:
    """Each view's mixing partner, mixup weight (`blend`; 1: none), cutmix box and label share `lam`, drawn
    per view by timm's Mixup (mode=elem: its own λ for every image) with the partner a random other example."""
    rows = n * k
    own = torch.arange(n).repeat_interleave(k)
    partner, blend, lam = own.clone(), torch.ones(rows), torch.ones(rows)
    box = torch.zeros(rows, 4, dtype=torch.int16)
    if recipe.mixing and n > 1:
        from timm.data.mixup import Mixup, cutmix_bbox_and_lam

        mixer = Mixup(recipe.mixup_alpha, recipe.cutmix_alpha, prob=recipe.mix_prob, switch_prob=recipe.switch_prob,
                      mode="elem", label_smoothing=0.0)  # fmt: skip
        drawn, cut = mixer._params_per_elem(rows)  # timm's per-element draw (λ, cutmix or mixup)
        offset = np.random.randint(1, n, size=rows)
        for r in np.flatnonzero(drawn != 1.0):
            partner[r] = (int(own[r]) + int(offset[r])) % n
            if cut[r]:
                size = (recipe.image_size, recipe.image_size)
                (yl, yh, xl, xh), lam[r] = cutmix_bbox_and_lam(size, float(drawn[r]), correct_lam=True)
                box[r] = torch.tensor([int(yl), int(yh), int(xl), int(xh)], dtype=torch.int16)
            else:
                blend[r] = lam[r] = float(drawn[r])
    return {"partner": partner.reshape(n, k), "blend": blend.reshape(n, k), "box": box.reshape(n, k, 4),
            "lam": lam.reshape(n, k)}  # fmt: skip


def view_pixels(image, crop: list[int], recipe: ReplayRecipe) -> torch.Tensor:
    """One view (uint8 C×S×S) of an original (a PIL image, or a uint8 tensor) from its stored crop row: for
    rrc the ops timm's training transform runs (resized_crop, hflip, to tensor) on the same PIL image."""
    from torchvision.transforms import functional as F

    top, left, h, w, flip = crop
    if recipe.crop == "rrc":
        from timm.data.transforms import str_to_interp_mode

        pil = F.to_pil_image(image) if isinstance(image, torch.Tensor) else image
        out = F.resized_crop(pil, top, left, h, w, [recipe.image_size] * 2, str_to_interp_mode(recipe.interpolation))
        return F.pil_to_tensor(F.hflip(out) if flip else out)
    x = image[None]
    dy, dx = (torch.tensor([top]), torch.tensor([left])) if recipe.crop == "padcrop" else (None, None)
    if dy is not None:
        return crop_flip(x, dy, dx, torch.tensor([bool(flip)]), recipe.pad)[0]
    return (x.flip(-1) if flip else x)[0]


class ReplayedViews(Dataset):
    """A stage's training examples as their stored views: item `row` (= position·K + view) is (that view's
    pixels, its mixing partner's pixels — the same tensor when unmixed —, both labels, the row), uint8; the
    device mixes them (mix_views). `originals`: the examples as the crop reads them (a folder's originals)."""

    def __init__(self, originals: Dataset, labels: torch.Tensor, table: Table, recipe: ReplayRecipe):
        self.originals, self.labels, self.recipe = originals, labels, recipe
        self.crop, self.partner = table["crop"], table["partner"]
        self.k = self.crop.shape[1]

    def __len__(self) -> int:
        return len(self.originals) * self.k

    def __getitem__(self, row: int):
        position, view = divmod(int(row), self.k)
        partner = int(self.partner[position, view])
        x = view_pixels(self.originals[position][0], self.crop[position, view].tolist(), self.recipe)
        other = x
        if partner != position:
            other = view_pixels(self.originals[partner][0], self.crop[partner, view].tolist(), self.recipe)
        return x, other, self.labels[position], self.labels[partner], row


def mix_views(x: torch.Tensor, other: torch.Tensor, blend: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """A batch of views in [0, 1] mixed with their partners: mixup (x·blend + other·(1 − blend), timm's
    formula) and cutmix (other's pixels inside the box). Unmixed rows (blend 1, empty box) stay x exactly."""
    n, _, h, w = x.shape
    weight = blend.to(x.dtype).reshape(n, 1, 1, 1)
    mixed = x * weight + other * (1 - weight)
    yl, yh, xl, xh = (b.reshape(n, 1, 1, 1) for b in box.long().unbind(1))
    ys = torch.arange(h, device=x.device).reshape(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).reshape(1, 1, 1, w)
    inside = (ys >= yl) & (ys < yh) & (xs >= xl) & (xs < xh)
    return torch.where(inside, other, mixed)


def mixed_targets(y: torch.Tensor, other: torch.Tensor, lam: torch.Tensor, classes: int) -> torch.Tensor:
    """Class probabilities of mixed views: lam on the own label, the rest on the partner's (timm's mixup_target)."""
    one_hot = torch.nn.functional.one_hot
    share = lam.float().reshape(-1, 1)
    return share * one_hot(y.long(), classes).float() + (1 - share) * one_hot(other.long(), classes).float()


def image_sizes(originals: Dataset) -> list[tuple[int, int]]:
    """(height, width) of every original, read from file headers where the source can (`image_sizes()`)."""
    from torch.utils.data import Subset

    if isinstance(originals, Subset):
        inner = image_sizes(originals.dataset)
        return [inner[i] for i in originals.indices]
    if hasattr(originals, "tensors"):  # in memory: one size
        return [tuple(originals.tensors[0].shape[-2:])] * len(originals)
    source = getattr(originals, "image_sizes", None)
    if source is not None:
        return source()
    if hasattr(originals, "base"):  # relabelled: the images are the base's
        return image_sizes(originals.base)
    sizes = []
    for i in range(len(originals)):
        image = originals[i][0]
        sizes.append(tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else (image.height, image.width))
    return sizes


class ViewRows(Sampler[list[int]]):
    """Training batches of view rows: each batch of positions — a curriculum's batch sampler, else a shuffle
    seeded by (seed, epoch) — becomes those examples' views of this epoch (`choice(epoch)`, a pure function
    of seed and epoch, so a resumed epoch shows the same). Under DDP every rank draws the same global batch
    of batch_size × ranks and keeps its own slice (a curriculum's sampler slices its batches itself)."""

    def __init__(self, n: int, k: int, batch_size: int, choice: Callable[[int], torch.Tensor],
                 epoch_of: Callable[[], int], seed: int, batches: Sampler | None = None, rank: int = 0,
                 ranks: int = 1):  # fmt: skip
        self.n, self.k, self.batch_size, self.seed = n, k, batch_size, seed
        self.choice, self.epoch_of, self.batches = choice, epoch_of, batches
        self.rank, self.ranks = rank, ranks

    def __len__(self) -> int:
        return len(self.batches) if self.batches is not None else math.ceil(self.n / (self.batch_size * self.ranks))

    def positions(self, epoch: int) -> Iterator[list[int]]:
        if self.batches is not None:
            yield from self.batches
            return
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        step, mine = self.batch_size * self.ranks, slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        total = math.ceil(self.n / step) * step  # a short last global batch is filled from the start, cyclically
        padded = order.repeat(math.ceil(total / self.n))[:total]  # as DistributedSampler pads: no rank gets 1 or 0
        for first in range(0, self.n, step):
            yield padded[first : first + step][mine].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch_of()
        view = self.choice(epoch).cpu()
        for batch in self.positions(epoch):
            yield [p * self.k + int(view[p]) for p in batch]
