"""Stored teacher outputs: when storing is allowed, filling as examples are met, and never a stale store."""

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset, TensorDataset

from kdcl.common.errors import KdclError
from kdcl.config.schema import data_identity
from kdcl.data.datamodule import source_indices
from kdcl.models.predictions import dataset_logits
from kdcl.run.plan import choose_mode
from kdcl.teachers.outputs import CACHE_FILE, TeacherOutputs


class FakeDataModule:
    """The two things TeacherOutputs asks of kdcl's datamodule: the source's statistics and normalize."""

    class Source:
        mean, std = (0.5,), (0.25,)

    def load(self):
        return self.Source()

    @staticmethod
    def normalize(x):
        return (x.float() / 255 - 0.5) / 0.25


CFG = OmegaConf.create({"seed": 0, "trainer": {"precision": "32-true"},
                       "data": {"name": "digits", "image_size": 32, "fraction": 1.0, "augment": False,
                                "val_fraction": 0.1, "test_fraction": 0.2, "eval_batch_size": 7}})  # fmt: skip
DATA = data_identity(CFG.data)  # what kdcl/run/stage.py hands the store


@pytest.fixture
def setup():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8)
    data = Subset(TensorDataset(images, torch.arange(20) % 3), list(range(2, 18)))
    teacher = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    return data, teacher


def teacher_on(teacher, data, rows) -> torch.Tensor:
    x = torch.stack([data[int(i)][0] for i in rows])
    with torch.no_grad():
        return teacher(FakeDataModule.normalize(x))


def test_choose_mode():
    def mode(*args, **kwargs) -> str:
        return choose_mode(*args, **kwargs)[0]

    assert mode("auto", augment=False, feature_terms=[], epochs=2, views=8) == "cached"
    # a stored logit fits one view only; views pay off when the stage has more epochs than views
    assert mode("auto", augment=True, feature_terms=[], epochs=10, views=8) == "views"
    assert mode("auto", augment=True, feature_terms=[], epochs=2, views=8) == "online"
    assert mode("auto", augment=True, feature_terms=[], epochs=8, views=8) == "online"
    # a given teacher's views are kept in the shared cache for every job that has it: worth a pass
    assert mode("auto", augment=True, feature_terms=[], epochs=2, views=8, given=True) == "views"
    assert mode("auto", augment=True, feature_terms=["at"], epochs=10, views=8) == "online"
    assert mode("views", augment=True, feature_terms=[], epochs=2, views=8) == "views"
    assert mode("auto", augment=False, feature_terms=["at"], epochs=2, views=8) == "online"
    assert mode("online", augment=False, feature_terms=[], epochs=2, views=8) == "online"
    assert "8 teacher passes, not 10" in choose_mode("auto", augment=True, feature_terms=[], epochs=10, views=8)[1]
    with pytest.raises(KdclError, match="new random view"):
        choose_mode("cached", augment=True, feature_terms=[], epochs=2, views=8)
    with pytest.raises(KdclError, match="feature terms at"):
        choose_mode("cached", augment=False, feature_terms=["at"], epochs=2, views=8)
    with pytest.raises(KdclError, match="did you mean cached"):
        choose_mode("cache", augment=False, feature_terms=[], epochs=2, views=8)
    with pytest.raises(KdclError, match="views: the feature terms fitnet"):
        choose_mode("views", augment=True, feature_terms=["fitnet"], epochs=2, views=8)
    with pytest.raises(KdclError, match="training has no augmentation"):
        choose_mode("views", augment=False, feature_terms=[], epochs=2, views=8)


def test_a_pass_matches_the_teacher_and_leaves_the_random_state_alone(setup):
    data, teacher = setup
    state = torch.get_rng_state()
    logits = dataset_logits(teacher, data, FakeDataModule.normalize, batch_size=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert not logits.is_inference() and logits.shape == (16, 3)
    assert torch.allclose(logits, teacher_on(teacher, data, range(16)), atol=1e-5)
    assert source_indices(data) == list(range(2, 18))


def test_batches_store_what_is_missing_and_then_only_read(setup):
    data, teacher = setup
    outputs, asked = TeacherOutputs(len(data)), []

    def run_teachers(positions):
        def run(rows):
            asked.append(positions[rows].tolist())
            return [teacher_on(teacher, data, positions[rows])]

        return run

    first = torch.tensor([3, 0, 7])
    got = outputs.read(first, run_teachers(first))
    assert asked == [[3, 0, 7]] and torch.allclose(got[0], teacher_on(teacher, data, first), atol=1e-5)
    second = torch.tensor([7, 1, 3, 2])  # 7 and 3 are stored: the teacher runs on 1 and 2 only
    got = outputs.read(second, run_teachers(second))
    assert asked[1] == [1, 2] and torch.allclose(got[0], teacher_on(teacher, data, second), atol=1e-5)
    assert not outputs.complete and outputs.filled.sum() == 5
    rest = torch.arange(16)
    outputs.read(rest, run_teachers(rest))
    assert outputs.complete and len(asked[2]) == 11
    outputs.read(rest.flip(0), run_teachers(rest))
    assert len(asked) == 3  # every example stored: the teacher does not run again


def test_a_store_is_reopened_only_while_teacher_and_examples_are_the_same(setup, tmp_path):
    data, teacher = setup
    dm = FakeDataModule()
    outputs = TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student")
    rows = torch.tensor([4, 5, 6])
    outputs.read(rows, lambda r: [teacher_on(teacher, data, rows[r])])
    outputs.save()  # an epoch ends, the run is killed: the next attempt goes on from here
    again = TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student")
    assert again.filled.nonzero().squeeze(1).tolist() == [4, 5, 6]
    assert torch.equal(again.logits[:, rows], outputs.logits[:, rows])

    again.fill([teacher], data, dm.normalize, 7, "student")  # a curriculum's scoring pass: the rest
    assert again.complete and torch.allclose(again.logits[0], teacher_on(teacher, data, range(16)), atol=1e-5)
    stamp = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    full = TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student")
    full.fill([teacher], data, dm.normalize, 7, "student")
    assert full.complete and (tmp_path / CACHE_FILE).stat().st_mtime_ns == stamp  # read back, not recomputed

    bias = teacher.get_classifier().bias
    kept = bias.detach().clone()
    with torch.no_grad():
        bias.add_(1.0)  # another teacher: what is stored is stale
    assert not TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student").filled.any()
    with torch.no_grad():
        bias.copy_(kept)
    assert TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student").complete
    other = Subset(data.dataset, list(range(0, 16)))  # other examples (same count): stale too
    assert not TeacherOutputs.open([teacher], other, dm, CFG, DATA, tmp_path, "student").filled.any()
    bf16 = OmegaConf.merge(CFG, {"trainer": {"precision": "bf16-mixed"}})  # other precision: other logits
    assert not TeacherOutputs.open([teacher], data, dm, bf16, DATA, tmp_path, "student").filled.any()
    (tmp_path / CACHE_FILE).write_bytes(b"not a checkpoint")  # a damaged store is started again, not trusted
    assert not TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student").filled.any()
    torch.save({"key": again.key, "logits": again.logits}, tmp_path / CACHE_FILE)  # an older format: no 'filled'
    assert not TeacherOutputs.open([teacher], data, dm, CFG, DATA, tmp_path, "student").filled.any()


def test_stored_logits_keep_the_teachers_dtype():
    outputs = TeacherOutputs(4)
    online = torch.randn(2, 3).bfloat16()
    got = outputs.read(torch.tensor([1, 2]), lambda rows: [online])
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], online)  # bf16-mixed: exactly the online logits


def test_a_complete_store_is_shared_with_later_jobs_through_the_cache(setup, tmp_path):
    data, teacher = setup
    dm = FakeDataModule()
    cfg = OmegaConf.merge(CFG, {"paths": {"cache_dir": str(tmp_path / "cache")}})
    first = TeacherOutputs.open([teacher], data, dm, cfg, DATA, tmp_path / "job0/stages/01-student", "student")
    first.fill([teacher], data, dm.normalize, 7, "student")  # complete: saved and published
    shared = list((tmp_path / "cache").glob("logits-*.pt"))
    assert len(shared) == 1 and (tmp_path / "job0/stages/01-student" / CACHE_FILE).is_file()
    second = TeacherOutputs.open([teacher], data, dm, cfg, DATA, tmp_path / "job1/stages/01-student", "student")
    assert second.complete and torch.equal(second.logits, first.logits)  # another job: nothing to compute
    second.save()  # its own stage directory gets a copy (a resume reads it there); the shared one is unchanged
    assert (tmp_path / "job1/stages/01-student" / CACHE_FILE).is_file() and shared[0].is_file()
    other = OmegaConf.merge(cfg, {"seed": 1})  # other settings: not this store
    assert not TeacherOutputs.open([teacher], data, dm, other, DATA, tmp_path / "job2", "student").filled.any()
