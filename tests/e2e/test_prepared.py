"""A prepared, streamable copy of a folder (`kdcl data prepare`, `data=prepared`): it reads back as the folder
does, trains end to end with timm's crops, changes every cache key when the copy changes, and every bad input
is one line and exit status 2 before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from kdcl.config.compose import compose
from kdcl.config.schema import data_identity
from kdcl.data.prepared import MANIFEST, shrink
from kdcl.data.sources import FolderImages
from tests.conftest import TINY, in_process

pytest.importorskip("litdata")

SIZE = 16  # data.image_size of the reads
STORE = 32  # the copies' storage size: the larger photos are shrunk, the smaller kept as they are


def make_folder(root: Path) -> Path:
    """40 JPEGs, two classes (a bright disc on red, a dark square on blue), photos of several shapes."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 14), ("test", 6)):
        for label, name in enumerate(("disc", "square")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = 24 + 6 * (i % 5), 20 + 5 * (i % 4)
                noise = torch.randint(0, 60, (h, w, 3), generator=g, dtype=torch.uint8)
                base = torch.tensor([180, 40, 40] if label == 0 else [40, 40, 180], dtype=torch.uint8)
                pixels = (noise + base).clamp(0, 255)
                pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 250 if label == 0 else 10
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def copies(photos, tmp_path_factory) -> dict[str, Path]:
    """The folder prepared in both formats, through the command line."""
    out = {}
    for fmt in ("raw", "jpeg"):
        out[fmt] = tmp_path_factory.mktemp("prepared") / fmt
        proc = in_process(["data", "prepare", str(photos), str(out[fmt]), f"size={STORE}", f"format={fmt}"], photos)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"prepared {out[fmt]}: 2 classes, train 28, test 12 images" in proc.stdout
    return out


def splits_of(copy: Path):
    from kdcl.data.registry import get_loader

    cfg = compose(["data=prepared", f"data.root={copy}", f"data.image_size={SIZE}"])
    return get_loader("prepared")(cfg.data)


def decoded_then_shrunk(path: str) -> torch.Tensor:
    """What the raw copy promises: the photo decoded, shrunk to the storage size, then cut as image_folder cuts."""
    with Image.open(path) as image:
        small = shrink(image.convert("RGB"), STORE)
    return T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.PILToTensor()])(small)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_a_prepared_copy_reads_back_as_the_folder(fmt, photos, copies):
    splits = splits_of(copies[fmt])
    assert splits.class_names == ("disc", "square") and splits.num_classes == 2 and splits.in_chans == 3
    for name, prepared in (("train", splits.train), ("test", splits.test)):
        folder = FolderImages(photos / name, SIZE)
        assert (
            len(prepared) == len(folder) and prepared.targets == folder.targets and prepared.classes == folder.classes
        )
        for i in range(len(folder)):
            x, y = prepared[i]
            assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE) and y == folder.targets[i]
            expected = decoded_then_shrunk(folder.folder.samples[i][0])
            diff = (x.int() - expected.int()).abs().float()
            if fmt == "raw":
                assert torch.equal(x, expected), (name, i)  # decoded once, nothing lost after the shrink
            else:
                assert diff.mean() < 3 and diff.max() <= 48, (name, i, diff.mean(), diff.max())  # one more JPEG pass
            # and against data=image_folder's own read (one resize of the photo instead of two)
            assert (x.int() - folder[i][0].int()).abs().float().mean() < 6
        original, label = prepared.originals()[3]  # augment=rrc crops these: the stored image, aspect kept
        w, h = Image.open(folder.folder.samples[3][0]).size
        assert min(original.size) == min(STORE, w, h) and label == folder.targets[3]


def test_training_on_a_prepared_copy_with_timms_crops_mixup_stored_views_and_two_loader_workers(copies, tmp_path):
    args = ["train", *TINY, "data=prepared", f"data.root={copies['raw']}", f"data.image_size={SIZE}",
            "data.num_workers=2", "data.batch_size=5", "augment=rrc", "augment.mixup_alpha=0.4", "data.views=1",
            "latency.batches=[]"]  # fmt: skip
    proc = in_process(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[student] teacher outputs: views (auto: 1 stored views per example serve 2 epochs" in proc.stdout
    assert "[student] teacher views: one pass over" in proc.stdout and "run directory: " in proc.stdout


def test_the_cache_keys_change_when_the_copy_changes_and_a_failed_write_keeps_the_old_copy(photos, tmp_path):
    import shutil

    folder, copy = tmp_path / "photos", tmp_path / "copy"
    shutil.copytree(photos, folder)
    photo = sorted((folder / "train" / "disc").iterdir())[0]
    identities = []
    for change in (False, True):  # one photo's pixels changed (same size, same name), prepared to the same out-dir
        if change:
            Image.fromarray(255 - np.asarray(Image.open(photo))).save(photo)
        args = ["data", "prepare", str(folder), str(copy), f"size={STORE}", "overwrite=true", "workers=1"]
        assert in_process(args, tmp_path).returncode == 0
        cfg = compose(["data=prepared", f"data.root={copy}", f"data.image_size={SIZE}"])
        identities.append(data_identity(cfg.data))
    first, second = identities
    assert first["digest"] and second["digest"] and first["digest"] != second["digest"]
    assert {k: v for k, v in first.items() if k != "digest"} == {k: v for k, v in second.items() if k != "digest"}
    for_test = [data_identity(compose(["data=prepared", f"data.root={copy}"]).data, for_test=True)]
    assert for_test[0]["digest"] == second["digest"]  # a given model's test of the copy is keyed by it too

    photo.write_bytes(b"not a jpeg")  # found only while writing: one line, and the copy before it stays whole
    proc = in_process(["data", "prepare", str(folder), str(copy), "overwrite=true", "workers=1"], tmp_path)
    last = proc.stderr.strip().splitlines()[-1]  # after litdata's progress bar
    assert proc.returncode == 2 and last.startswith("error: kdcl data prepare: train: ") and str(photo) in last, last
    assert "cannot identify image" in last and "fix or remove the photo" in last
    assert not (tmp_path / "copy.partial").exists()
    assert data_identity(compose(["data=prepared", f"data.root={copy}"]).data)["digest"] == second["digest"]
    assert len(splits_of(copy).train) == 28


def test_bad_input_is_one_line_and_exit_2_before_any_work(photos, copies, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases = {
        "not a folder": (["data", "prepare", str(tmp_path / "nope"), str(tmp_path / "o1")], "is not a directory"),
        "no class folders": (["data", "prepare", str(tmp_path / "flat"), str(tmp_path / "o2")], "one sub-folder"),
        "out-dir not empty": (["data", "prepare", str(photos), str(tmp_path / "busy")], "overwrite=true"),
        "overwrite of a folder that is no copy": (
            ["data", "prepare", str(photos), str(tmp_path / "busy"), "overwrite=true"], "is not a prepared copy"),
        "out-dir is a copy, no overwrite": (["data", "prepare", str(photos), str(copies["raw"])], "is not empty"),
        "bad format": (["data", "prepare", str(photos), str(tmp_path / "o3"), "format=png"], "format=png"),
        "bad size": (["data", "prepare", str(photos), str(tmp_path / "o4"), "size=big"], "size=big"),
        "bad key": (["data", "prepare", str(photos), str(tmp_path / "o5"), "sise=64"], "did you mean size"),
        "no action": (["data", "prepar"], "did you mean prepare"),
        "data=prepared on a plain folder": (
            ["train", *TINY, "data=prepared", f"data.root={photos}"], "is not a prepared copy"),
    }  # fmt: skip
    for name, (args, words) in cases.items():
        proc = in_process(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], (name, proc.stderr[-2000:])
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4", "o5"))
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]  # nothing of the user's touched
    assert (copies["raw"] / MANIFEST).is_file()


def test_without_litdata_the_error_names_the_extra(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litdata", None)  # what `import litdata` meets where it is not installed
    for args in (["data", "prepare", str(photos), str(tmp_path / "out")],
                 ["train", *TINY, "data=prepared", f"data.root={tmp_path}"]):  # fmt: skip
        proc = in_process(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "pip install 'kdcl[stream]'" in lines[0], proc.stderr
