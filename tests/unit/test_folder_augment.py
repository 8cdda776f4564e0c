"""A folder with timm's crops: training crops the originals; every pass without augmentation (curriculum
scores, stored outputs, calibration) reads the images decoded at data.image_size, under label noise too."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from PIL import Image

from kdcl.config.schema import AugmentConfig, DataConfig
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import source_indices, unaugmented


def test_timms_crops_read_the_originals_and_plain_passes_the_decoded_images(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("RGB", (40 + 7 * i, 30), (40 * i, 20, 200 if c == "a" else 0)).save(tmp_path / c / f"{i}.png")
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "image_folder", "root": str(tmp_path),
                           "image_size": 16, "test_fraction": 0.25, "label_noise": 0.5})  # fmt: skip
    augment = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"name": "rrc", "crop": "rrc"})
    dm = KdclDataModule(data, seed=0, augment=augment)
    dm.setup()
    x, _ = dm.train_set[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)  # timm's crop of the original, at the size asked
    plain = unaugmented(dm.train_set)
    first, label = plain[0]
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    position = source_indices(dm.train_set)[0]
    assert torch.equal(first, dm.load().train[position][0])  # the folder's own decoding at 16 px, not a crop
    noisy = [int(dm.train_set[i][1]) for i in range(len(plain))]
    assert [int(plain[i][1]) for i in range(len(plain))] == noisy  # the flipped labels, as training reads them
