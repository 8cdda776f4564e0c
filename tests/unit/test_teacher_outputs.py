"""Stored teacher outputs: when caching is allowed, and that a stale cache is never used."""

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset, TensorDataset

from kdcl.errors import KdclError
from kdcl.teacher_outputs import CACHE_FILE, cached_logits, choose_mode, source_indices, teacher_pass


class FakeDataModule:
    """The two things cached_logits asks of kdcl's datamodule: the source's statistics and normalize."""

    class Source:
        mean, std = (0.5,), (0.25,)

    def load(self):
        return self.Source()

    @staticmethod
    def normalize(x):
        return (x.float() / 255 - 0.5) / 0.25


CFG = OmegaConf.create({"seed": 0, "data": {"name": "digits", "image_size": 32, "fraction": 1.0, "augment": False,
                                             "val_fraction": 0.1, "test_fraction": 0.2, "eval_batch_size": 7}})  # fmt: skip


@pytest.fixture
def setup():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8)
    data = Subset(TensorDataset(images, torch.arange(20) % 3), list(range(2, 18)))
    teacher = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    return data, teacher


def test_choose_mode():
    assert choose_mode("auto", augment=False, feature_terms=[]) == "cached"
    assert choose_mode("auto", augment=True, feature_terms=[]) == "online"  # a stored logit fits one view only
    assert choose_mode("auto", augment=False, feature_terms=["at"]) == "online"
    assert choose_mode("online", augment=False, feature_terms=[]) == "online"
    with pytest.raises(KdclError, match="new random view"):
        choose_mode("cached", augment=True, feature_terms=[])
    with pytest.raises(KdclError, match="feature terms at"):
        choose_mode("cached", augment=False, feature_terms=["at"])
    with pytest.raises(KdclError, match="did you mean cached"):
        choose_mode("cache", augment=False, feature_terms=[])


def test_the_pass_matches_the_teacher_and_leaves_the_random_state_alone(setup):
    data, teacher = setup
    state = torch.get_rng_state()
    logits = teacher_pass([teacher, teacher], data, FakeDataModule.normalize, batch_size=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert logits.shape == (2, 16, 3)
    x = torch.stack([data[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.allclose(logits[0], teacher(FakeDataModule.normalize(x)), atol=1e-5)
    assert source_indices(data) == list(range(2, 18))


def test_a_cache_is_reused_only_while_teacher_and_examples_are_the_same(setup, tmp_path):
    data, teacher = setup
    first = cached_logits([teacher], data, FakeDataModule(), CFG, tmp_path, "student")
    stamp = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    again = cached_logits([teacher], data, FakeDataModule(), CFG, tmp_path, "student")
    assert torch.equal(first, again) and (tmp_path / CACHE_FILE).stat().st_mtime_ns == stamp  # read back

    with torch.no_grad():
        teacher.get_classifier().bias.add_(1.0)  # another teacher: the stored logits are stale
    changed = cached_logits([teacher], data, FakeDataModule(), CFG, tmp_path, "student")
    assert torch.allclose(changed, first + 1.0, atol=1e-5)

    other = Subset(data.dataset, list(range(0, 16)))  # other examples (same count): stale too
    moved = cached_logits([teacher], other, FakeDataModule(), CFG, tmp_path, "student")
    assert not torch.equal(moved, changed)

    (tmp_path / CACHE_FILE).write_bytes(b"not a checkpoint")  # a damaged cache is recomputed, not trusted
    assert torch.equal(cached_logits([teacher], other, FakeDataModule(), CFG, tmp_path, "student"), moved)
