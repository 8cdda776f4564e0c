"""A lazily decoded source's images at their own size, for a training transform that crops them itself."""

from __future__ import annotations

from torch.utils.data import Dataset


class Originals(Dataset):
    """The examples of `decoded` (a folder, a prepared copy) as PIL images at their stored size rather than at
    data.image_size: augment=rrc crops these, and stored views draw their boxes in `image_sizes()`.
    `decoded` provides `original(i) -> (PIL image, label)` and `original_sizes()`; `decoded` itself reads the
    examples at data.image_size (kdcl/data/datamodule.py's `decoded`)."""

    def __init__(self, decoded):
        self.decoded, self.targets, self.classes = decoded, decoded.targets, decoded.classes

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, i):
        return self.decoded.original(int(i))

    def image_sizes(self) -> list[tuple[int, int]]:
        return self.decoded.original_sizes()
