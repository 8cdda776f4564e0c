"""The dataset registry. Adding a dataset = one `@register_dataset` function + one conf/data/*.yaml."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig
from torch.utils.data import Dataset

from kdcl.common.errors import KdclError, did_you_mean


@dataclass
class ImageSplits:
    """What a source gives: a train set, a test set (None: carve one), and what models need to know.

    Datasets yield (uint8 image tensor C×H×W at `image_size`, int label); the datamodule converts,
    augments and normalises.
    """

    train: Dataset
    test: Dataset | None
    num_classes: int
    in_chans: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()  # by label; empty: the labels themselves name the classes


DatasetLoader = Callable[[DictConfig], ImageSplits]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    def add(fn: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = fn
        return fn

    return add


def get_loader(name: str) -> DatasetLoader:
    from kdcl.data import sources  # noqa: F401  (registers the built-in datasets)

    if name not in DATASETS:
        raise KdclError(
            f"data.name '{name}' is not a known dataset{did_you_mean(name, DATASETS)}; "
            f"choose one of {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]
