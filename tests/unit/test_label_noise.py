"""data.label_noise: exactly round(R·N) training labels flipped, the same ones for the same seed, never a
validation or test label; the curriculum's noisy-share scalar against a hand count."""

from __future__ import annotations

import pytest
import torch

from kdcl.curriculum.callback import noisy_share
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import dataset_labels, noisy_mask, source_indices
from kdcl.data.label_noise import flip_labels
from tests.unit.test_data import data_cfg


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.37, 1.0])
@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_exactly_round_r_n_labels_flip_only_among_the_given_positions(rate, kind):
    labels = torch.arange(1000) % 10
    positions = list(range(0, 1000, 3))  # 334 training examples among 1000
    noisy = flip_labels(labels, positions, rate, kind, 10, seed=0)
    changed = (noisy.labels != labels).nonzero().flatten()
    assert len(changed) == round(rate * len(positions)) == len(noisy.flipped)
    assert set(changed.tolist()) <= set(positions)
    if kind == "pair":
        assert torch.equal(noisy.labels[changed], (labels[changed] + 1) % 10)
    else:
        assert not (noisy.labels[changed] == labels[changed]).any()  # always to another class
        if rate >= 0.37:  # symmetric: every other class receives flips
            assert set(((noisy.labels[changed] - labels[changed]) % 10).tolist()) == set(range(1, 10))


def test_the_same_seed_flips_the_same_labels_another_seed_others():
    labels = torch.arange(500) % 7
    positions = list(range(100, 500))
    a, b = (flip_labels(labels, positions, 0.3, "symmetric", 7, seed=0) for _ in range(2))
    c = flip_labels(labels, positions, 0.3, "symmetric", 7, seed=1)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.flipped, c.flipped)


def test_the_datamodule_flips_training_labels_only_and_records_them():
    dm = KdclDataModule(data_cfg("digits", label_noise=0.3), seed=0)
    dm.setup()
    clean_dm = KdclDataModule(data_cfg("digits"), seed=0)
    clean_dm.setup()
    train_noisy, train_clean = dataset_labels(dm.train_set), dataset_labels(clean_dm.train_set)
    n = len(train_clean)
    assert int((train_noisy != train_clean).sum()) == round(0.3 * n)
    assert int(noisy_mask(dm.train_set).sum()) == round(0.3 * n) and noisy_mask(clean_dm.train_set) is None
    # validation and test read the clean labels, example by example
    assert torch.equal(dataset_labels(dm.val_set), dataset_labels(clean_dm.val_set))
    assert torch.equal(dataset_labels(dm.test_set), dataset_labels(clean_dm.test_set))
    assert torch.equal(torch.tensor([int(dm.val_set[i][1]) for i in range(20)]), dataset_labels(clean_dm.val_set)[:20])
    record = dm.noise_record()
    assert record["flipped"] == round(0.3 * n) and record["training_examples"] == n
    assert set(record["flipped_source_indices"]) <= set(source_indices(dm.train_set))
    # the loaders serve the noisy labels: the in-memory path and the per-example path agree
    assert torch.equal(torch.tensor([int(dm.train_set[i][1]) for i in range(n)]), train_noisy)
    again = KdclDataModule(data_cfg("digits", label_noise=0.3), seed=0)
    again.setup()
    assert again.noise_record() == record


def test_noisy_share_equals_a_hand_count():
    # 10 examples, 3 of them noisy (positions 1, 4, 9); the order admits 6, 2, 4, 1, 0, ...
    noisy = torch.zeros(10, dtype=torch.bool)
    noisy[[1, 4, 9]] = True
    order = torch.tensor([6, 2, 4, 1, 0, 3, 5, 7, 8, 9])
    assert noisy_share(order, 2, noisy) == 0.0
    assert noisy_share(order, 4, noisy) == pytest.approx(2 / 4)
    assert noisy_share(order, 7, noisy) == pytest.approx(2 / 7)
    assert noisy_share(order, 10, noisy) == pytest.approx(3 / 10)
    assert noisy_share(order, 3, noisy) == pytest.approx(1 / 3)
