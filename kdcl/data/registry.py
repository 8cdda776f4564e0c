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
READ_FROM_FILES: set[str] = set()  # datasets whose images are decoded from files at every read


def register_dataset(name: str, in_memory: bool = True) -> Callable[[DatasetLoader], DatasetLoader]:
    """`in_memory=False` for a source whose images are decoded from files at every read (a folder of
    JPEGs): there, each extra pass over the data costs its decoding too (`distill.teacher_outputs=auto`
    weighs it)."""

    def add(fn: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = fn
        if not in_memory:
            READ_FROM_FILES.add(name)
        return fn

    return add


def held_in_memory(name: str) -> bool:
    """Whether a dataset's images are held decoded in memory (a pass over them costs no decoding)."""
    get_loader(name)  # registers the built-in datasets; an unknown name is one clear error
    return name not in READ_FROM_FILES


def get_loader(name: str) -> DatasetLoader:
    from kdcl.data import sources  # noqa: F401  (registers the built-in datasets)

    if name not in DATASETS:
        raise KdclError(
            f"data.name '{name}' is not a known dataset{did_you_mean(name, DATASETS)}; "
            f"choose one of {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]
