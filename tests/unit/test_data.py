import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from kdcl.common.errors import KdclError
from kdcl.config.compose import config_dir
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import lone_last_batch
from kdcl.data.sources import DEBIAN_FASHION_MNIST


def data_cfg(name: str, **overrides):
    cfg = OmegaConf.load(config_dir() / "data" / f"{name}.yaml")
    cfg.merge_with(overrides)
    if "download_root" in cfg:
        cfg.download_root = "/nonexistent-kdcl-data"
    return cfg


def indices(subset) -> set[int]:
    return set(subset.indices)


def test_digits_splits_are_disjoint_and_cover_the_data():
    dm = KdclDataModule(data_cfg("digits"), seed=0)
    dm.setup()
    train, val = indices(dm.train_set), indices(dm.val_set)
    assert not train & val
    assert len(dm.test_set) == 360  # sklearn's fixed stratified 20 % of 1 797
    assert len(train) + len(val) == 1797 - 360
    x, y = dm.train_set[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 32, 32) and 0 <= y < 10


def test_val_split_is_deterministic_given_the_seed_and_test_split_is_fixed():
    a, b, c = (KdclDataModule(data_cfg("digits"), seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert indices(a.val_set) == indices(b.val_set)
    assert indices(a.val_set) != indices(c.val_set)
    assert torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])  # same held-out images for every seed


def test_fraction_keeps_a_seeded_subset_of_the_training_part():
    full = KdclDataModule(data_cfg("digits"), seed=0)
    part = KdclDataModule(data_cfg("digits", fraction=0.25), seed=0)
    full.setup()
    part.setup()
    assert len(part.train_set) == pytest.approx(0.25 * len(full.train_set), abs=1)
    assert indices(part.train_set) <= indices(full.train_set)
    assert indices(part.val_set) == indices(full.val_set)


def test_a_split_seed_keeps_the_same_examples_while_the_run_seed_varies():
    """data.split_seed: every seed trains and validates on the same examples (a teacher given to a sweep saw them)."""
    a, b, c = (KdclDataModule(data_cfg("digits", fraction=0.25, split_seed=split), seed=seed)
               for seed, split in ((0, 7), (1, 7), (1, None)))  # fmt: skip
    for dm in (a, b, c):
        dm.setup()
    assert indices(a.train_set) == indices(b.train_set) and indices(a.val_set) == indices(b.val_set)
    assert indices(a.stage_subset(0.5)) == indices(b.stage_subset(0.5))
    assert indices(b.train_set) != indices(c.train_set)  # without it, the split follows the run's seed


def test_batches_are_scaled_to_the_unit_range_on_transfer():
    dm = KdclDataModule(data_cfg("digits"), seed=0)
    dm.setup()
    raw, labels = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer((raw.clone(), labels), 0)
    assert raw.dtype == torch.uint8 and x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
    assert torch.equal(x, raw.float() / 255) and torch.equal(y, labels)  # each model normalises it itself


def test_augmentation_changes_training_views_only():
    dm = KdclDataModule(data_cfg("synthetic", augment=True), seed=0)
    dm.setup()
    torch.manual_seed(0)
    views = {tuple(dm.train_set[0][0].flatten().tolist()) for _ in range(5)}
    assert len(views) > 1
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"), reason="needs dataset-fashion-mnist"
)
def test_fashion_mnist_uses_the_official_test_split():
    dm = KdclDataModule(data_cfg("fashion_mnist", fraction=1.0), seed=0)
    dm.setup()
    assert len(dm.test_set) == 10_000
    assert len(dm.train_set) + len(dm.val_set) == 60_000
    assert dm.num_classes == 10 and dm.in_chans == 1
    assert dm.test_set[0][0].shape == (1, 32, 32)


def test_fashion_mnist_missing_everywhere_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr("kdcl.data.sources.DEBIAN_FASHION_MNIST", tmp_path / "none")
    dm = KdclDataModule(data_cfg("fashion_mnist", root=str(tmp_path), download=False), seed=0)
    with pytest.raises(KdclError, match="apt-get install -y dataset-fashion-mnist.*data.download=true"):
        dm.setup()


def test_cifar_without_files_or_download_is_a_clear_error(tmp_path):
    dm = KdclDataModule(data_cfg("cifar10", root=str(tmp_path), download=False), seed=0)
    with pytest.raises(KdclError, match="data.root .* holds no CIFAR-10"):
        dm.setup()


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=6) -> None:
    g = torch.Generator().manual_seed(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(20, 24, 3, generator=g) * 100 + ci * 120).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder_reads_class_subfolders(tmp_path):
    write_image_folder(tmp_path)
    dm = KdclDataModule(data_cfg("image_folder", root=str(tmp_path), image_size=16, augment=False), seed=0)
    dm.setup()
    assert dm.num_classes == 2 and dm.in_chans == 3
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 12
    x, y = dm.train_set[0]
    assert x.shape == (3, 16, 16)


def test_image_folder_missing_root_is_a_clear_error(tmp_path):
    dm = KdclDataModule(data_cfg("image_folder", root=str(tmp_path / "nope")), seed=0)
    with pytest.raises(KdclError, match="data.root .* is not a directory"):
        dm.setup()


def test_device_tensors_gather_whole_batches_like_the_per_sample_path():
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from kdcl.data.datamodule import DeviceTensors, Indexed, in_memory_tensors, whole_batch

    images = torch.arange(10 * 4, dtype=torch.uint8).view(10, 1, 2, 2)
    base = Subset(TensorDataset(images, torch.arange(10)), [1, 3, 5, 7])
    got = in_memory_tensors(Indexed(base))
    assert torch.equal(got[0], images[[1, 3, 5, 7]]) and got[1].tolist() == [1, 3, 5, 7]
    device = DataLoader(DeviceTensors(*got, positions=True), batch_size=3, collate_fn=whole_batch)
    per_sample = DataLoader(Indexed(base), batch_size=3)
    for a, b in zip(device, per_sample, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_batched_random_crop_is_a_shifted_window_of_the_padded_image():
    from kdcl.data.datamodule import random_crop_flip

    torch.manual_seed(0)
    x = torch.randint(1, 255, (16, 2, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, pad=2, hflip=False)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for img, crop in zip(padded, out, strict=True):
        windows = [img[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(crop, w) for w in windows)
    assert not all(torch.equal(a, b) for a, b in zip(out, x, strict=True))  # not every image left in place
    flipped = random_crop_flip(x, pad=2, hflip=True)
    assert flipped.shape == x.shape


@pytest.mark.parametrize("on_device", [True, False])
def test_a_training_epoch_never_ends_on_a_lone_example(on_device):
    """Batch norm cannot train on one example at a 1×1 map (ReviewKD's embedding level, a ResNet's last stage at
    32 px): an epoch whose last batch would hold one drops it; a longer remainder is kept."""
    for batch, sizes in ((646, [646, 646]), (645, [645, 645, 3])):
        dm = KdclDataModule(data_cfg("digits", batch_size=batch, on_device=on_device), seed=0)
        dm.setup()
        assert len(dm.train_set) == 1293
        assert sorted((len(labels) for _, labels in dm.train_dataloader()), reverse=True) == sizes


def test_under_ddp_a_lone_example_is_judged_per_process():
    """DistributedSampler gives each of W processes ⌈n / W⌉ examples: the last batch is each process's."""
    assert lone_last_batch(1293, 646, ranks=2)  # 647 per process: 646 + 1
    assert not lone_last_batch(1293, 646, ranks=3)  # 431 per process: one batch of 431
    assert not lone_last_batch(1, 64)  # one example in all: nothing to drop it for
