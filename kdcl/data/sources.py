"""Built-in datasets. Each function reads one source and returns uint8 images at `cfg.image_size`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset, TensorDataset

from kdcl.common.errors import KdclError
from kdcl.data.originals import Originals
from kdcl.data.registry import ImageSplits, register_dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W batch once at load time, so small images keep a spatial map in deep nets."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from the training images only."""
    x = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def in_memory(train_x, train_y, test_x, test_y, num_classes, size, class_names=()) -> ImageSplits:
    train_x, test_x = resize_uint8(train_x, size), resize_uint8(test_x, size)
    mean, std = channel_stats(train_x)
    return ImageSplits(
        train=TensorDataset(train_x, train_y),
        test=TensorDataset(test_x, test_y) if test_x is not None else None,
        num_classes=num_classes,
        in_chans=train_x.shape[1],
        mean=mean,
        std=std,
        class_names=tuple(class_names),
    )


@register_dataset("digits")
def digits(cfg: DictConfig) -> ImageSplits:
    """scikit-learn's 8×8 digits; a fixed stratified test split (seed 0), identical for every run seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=cfg.test_fraction, random_state=0, stratify=d.target
    )
    return in_memory(images[idx_train], labels[idx_train], images[idx_test], labels[idx_test], 10, cfg.image_size)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST format), gzip'd or not. torchvision's reader does not open .gz files."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


@register_dataset("fashion_mnist")
def fashion_mnist(cfg: DictConfig) -> ImageSplits:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    download_root = Path(cfg.root or cfg.download_root)
    candidates = ([Path(cfg.root), Path(cfg.root) / "FashionMNIST" / "raw"] if cfg.root else []) + [
        DEBIAN_FASHION_MNIST, download_root / "FashionMNIST" / "raw"]  # fmt: skip
    for folder in candidates:
        files = [find_idx(folder, s) for s in stems]
        if all(files):
            break
    else:
        if not cfg.download:
            raise KdclError(
                "data=fashion_mnist: no Fashion-MNIST idx files found in "
                f"{', '.join(str(c) for c in candidates)}; install Debian's dataset-fashion-mnist "
                "(apt-get install -y dataset-fashion-mnist), or set data.download=true to fetch it with torchvision"
            )
        files = download_fashion_mnist(download_root, stems)
    from torchvision.datasets import FashionMNIST

    tx, ty, vx, vy = (read_idx(f) for f in files)
    return in_memory(tx[:, None], ty.long(), vx[:, None], vy.long(), 10, cfg.image_size, FashionMNIST.classes)


def download_fashion_mnist(root: Path, stems: list[str]) -> list[Path]:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:
        raise KdclError(
            f"data=fashion_mnist: download into {root} failed ({type(exc).__name__}); install Debian's "
            "dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or put the idx files in data.root"
        ) from None
    return [root / "FashionMNIST" / "raw" / s for s in stems]


def cifar(cfg: DictConfig, n: int) -> ImageSplits:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if n == 10 else CIFAR100
    root = Path(cfg.root)
    try:
        train = cls(str(root), train=True, download=bool(cfg.download))
        test = cls(str(root), train=False, download=bool(cfg.download))
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        fix = "set data.download=true" if not cfg.download else "download it where you have internet"
        raise KdclError(f"data.root '{root}' holds no CIFAR-{n} ({exc}); {fix} or point data.root at it") from None
    except Exception as exc:  # network failures of the download
        raise KdclError(
            f"data=cifar{n}: download into data.root '{root}' failed ({type(exc).__name__}); "
            "copy the dataset there or run where you have internet"
        ) from None

    def tensors(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets, dtype=torch.long)

    (tx, ty), (vx, vy) = tensors(train), tensors(test)
    return in_memory(tx, ty, vx, vy, n, cfg.image_size, train.classes)


@register_dataset("cifar10")
def cifar10(cfg: DictConfig) -> ImageSplits:
    return cifar(cfg, 10)


@register_dataset("cifar100")
def cifar100(cfg: DictConfig) -> ImageSplits:
    return cifar(cfg, 100)


class FolderImages(Dataset):
    """torchvision's ImageFolder, decoded to uint8 tensors at the configured size (read lazily)."""

    def __init__(self, root: Path, size: int):
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
        self.folder = ImageFolder(str(root), transform=tf)
        self.targets = list(self.folder.targets)
        self.classes = list(self.folder.classes)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i):
        return self.folder[i]

    def originals(self) -> Originals:
        """The same examples as PIL images at their own size, for a training transform that crops them itself
        (augment=rrc: RandomResizedCrop of the original, not of the copy at data.image_size)."""
        return Originals(self)

    def original(self, i: int):
        path, label = self.folder.samples[i]
        return self.folder.loader(path), label

    def original_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, from its file's header (not decoded)."""
        from PIL import Image

        def size(path: str) -> tuple[int, int]:
            with Image.open(path) as image:
                return image.height, image.width

        return [size(path) for path, _ in self.folder.samples]


@register_dataset("image_folder")
def image_folder(cfg: DictConfig) -> ImageSplits:
    root = Path(cfg.root)
    if not root.is_dir():
        raise KdclError(f"data.root '{root}' is not a directory; point it at a folder of class sub-folders")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    try:
        train = FolderImages(root / "train" if split else root, cfg.image_size)
        test = FolderImages(root / "test", cfg.image_size) if split else None
    except (FileNotFoundError, RuntimeError) as exc:
        raise KdclError(f"data.root '{root}': {exc}; it needs one sub-folder of images per class") from None
    if test is not None and test.classes != train.classes:
        raise KdclError(f"data.root '{root}': train/ and test/ have different class folders; make them match")
    return decoded_splits(root, train, test)


def decoded_splits(root: Path, train: Dataset, test: Dataset | None) -> ImageSplits:
    """ImageSplits of datasets decoded lazily (a folder, a prepared copy): mean and std from ~256 training images."""
    sample = torch.stack([train[i][0] for i in range(0, len(train), max(1, len(train) // 256))])
    if sample.shape[1] not in (1, 3):
        raise KdclError(f"data.root '{root}': images have {sample.shape[1]} channels; use grey or RGB images")
    mean, std = channel_stats(sample)
    return ImageSplits(train, test, len(train.classes), sample.shape[1], mean, std, tuple(train.classes))


@register_dataset("prepared")
def prepared(cfg: DictConfig) -> ImageSplits:
    """A prepared, streamable copy of a folder (`kdcl data prepare FOLDER OUT`; kdcl/data/prepared.py), read as
    data=image_folder reads the folder: the same classes, labels, order, crops and originals for augment=rrc."""
    from kdcl.data.prepared import open_prepared

    root = Path(cfg.root)
    train, test, _ = open_prepared(root, int(cfg.image_size))
    return decoded_splits(root, train, test)


@register_dataset("synthetic")
def synthetic(cfg: DictConfig) -> ImageSplits:
    """Learnable noise images: each class is a fixed random smooth pattern plus per-image noise.

    Generated from a fixed seed, so the data is the same for every run seed (like a real dataset).
    """
    g = torch.Generator().manual_seed(1234)
    k, c, s = int(cfg.num_classes), int(cfg.in_chans), int(cfg.image_size)
    patterns = F.interpolate(torch.rand(k, c, 4, 4, generator=g), size=(s, s), mode="bilinear", align_corners=False)

    def make(n: int):
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = 0.6 * patterns[y] + 0.4 * torch.rand(n, c, s, s, generator=g)
        return (x * 255).round().to(torch.uint8), y

    (tx, ty), (vx, vy) = make(int(cfg.train_size)), make(int(cfg.test_size))
    return in_memory(tx, ty, vx, vy, k, s)
