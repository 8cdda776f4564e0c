"""Stored teacher views: a stored logit is the teacher's logit of the replayed pixels (exact by
construction), replay is a pure function of seed and epoch (resumable), the key changes with every
setting that changes the views, and the shared cache builds an entry once under concurrent jobs."""

import threading
import time

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset, get_worker_info

from kdcl.common.cache import load_or_build, read_entry
from kdcl.config.schema import data_identity
from kdcl.teachers.views import (
    TeacherViews,
    TeacherViewStore,
    ViewSpec,
    compress,
    draw_views,
    expand,
    rebuild,
    view_pass,
    views_key,
)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.25


SPEC = ViewSpec(k=3, seed=5, pad=4, hflip=True, topk=None, bf16=False, plain=True)


def teacher_logits(teacher, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher(normalize(x))


def test_stored_views_are_the_teachers_logits_of_the_replayed_pixels():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(40) % 4)
    teacher = timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()
    params = draw_views(40, SPEC)
    assert torch.equal(params, draw_views(40, SPEC))  # seeded: the same views every time
    assert len({tuple(p.tolist()) for p in params.flatten(0, 1)}) > 60  # and they differ: crops, flips
    stored = view_pass(teacher, data, params, normalize, 16, SPEC)
    assert stored["logits"].shape == (40, 3, 4) and stored["plain"].shape == (40, 4)
    # the same batch (examples 16..31 at view 2), rebuilt from the stored parameters: bit-equal
    again = teacher_logits(teacher, rebuild(images[16:32], params[16:32, 2], SPEC.pad))
    assert torch.equal(again, stored["logits"][16:32, 2])
    assert torch.equal(teacher_logits(teacher, images[:16]), stored["plain"][:16])
    # a sample of (example, view) pairs in another batch composition: equal up to rounding
    pick, view = torch.tensor([3, 39, 17, 8, 25]), torch.tensor([0, 2, 1, 1, 0])
    sample = teacher_logits(teacher, rebuild(images[pick], params[pick, view], SPEC.pad))
    assert torch.allclose(sample, stored["logits"][pick, view], atol=1e-5, rtol=0)

    # replay during training: the view of each batch example this epoch, and the logits of exactly it
    views = TeacherViews([TeacherViewStore(None, stored, 4)], SPEC)
    positions = torch.tensor([5, 0, 33, 12])
    x, rows = views.replay(images[positions], positions, epoch=1)
    drawn = views.choice(1)[positions]
    assert torch.equal(rows, positions * 3 + drawn)
    assert torch.equal(x, rebuild(images[positions], params[positions, drawn], SPEC.pad))
    assert torch.equal(views.read(rows)[0], stored["logits"][positions, drawn])
    # resumable: a new process (a resumed stage) draws the same views for an epoch; epochs differ
    fresh = TeacherViews([TeacherViewStore(None, stored, 4)], SPEC)
    assert torch.equal(fresh.choice(1), views.choice(1)) and not torch.equal(fresh.choice(2), views.choice(1))
    # any K epochs in a row show each example every one of its K views once (no view wasted, none repeated)
    shown = torch.stack([fresh.choice(e) for e in range(4, 4 + SPEC.k)], 1).sort(1).values
    assert torch.equal(shown, torch.arange(SPEC.k).expand_as(shown))


class ReadInWorkers(TensorDataset):
    """A folder stand-in whose examples may be read only by a loader's worker processes (where a folder's
    decoding runs, overlapping the teacher)."""

    def __getitem__(self, i):
        assert get_worker_info() is not None, "read in the main process"
        return super().__getitem__(i)


def test_the_views_pass_reads_examples_in_the_loaders_workers_and_stores_the_same_logits():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 32, 32), dtype=torch.uint8)
    teacher = timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()
    params = draw_views(24, SPEC)
    alone = view_pass(teacher, TensorDataset(images, torch.arange(24) % 4), params, normalize, 8, SPEC)
    with pytest.raises(AssertionError, match="main process"):  # the stand-in refuses the main process
        view_pass(teacher, ReadInWorkers(images, torch.arange(24) % 4), params, normalize, 8, SPEC)
    in_workers = view_pass(teacher, ReadInWorkers(images, torch.arange(24) % 4), params, normalize, 8, SPEC, 2)
    assert torch.equal(in_workers["logits"], alone["logits"]) and torch.equal(in_workers["plain"], alone["plain"])


def test_top_k_store_keeps_the_top_probabilities_and_spreads_the_rest_evenly():
    torch.manual_seed(0)
    logits = torch.randn(6, 2, 20) * 3
    stored = compress(logits, 4)
    assert stored["values"].dtype == torch.float16 and stored["indices"].dtype == torch.int16
    flat = {k: v.flatten(0, 1) for k, v in stored.items()}
    full = expand(flat, torch.arange(12), 20).softmax(-1)
    teacher = logits.flatten(0, 1).softmax(-1)
    top = teacher.topk(4, -1)
    assert torch.allclose(full.gather(1, top.indices), top.values, atol=2e-3)  # fp16 values
    rest = full.scatter(1, top.indices, 0.0)
    expected = (1 - top.values.sum(-1, keepdim=True)) / 16
    assert torch.allclose(rest.sum(-1, keepdim=True), 16 * expected, atol=2e-3)
    others = rest[rest > 0].reshape(12, 16)
    assert torch.allclose(others, others[:, :1].expand(12, 16))  # spread evenly


def test_the_key_changes_with_every_setting_that_changes_the_views():
    cfg = OmegaConf.create({"data": {"name": "digits", "root": None, "image_size": 32}})
    data = TensorDataset(torch.zeros(10, 1, 32, 32, dtype=torch.uint8), torch.zeros(10))
    teacher = timm.create_model("test_resnet", num_classes=4, in_chans=1)

    def key(spec=SPEC, model=teacher, ds=data, size=32):
        cfg.data.image_size = size
        return views_key(model, ds, data_identity(cfg.data), (0.5,), (0.25,), spec)[0]

    base = key()
    assert key() == base
    changed = [key(spec=ViewSpec(**{**SPEC.__dict__, field: value}))
               for field, value in [("k", 4), ("seed", 6), ("pad", 2), ("hflip", False), ("topk", 2), ("plain", False)]]  # fmt: skip
    other = timm.create_model("test_resnet", num_classes=4, in_chans=1)
    changed += [key(model=other), key(ds=torch.utils.data.Subset(data, [0, 1])), key(size=28)]
    assert len({base, *changed}) == len(changed) + 1


def test_concurrent_jobs_build_a_shared_entry_once_and_a_damaged_one_is_rebuilt(tmp_path):
    path = tmp_path / "cache" / "views-x-0123.pt"
    builds, results = [], []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the second job to arrive while the first builds
        return {"logits": torch.arange(6.0)}

    def job(name):
        results.append(load_or_build(path, "key-1", {"kind": "views"}, build, name, "student"))

    jobs = [threading.Thread(target=job, args=(f"job{i}",)) for i in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    assert len(builds) == 1
    assert sorted(entry.built for _, entry in results) == [False, True]
    assert all(torch.equal(t["logits"], torch.arange(6.0)) for t, _ in results)
    assert {entry.built_by.split()[0] for _, entry in results} == {results[-1][1].built_by.split()[0]}
    assert read_entry(path, "key-2") is None  # another key under this name is never read
    path.write_bytes(b"half a file")  # damaged (not by kdcl: its writes are atomic): built again
    tensors, entry = load_or_build(path, "key-1", {}, build, "job3", "student")
    assert entry.built and len(builds) == 2 and torch.equal(tensors["logits"], torch.arange(6.0))
    assert not list(path.parent.glob("*.tmp"))
