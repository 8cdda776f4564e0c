"""Datasets (registry + sources) and the LightningDataModule that splits and serves them."""

from kdcl.data.datamodule import KdclDataModule
from kdcl.data.registry import DATASETS, ImageSplits, register_dataset

__all__ = ["DATASETS", "ImageSplits", "KdclDataModule", "register_dataset"]
