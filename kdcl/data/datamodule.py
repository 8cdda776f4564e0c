"""The LightningDataModule: train/val/test splits, loaders, augmentation, images scaled to [0, 1].

Splits: the official test split where one exists (else a fixed carve, see each source); the val split
is carved from the training part with `seed`, so it is deterministic given the seed and never overlaps
train or test; `fraction` then keeps a seeded subset of the remaining training examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from kdcl.data.augment import Augmentation, BatchMixer, per_image_transform
from kdcl.data.label_noise import NoisyLabels, Relabelled, flip_labels, with_noisy_labels
from kdcl.data.registry import ImageSplits, get_loader
from kdcl.data.replay import ViewRows, crop_flip


class Augmented(Dataset):
    """Applies torchvision v2 transforms to uint8 images of a (sub)set, per sample, on the CPU."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.transform(x), y


class Indexed(Dataset):
    """Yields (image, label, position): stored per-example teacher outputs (and CRD's bank) are looked up by position."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x, y, i


class DeviceTensors(Dataset):
    """A whole training (sub)set as two tensors on the training device, gathered one batch at a time
    (`__getitems__`): no per-sample Python, no collation, no loader workers, no host-to-device copy.
    With `positions`, batches also carry each example's position (like Indexed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, positions: bool):
        self.images, self.labels, self.positions = images, labels, positions

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, device=self.images.device)
        return (self.images[idx], self.labels[idx], idx) if self.positions else (self.images[idx], self.labels[idx])

    def __getitem__(self, i: int):
        return tuple(t[0] for t in self.__getitems__([i]))


def lone_last_batch(n: int, batch_size: int, ranks: int = 1) -> bool:
    """Whether a training epoch would end on a batch of one example: on each of `ranks` processes, which take
    ⌈n / ranks⌉ examples each (DistributedSampler pads). Batch norm cannot train on one value per channel (a 1×1
    map: a ResNet's last stage at 32 px, ReviewKD's embedding level), so such a batch is dropped: a different
    example sits it out each epoch, and the epoch has one step fewer than ⌈n / batch⌉. (Curricula and stored views
    always fill their batches.)"""
    per_rank = math.ceil(n / ranks)
    return per_rank > 1 and per_rank % batch_size == 1


def whole_batch(batch):
    """collate_fn of DeviceTensors: the batch is already one set of tensors."""
    return batch


def unwrap(ds: Dataset) -> tuple[Dataset, list[int]]:
    """(the dataset under every Subset/Augmented/Indexed wrapper, the positions of ds's examples in it)."""
    if isinstance(ds, Subset):
        base, inner = unwrap(ds.dataset)
        return base, [inner[i] for i in ds.indices]
    if isinstance(ds, (Augmented, Indexed)):
        return unwrap(ds.base)
    return ds, list(range(len(ds)))


def source_indices(ds: Dataset) -> list[int]:
    """Positions of a (wrapped) subset's examples in the underlying dataset."""
    return unwrap(ds)[1]


def noisy_mask(ds: Dataset) -> torch.Tensor | None:
    """Which of a (wrapped) training subset's examples carry a flipped label (data.label_noise); None
    when its labels are the source's own."""
    base, indices = unwrap(ds)
    clean = getattr(base, "clean_labels", None)
    if clean is None:
        return None
    idx = torch.as_tensor(indices, dtype=torch.long)
    return dataset_labels(base)[idx] != clean[idx]


def unaugmented(ds: Dataset) -> Dataset:
    """The same examples, in the same order, as plain (image, label) pairs: no augmentation, no positions,
    images decoded at data.image_size (not a folder's originals, which timm's crops read)."""
    base, indices = unwrap(ds)
    return Subset(decoded(base), indices)


def decoded(base: Dataset) -> Dataset:
    """A training source as tensors at data.image_size: a folder's originals give way to the folder itself,
    under flipped labels too."""
    if isinstance(base, Relabelled) and hasattr(base.base, "decoded"):
        return Relabelled(base.base.decoded, base.targets, base.clean_labels)
    return getattr(base, "decoded", base)


def in_memory_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) of a (subset of an) in-memory TensorDataset, without augmentation; else None."""
    base, indices = unwrap(ds)
    if not isinstance(base, TensorDataset):
        return None
    idx = torch.as_tensor(indices, dtype=torch.long)
    return base.tensors[0][idx], base.tensors[1][idx].long()


def random_crop_flip(x: torch.Tensor, pad: int, hflip: bool) -> torch.Tensor:
    """A batch's random crops with zero padding (and horizontal flips), drawn per image, on x's device:
    the batched counterpart of train_transform."""
    n = x.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    flip = torch.rand(n, device=x.device) < 0.5 if hflip else None
    return crop_flip(x, dy, dx, flip, pad)


def crop_padding(cfg: DictConfig) -> int:
    """The zero padding of data.augment's random crops: an eighth of the image side (at least 1)."""
    return max(1, int(cfg.image_size) // 8)


def dataset_labels(ds: Dataset) -> torch.Tensor:
    """The label of every example of a (subset of a) dataset, without decoding images where the source
    keeps its labels (in-memory tensors, ImageFolder targets)."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if isinstance(ds, Augmented):
        return dataset_labels(ds.base)
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].long()
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets, dtype=torch.long)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long)


def of_classes(ds: Dataset, classes: list[int] | None) -> Dataset:
    """The examples of `ds` whose label is in `classes` (all of them for None)."""
    if classes is None:
        return ds
    keep = torch.isin(dataset_labels(ds), torch.as_tensor(classes)).nonzero().flatten()
    return Subset(ds, keep.tolist())


def train_transform(cfg: DictConfig):
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(cfg.image_size, padding=crop_padding(cfg))]
    if cfg.get("hflip", False):
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


@dataclass(frozen=True)
class StagePart:
    """What one stage trains and evaluates on, within the splits every stage shares."""

    train_set: Dataset | None = None  # the stage's training examples (None: the whole training part)
    batch_sampler: Any = None  # a curriculum batch sampler, if the stage has one
    eval_classes: list[int] | None = None  # class-incremental stages validate and test on the seen classes
    with_index: bool = False  # batches also carry each example's position (stored teacher outputs, CRD's bank)
    channels_last: bool = False  # speed.channels_last: batches in the models' memory format
    views: Any = None  # stored teacher views (kdcl.teachers.views.TeacherViews): training replays them


class KdclDataModule(pl.LightningDataModule):
    """The loaded splits (once per job) served as one stage's part of them: `for_stage` gives each stage
    its own view over the same loaded data, so no stage changes what another one sees."""

    def __init__(self, cfg: DictConfig, seed: int, part: StagePart | None = None, augment: DictConfig | None = None):
        """`augment`: the run's `augment` node (timm's augmentation, kdcl/data/augment.py); None: none of it."""
        super().__init__()
        self.cfg, self.seed = cfg, int(seed)
        self.part = part or StagePart()
        self.augment, self.augmentation = augment, Augmentation.of(augment)
        self.mixer: BatchMixer | None = None
        self.source: ImageSplits | None = None
        self.train_set = self.val_set = self.test_set = None
        self.augment_on_device = False  # decided by train_dataloader: batches are augmented after transfer
        self.noise: NoisyLabels | None = None  # data.label_noise: the flipped training labels

    def for_stage(self, part: StagePart) -> KdclDataModule:
        """A view of the same loaded splits for one stage."""
        self.setup()
        view = KdclDataModule(self.cfg, self.seed, part, self.augment)
        view.source, view.train_set, view.val_set, view.test_set, view.noise, view.mixer = (
            self.source,
            self.train_set,
            self.val_set,
            self.test_set,
            self.noise,
            self.mixer,
        )
        return view

    # what models need to know -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.load().num_classes

    @property
    def in_chans(self) -> int:
        return self.load().in_chans

    def load(self) -> ImageSplits:
        if self.source is None:
            self.source = get_loader(self.cfg.name)(self.cfg)
        return self.source

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        src = self.load()
        train_idx, val_idx, test_base = self.split_indices(src)
        train_base = Subset(self.training_source(src, train_idx), train_idx)
        self.train_set = self.augmented(train_base, src)
        self.val_set = Subset(src.train, val_idx)
        self.test_set = test_base
        if self.augmentation.mixing:
            self.mixer = BatchMixer(self.augment, src.num_classes)

    def augmented(self, train_base: Dataset, src: ImageSplits) -> Dataset:
        """The training part with its per-image augmentation: timm's transform (augment=rrc|randaug), else
        data.augment's pad-crop, else none."""
        if self.augmentation.per_image:
            return Augmented(train_base, per_image_transform(self.augment, int(self.cfg.image_size), src.mean))
        return Augmented(train_base, train_transform(self.cfg)) if self.cfg.augment else train_base

    def training_source(self, src: ImageSplits, train_idx: list[int]) -> Dataset:
        """The source the training part reads: a folder's original images when timm crops them (not the copies
        decoded at data.image_size); with data.label_noise, a copy whose labels at `train_idx` are flipped
        (validation and test keep reading the clean source at data.image_size)."""
        source = src.train
        if self.augmentation.per_image and hasattr(source, "originals"):
            source = source.originals()
        rate = float(self.cfg.get("label_noise") or 0.0)
        if rate <= 0:
            return source
        clean = dataset_labels(src.train)
        kind, seed = str(self.cfg.get("label_noise_kind", "symmetric")), int(self.cfg.get("label_noise_seed", 0))
        self.noise = flip_labels(clean, train_idx, rate, kind, src.num_classes, seed)
        return with_noisy_labels(source, clean, self.noise)

    def noise_record(self) -> dict | None:
        """What data.label_noise did, for the run directory (label_noise.json); None without noise."""
        if self.noise is None:
            return None
        n_train = len(self.train_set)
        return {"rate": float(self.cfg.label_noise), "kind": str(self.cfg.get("label_noise_kind", "symmetric")),
                "seed": int(self.cfg.get("label_noise_seed", 0)), "training_examples": n_train,
                "flipped": len(self.noise.flipped), "flipped_source_indices": self.noise.flipped.tolist()}  # fmt: skip

    @property
    def split_seed(self) -> int:
        """data.split_seed, else the run's seed: it draws the validation split and the `fraction` shares."""
        value = self.cfg.get("split_seed")
        return self.seed if value is None else int(value)

    def split_indices(self, src: ImageSplits):
        """(train indices, val indices, test dataset); the val carve depends on the split seed only."""
        n = len(src.train)
        g = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(n, generator=g).tolist()
        test = src.test
        if test is None:  # no official test split: carve a fixed one (seed 0, same for every run)
            fixed = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
            n_test = max(1, round(self.cfg.test_fraction * n))
            test_idx = set(fixed[:n_test])
            test = Subset(src.train, sorted(test_idx))
            order = [i for i in order if i not in test_idx]
        n_val = round(self.cfg.val_fraction * len(order))
        val_idx, train_idx = order[:n_val], order[n_val:]
        keep = max(1, math.ceil(self.cfg.fraction * len(train_idx)))
        return sorted(train_idx[:keep]), sorted(val_idx), test

    def stage_subset(self, fraction: float | None, classes: list[int] | None = None) -> Dataset:
        """A stage's training examples: those of `classes` (a class-incremental task; None: all), then
        a seeded share `fraction` of them (e.g. a data-limited student; None: all)."""
        base = of_classes(self.train_set, classes)
        if fraction is None or fraction >= 1:
            return base
        n = len(base)
        g = torch.Generator().manual_seed(self.split_seed + 31337)
        keep = torch.randperm(n, generator=g)[: math.ceil(fraction * n)]
        return Subset(base, sorted(keep.tolist()))

    # loaders --------------------------------------------------------------------------------
    @property
    def ranks(self) -> int:
        """The training processes that share each epoch (Lightning splits it under DDP)."""
        return int(self.trainer.world_size) if self.trainer is not None else 1

    def loader(self, ds: Dataset, train: bool) -> DataLoader:
        workers, batch = int(self.cfg.num_workers), int(self.cfg.batch_size if train else self.cfg.eval_batch_size)
        return DataLoader(
            ds,
            batch_size=batch,
            shuffle=train,
            drop_last=train and lone_last_batch(len(ds), batch, self.ranks),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_device(self, ds: Dataset) -> bool:
        """data.on_device: true | false | auto (an in-memory dataset that takes under a quarter of the
        accelerator's free memory; on a CPU it is in memory already)."""
        mode = self.cfg.get("on_device", "auto")
        if mode is False or mode == "false" or in_memory_tensors(ds) is None or self.augmentation.per_image:
            return False  # timm's transforms run per image on the CPU
        if mode is True or mode == "true":
            return True
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return True
        images = in_memory_tensors(ds)[0]
        return images.numel() * images.element_size() < torch.cuda.mem_get_info(device)[0] / 4

    def device_loader(self, ds: Dataset) -> DataLoader:
        images, labels = in_memory_tensors(ds)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        data = DeviceTensors(images.to(device), labels.to(device), positions=isinstance(ds, Indexed))
        self.augment_on_device = bool(self.cfg.augment)
        if self.part.batch_sampler is not None:
            return DataLoader(data, batch_sampler=self.part.batch_sampler, collate_fn=whole_batch)
        batch = int(self.cfg.batch_size)
        return DataLoader(data, batch_size=batch, shuffle=True, drop_last=lone_last_batch(len(data), batch, self.ranks),
                          collate_fn=whole_batch)  # fmt: skip

    def views_loader(self, views) -> DataLoader:
        """Stored views rebuilt per image (timm's crops, mixup/cutmix: kdcl/data/replay.py): batches of view
        rows, each example at its view of this epoch."""
        workers, trainer = int(self.cfg.num_workers), self.trainer
        rank, ranks = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        rows = ViewRows(views.n, views.k, int(self.cfg.batch_size), views.choice,
                        lambda: trainer.current_epoch if trainer is not None else 0, self.seed,
                        self.part.batch_sampler, rank, ranks)  # fmt: skip
        return DataLoader(views.replayed, batch_sampler=rows, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        views = self.part.views
        self.augment_on_device = False
        if views is not None and views.replayed is not None:
            return self.views_loader(views)
        ds = self.part.train_set if self.part.train_set is not None else self.train_set
        ds = Indexed(ds) if self.part.with_index else ds
        if self.on_device(ds):
            return self.device_loader(ds)
        if self.part.batch_sampler is None:
            return self.loader(ds, train=True)
        workers = int(self.cfg.num_workers)
        return DataLoader(ds, batch_sampler=self.part.batch_sampler, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(of_classes(self.val_set, self.part.eval_classes))

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(of_classes(self.test_set, self.part.eval_classes))

    def eval_loader(self, ds: Dataset) -> DataLoader:
        """Validation and test: under DDP each rank takes its share and every example counts once
        (Lightning's own sampler pads the shares with repeats; its UnrepeatedDistributedSampler does not)."""
        loader = self.loader(ds, train=False)
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return loader
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

        sampler = UnrepeatedDistributedSampler(ds, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                               shuffle=False)  # fmt: skip
        return DataLoader(ds, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                          persistent_workers=loader.persistent_workers, pin_memory=loader.pin_memory)  # fmt: skip

    # batches arrive as uint8 on the device; scaled to [0, 1] there, once per batch -------------
    @staticmethod
    def scale(x: torch.Tensor) -> torch.Tensor:
        """uint8 images → float in [0, 1]: what every model takes (each normalises with its own mean and
        std, kdcl/models/input_norm.py)."""
        return x.float().div_(255)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        views = self.part.views if training else None
        if views is not None and views.replayed is not None:  # rebuilt per image, mixed here as stored
            return self.mixed_views(views, *batch)
        x, *rest = batch
        if views is not None:  # each example's stored view; rest: label, position
            x, rows = self.part.views.replay(x, rest[1], self.trainer.current_epoch)
            rest = [rest[0], rows]
        elif training and self.augment_on_device:
            x = random_crop_flip(x, crop_padding(self.cfg), bool(self.cfg.get("hflip", False)))
        x = self.scale(x)
        if training and self.mixer is not None:  # the labels become class probabilities
            x, mixed = self.mixer(x, rest[0])
            rest = [mixed, *rest[1:]]
        return self.in_format(x), *rest

    def mixed_views(self, views, x, other, y, y_other, rows):
        """A batch of stored views rebuilt per image: mixed with their partners as stored (the labels become
        class probabilities where the stage mixes), with the rows whose teacher logits they are."""
        x = views.mix(self.scale(x), self.scale(other), rows)
        target = views.targets(y, y_other, rows) if views.mixing else y
        return self.in_format(x), target, rows

    def in_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.part.channels_last else x
