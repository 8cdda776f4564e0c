"""A prepared, streamable copy of an image folder (`kdcl data prepare`, read by `data=prepared`).

Every image is decoded once, shrunk to a storage size and written with Lightning's `litdata` (`optimize`: chunked
binary files, local disk or object storage, several writer processes), one litdata dataset per split, beside a
small kdcl manifest (`kdcl_prepared.json`: classes, storage size, format, counts, source folder, a content
digest) and each split's labels in stored order (`<split>/labels.json`). litdata is an optional extra
(`pip install 'kdcl[stream]'`); nothing here imports it until a copy is written or read.

Reading: `PreparedImages` is a map-style dataset over litdata's `StreamingDataset`, indexed directly (`ds[i]`,
a global sample index, whatever the process's rank or loader worker). litdata's own iteration (its shuffle,
its per-rank and per-worker shards, `StreamingDataLoader`) is not used: kdcl's splits are Subsets picked by
index, its curricula are batch samplers and Lightning gives each DDP rank its share through a
DistributedSampler, so the dataset must answer any index in any process. `len` comes from the manifest, not
from `StreamingDataset.__len__`, which counts one rank's share under DDP. Each process (the main one and every
loader worker) opens its own StreamingDataset on first use; one is never pickled into a worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcl.common.errors import KdclError, io_failure
from kdcl.data.originals import Originals

MANIFEST = "kdcl_prepared.json"
LABELS = "labels.json"
FORMATS = ("raw", "jpeg")
VERSION = 1  # of the layout below: a reader refuses a copy written in another one
INSTALL = "pip install 'kdcl[stream]'"


def require_litdata():
    """litdata, or one line naming the extra that installs it."""
    try:
        import litdata
    except ImportError:
        raise KdclError(f"prepared data needs Lightning's litdata, which is not installed; run {INSTALL}") from None
    return litdata


# the folder -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderSplit:
    name: str  # train | test
    classes: list[str]
    samples: list[tuple[str, int]]  # (path, label) in torchvision ImageFolder's order


def folder_splits(root: Path) -> list[FolderSplit]:
    """The splits of a folder in image_folder layout (root/train/<class>/, root/test/<class>/, or one
    root/<class>/ tree read as `train`), listed the way data=image_folder lists them (torchvision's ImageFolder),
    so a prepared copy has the same classes, labels and order. Every mistake is one line, before any decoding."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise KdclError(f"kdcl data prepare: '{root}' is not a directory; give a folder of class sub-folders")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    out = []
    for name, folder in (("train", root / "train"), ("test", root / "test")) if split else (("train", root),):
        try:
            classes, index = find_classes(str(folder))
            samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, RuntimeError) as exc:
            raise KdclError(
                f"kdcl data prepare: '{folder}': {exc}; it needs one sub-folder of images per class"
            ) from None
        out.append(FolderSplit(name, classes, samples))
    if len(out) == 2 and out[0].classes != out[1].classes:
        raise KdclError(f"kdcl data prepare: '{root}': train/ and test/ have different class folders; make them match")
    return out


def shrink(image, size: int):
    """The image with its shorter side brought down to `size` (aspect kept; never enlarged).

    Not a square centre crop: RandomResizedCrop (augment=rrc) samples boxes over the whole picture, with their
    own aspect ratios, so a stored square would take away the edges and the shapes it draws from. Not enlarged:
    an upscaled copy holds no more information, only more bytes. The resize is torchvision's (bilinear,
    antialiased, on the PIL image), the same one data.image_size's `T.Resize` applies."""
    from torchvision.transforms import functional as TF

    return TF.resize(image, size) if min(image.size) > size else image


class StoreImage:
    """litdata.optimize's function: source position → one stored sample. A module-level class, so its writer
    processes can be spawned as well as forked. It never raises: litdata 0.2's optimize waits forever on a
    writer that died, so a photo that cannot be read is written down in `failures` (one line each, appended by
    every writer) with an empty sample in its place, and prepare() refuses the copy after the writers end."""

    def __init__(self, samples: list[tuple[str, int]], size: int, fmt: str, failures: Path):
        self.samples, self.size, self.fmt, self.failures = samples, size, fmt, failures

    def __call__(self, position: int) -> dict:
        from PIL import Image

        path, label = self.samples[position]
        try:
            with Image.open(path) as original:
                is_jpeg = original.format == "JPEG" and original.mode == "RGB"
                image = original.convert("RGB")  # what ImageFolder's loader gives data=image_folder
        except Exception as exc:  # noqa: BLE001 — any failure of a photo: recorded, never raised (see above)
            with open(self.failures, "a") as f:
                f.write(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
            empty = torch.zeros(1, 1, 3, dtype=torch.uint8) if self.fmt == "raw" else b""
            return {"image": empty, "label": -1, "position": int(position)}
        small = shrink(image, self.size)
        if self.fmt == "raw":  # decoded once: reading is a copy, no decoder
            data = torch.from_numpy(np.asarray(small).copy())  # H×W×3 uint8
        elif is_jpeg and small is image:  # already small enough: the file's own bytes (no second JPEG loss)
            data = Path(path).read_bytes()
        else:
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=95)
            data = buffer.getvalue()
        return {"image": data, "label": int(label), "position": int(position)}


# writing --------------------------------------------------------------------------------------------------------
def check_out_dir(out: Path, overwrite: bool) -> None:
    """out-dir must be new, empty, or (overwrite=true) an earlier prepared copy — never any other folder."""
    if out.exists() and not out.is_dir():
        raise KdclError(f"kdcl data prepare: out-dir '{out}' is a file; give a new or empty directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise KdclError(f"kdcl data prepare: out-dir '{out}' exists and is not empty; give a new directory "
                        "or overwrite=true to replace a prepared copy")  # fmt: skip
    if not (out / MANIFEST).is_file():
        raise KdclError(f"kdcl data prepare: out-dir '{out}' is not a prepared copy (no {MANIFEST}); overwrite=true "
                        "replaces only a prepared copy, give a new or empty directory")  # fmt: skip


def digest_of(out: Path, splits: list[str], head: dict) -> str:
    """sha256 of what a copy holds: its settings, classes and every split's litdata index, chunks and labels."""
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for name in splits:
        for file in sorted((out / name).rglob("*")):
            if file.is_file():
                h.update(str(file.relative_to(out)).encode())
                with open(file, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def prepare(root: Path, out: Path, size: int = 256, fmt: str = "raw", overwrite: bool = False,
            workers: int = 2) -> dict:  # fmt: skip
    """Write the prepared copy of `root` into `out`; returns its manifest. Every input is checked first. The
    copy is written beside `out` (OUT.partial) and moved into place whole: a failed or interrupted write leaves
    an earlier copy at `out` as it was."""
    if fmt not in FORMATS:
        raise KdclError(f"kdcl data prepare: format={fmt} is not a format; use raw or jpeg")
    if size < 8:
        raise KdclError(f"kdcl data prepare: size={size} is too small; give a storage size of at least 8 px")
    litdata = require_litdata()
    splits = folder_splits(root)
    check_out_dir(out, overwrite)
    partial = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted write left
        partial.mkdir(parents=True)
        manifest = write_copy(litdata, root, splits, partial, size, fmt, workers)
        replace_dir(partial, out)
    except OSError as exc:
        raise io_failure(exc, f"write the prepared copy {out}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # a failed write leaves nothing behind
    return manifest


def write_copy(litdata, root: Path, splits: list[FolderSplit], out: Path, size: int, fmt: str, workers: int) -> dict:
    for split in splits:
        print(f"kdcl data prepare: {split.name}: {len(split.samples)} images from {root} ({fmt}, shorter side "
              f"≤ {size} px) with {workers} writer process(es)", flush=True)  # fmt: skip
        # keep_data_ordered + reorder_files=False: each writer takes one contiguous slice in order and litdata
        # merges the slices in writer order, so stored index i is source position i (checked on every read).
        # fork where the platform has it (what torch's DataLoader does); litdata's default elsewhere.
        failures = out / f"{split.name}.failures"
        failures.touch()
        litdata.optimize(fn=StoreImage(split.samples, size, fmt, failures), inputs=list(range(len(split.samples))),
                         output_dir=str((out / split.name).resolve()), chunk_bytes="64MB",
                         num_workers=max(1, min(workers, len(split.samples))), keep_data_ordered=True,
                         reorder_files=False, start_method="fork" if sys.platform == "linux" else None)  # fmt: skip
        bad = failures.read_text().splitlines()
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise KdclError(f"kdcl data prepare: {split.name}: {bad[0]}{more}; fix or remove the photo(s) and run "
                            "again (nothing was replaced)")  # fmt: skip
        failures.unlink()
        (out / split.name / LABELS).write_text(json.dumps([label for _, label in split.samples]))
    head = {"version": VERSION, "storage_size": size, "format": fmt, "classes": splits[0].classes}
    manifest = {**head, "source": str(root.resolve()), "digest": digest_of(out, [s.name for s in splits], head),
                "splits": {s.name: {"count": len(s.samples)} for s in splits}}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def replace_dir(new: Path, out: Path) -> None:
    """Put the finished copy `new` at `out`, an earlier copy there moved aside first and removed after."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


# reading --------------------------------------------------------------------------------------------------------
def read_manifest(root: Path) -> dict:
    if not root.is_dir():
        raise KdclError(f"data.root '{root}' is not a directory; point it at the out-dir of kdcl data prepare")
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise KdclError(f"data.root '{root}' is not a prepared copy (no {MANIFEST}); write one with "
                        f"kdcl data prepare FOLDER {root}, or use data=image_folder for a folder") from None  # fmt: skip
    except (OSError, ValueError) as exc:
        raise KdclError(f"data.root '{root}': {MANIFEST} is unreadable ({exc}); prepare the copy again") from None
    if manifest.get("version") != VERSION:
        raise KdclError(f"data.root '{root}' was prepared in layout {manifest.get('version')}, this kdcl reads "
                        f"{VERSION}; prepare it again")  # fmt: skip
    return manifest


class PreparedImages(Dataset):
    """One split of a prepared copy as (uint8 C×H×W tensor at `size`, label), cut as data=image_folder cuts a
    photo (`T.Resize(size)`, `T.CenterCrop(size)`), with `targets` and `classes` like FolderImages."""

    def __init__(self, folder: Path, classes: list[str], size: int, fmt: str, count: int):
        from torchvision import transforms as T

        self.folder, self.classes, self.size, self.fmt = folder, list(classes), int(size), fmt
        self.targets = json.loads((folder / LABELS).read_text())
        if len(self.targets) != count:
            raise KdclError(f"data.root '{folder.parent}': {folder.name} has {len(self.targets)} labels for "
                            f"{count} images; prepare the copy again")  # fmt: skip
        self.transform = T.Compose([T.Resize(self.size), T.CenterCrop(self.size), T.PILToTensor()])
        self._stream, self._pid = None, None

    def __getstate__(self) -> dict:  # a loader worker opens its own StreamingDataset
        return {**self.__dict__, "_stream": None, "_pid": None}

    def stream(self):
        if self._stream is None or self._pid != os.getpid():
            litdata = require_litdata()
            logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines, once per process, say nothing new
            self._stream, self._pid = litdata.StreamingDataset(str(self.folder.resolve())), os.getpid()
        return self._stream

    def __len__(self) -> int:
        return len(self.targets)

    def original(self, i: int):
        """Example i as stored: (a PIL RGB image at the storage size, label)."""
        from PIL import Image

        if not 0 <= i < len(self.targets):
            raise IndexError(i)
        item = self.stream()[i]
        if int(item["position"]) != i or int(item["label"]) != self.targets[i]:
            raise KdclError(f"data.root '{self.folder.parent}': {self.folder.name} image {i} is out of place "
                            "in the prepared copy; prepare it again")  # fmt: skip
        if self.fmt == "raw":
            image = Image.fromarray(item["image"].numpy())
        else:
            image = Image.open(io.BytesIO(bytes(item["image"]))).convert("RGB")
        return image, self.targets[i]

    def __getitem__(self, i):
        image, label = self.original(int(i))
        return self.transform(image), label

    def original_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every stored image, without decoding (raw: the array's shape; jpeg: its header)."""
        from PIL import Image

        def size(item) -> tuple[int, int]:
            if self.fmt == "raw":
                return tuple(item["image"].shape[:2])
            with Image.open(io.BytesIO(bytes(item["image"]))) as image:
                return image.height, image.width

        return [size(self.stream()[i]) for i in range(len(self))]

    def originals(self) -> Originals:
        """The same examples as PIL images at the storage size, for a training transform that crops them itself
        (augment=rrc), as FolderImages.originals()."""
        return Originals(self)


def open_prepared(root: Path, size: int) -> tuple[PreparedImages, PreparedImages | None, list[str]]:
    """(train, test or None, classes) of the prepared copy at `root`, read at data.image_size `size`."""
    require_litdata()
    manifest = read_manifest(root)
    splits = {name: PreparedImages(root / name, manifest["classes"], size, manifest["format"], spec["count"])
              for name, spec in manifest["splits"].items()}  # fmt: skip
    return splits["train"], splits.get("test"), list(manifest["classes"])
