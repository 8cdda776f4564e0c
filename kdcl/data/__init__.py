"""Datasets (registry + sources) and the LightningDataModule that splits and serves them.

`KdclDataModule` is loaded on first use (PEP 562): the registry can be imported without Lightning.
"""

from importlib import import_module

from kdcl.data.registry import DATASETS, ImageSplits, register_dataset

__all__ = ["DATASETS", "ImageSplits", "KdclDataModule", "register_dataset"]


def __getattr__(name: str):
    if name == "KdclDataModule":
        return import_module("kdcl.data.datamodule").KdclDataModule
    raise AttributeError(f"module 'kdcl.data' has no attribute {name!r}")
