"""The data part of every shared-cache key is declared once, in the schema (`DataConfig`, read by
`data_identity`): every data key changes each key — stored teacher logits, stored teacher views, a given
model's test — except the few declared `unseen`, which leave every key as it was. The schema's fields are
iterated, so a data key added later is covered without touching this file."""

from __future__ import annotations

import typing
from dataclasses import fields
from enum import Enum
from typing import Any

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset, TensorDataset

from kdcl.config.schema import DataConfig, data_identity
from kdcl.run.stage import given_model_key
from kdcl.teachers.outputs import cache_key
from kdcl.teachers.views import ViewSpec, views_key

HINTS = typing.get_type_hints(DataConfig)
SEEN = [f.name for f in fields(DataConfig) if not f.metadata.get("unseen")]
UNSEEN = [f.name for f in fields(DataConfig) if f.metadata.get("unseen")]
TRAINING_ONLY = [f.name for f in fields(DataConfig) if f.metadata.get("training_only")]
SPEC = ViewSpec(k=2, seed=0, pad=4, hflip=False, topk=None, bf16=False, plain=False)


def other_value(name: str, value: Any) -> Any:
    """A value of data key `name`'s type (its schema annotation) other than `value`."""
    kind = next((t for t in typing.get_args(HINTS[name]) if t is not type(None)), HINTS[name])
    if kind is Any:
        return "other"
    if issubclass(kind, Enum):
        return next(member for member in kind if member != value)
    if kind is bool:
        return not value
    if kind in (int, float):
        return (value or 0) + (1 if kind is int else 0.25)
    return f"{value}-other"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Each of the three keys as a function of the data config, over one real teacher, examples and checkpoint."""
    teacher = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    examples = Subset(TensorDataset(torch.zeros(12, 1, 8, 8, dtype=torch.uint8), torch.zeros(12)), list(range(2, 10)))
    checkpoint = tmp_path_factory.mktemp("given") / "best.ckpt"
    checkpoint.write_bytes(b"a given teacher's weights")
    rest = {"seed": 0, "trainer": {"precision": "32-true", "limit_test_batches": None}}

    def all_three(data) -> dict[str, str]:
        cfg = OmegaConf.merge(rest, {"data": data})
        identity = data_identity(cfg.data)  # what kdcl/run/stage.py hands the teachers' stores
        return {
            "logits": cache_key([teacher], examples, identity, cfg, (0.5,), (0.25,)),
            "views": views_key(teacher, examples, identity, (0.5,), (0.25,), SPEC)[0],
            "given model": given_model_key(cfg, "test of teacher", checkpoint, None, {"name": "test_resnet"})[0],
        }

    return all_three


@pytest.fixture
def base():
    """A typed data config as Hydra composes it (the schema's types check every value set below)."""
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "digits", "root": None})


def test_the_unseen_keys_are_the_declared_few():
    # marking a key unseen (or training-only) is the one way to a stale cache hit: a deliberate change, in two places
    assert sorted(UNSEEN) == sorted(["download", "batch_size", "num_workers", "on_device", "views", "epochs"])
    assert sorted(TRAINING_ONLY) == sorted(["val_fraction", "fraction", "split_seed", "augment", "hflip",
                                            "label_noise", "label_noise_kind", "label_noise_seed"])  # fmt: skip


@pytest.mark.parametrize("name", SEEN)
def test_every_seen_data_key_changes_every_cache_key(name, keys, base):
    before = keys(base)
    base[name] = other_value(name, base[name])
    after = keys(base)
    stale = [k for k in before if before[k] == after[k]]
    if name in TRAINING_ONLY:  # a given model's test reads no training example: one test serves them all
        assert stale == ["given model"], f"data.{name}: {stale}"
    else:
        assert not stale, f"data.{name} leaves the {stale} keys stale"


@pytest.mark.parametrize("name", UNSEEN)
def test_an_unseen_data_key_leaves_every_cache_key_alone(name, keys, base):
    before = keys(base)
    base[name] = other_value(name, base[name])
    assert keys(base) == before  # one store serves every job that differs only here


def test_a_key_the_config_lacks_counts_as_its_default(keys, base):
    partial = {"name": "digits", "root": None}  # a config saved before a key existed
    assert keys(OmegaConf.create(partial)) == keys(base)
