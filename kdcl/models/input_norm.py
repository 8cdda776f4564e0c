"""Each model normalises its own input.

Loaders hand out images scaled to [0, 1]. A model built by kdcl carries the mean and std it expects and
applies them itself, in a forward pre-hook: a pretrained teacher sees the statistics it was trained with
(timm's `pretrained_cfg`) while a student trained from scratch sees the data's, from the same batch, and
a mixed (mixup/cutmix) batch is mixed once for every model. A hook rather than a wrapper module, so the
model's state dict, kdcl checkpoints and exported weights keep timm's own keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

NORM_ATTR = "kdcl_input_norm"  # the InputNorm a model carries (a plain attribute: not in its state dict)


@dataclass(frozen=True)
class InputNorm:
    """Per-channel mean and std in [0, 1] units, and where they come from: `data` (the training images'
    statistics) or `pretrained` (the weights' own, from timm's pretrained_cfg)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "data"

    def for_channels(self, in_chans: int) -> InputNorm:
        """The statistics for `in_chans` channels. A grey image fed to RGB-pretrained weights (timm sums the
        first conv over colour) gets the channel average: the closest single mean and std."""
        if len(self.mean) == in_chans:
            return self
        if in_chans == 1:
            return InputNorm((sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),), self.source)
        mean, std = (tuple(v[i % len(v)] for i in range(in_chans)) for v in (self.mean, self.std))
        return InputNorm(mean, std, self.source)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the model's input."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> InputNorm:
        return cls(tuple(data["mean"]), tuple(data["std"]), str(data.get("source", "data")))


@dataclass(frozen=True)
class ModelInput:
    """What a model is built for: the data's classes, channels and image side, and the data's normalisation
    (the one a model without pretrained statistics uses)."""

    num_classes: int
    in_chans: int
    image_size: int
    data_norm: InputNorm

    @classmethod
    def of(cls, splits, image_size: int) -> ModelInput:
        """For a loaded dataset (kdcl.data.registry.ImageSplits: num_classes, in_chans, mean, std)."""
        norm = InputNorm(tuple(splits.mean), tuple(splits.std))
        return cls(int(splits.num_classes), int(splits.in_chans), int(image_size), norm)


def pretrained_norm(model: nn.Module, in_chans: int) -> InputNorm:
    """The mean and std the model's pretrained weights expect (timm's pretrained_cfg; ImageNet's when the
    config names none)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean") or IMAGENET_DEFAULT_MEAN, cfg.get("std") or IMAGENET_DEFAULT_STD
    return InputNorm(tuple(float(v) for v in mean), tuple(float(v) for v in std), "pretrained").for_channels(in_chans)


def normalise_input(model: nn.Module, args: tuple) -> tuple:
    x, *rest = args
    return (getattr(model, NORM_ATTR).apply(x), *rest)


def remove_hook(model: nn.Module) -> None:
    """Found by function rather than by a kept handle: a deep copy of the model carries the hook too."""
    for key in [k for k, fn in model._forward_pre_hooks.items() if fn is normalise_input]:
        del model._forward_pre_hooks[key]


def attach_input_norm(model: nn.Module, norm: InputNorm) -> nn.Module:
    """From now on `model` takes images in [0, 1] and normalises them with `norm` itself."""
    remove_hook(model)
    setattr(model, NORM_ATTR, norm)
    model.register_forward_pre_hook(normalise_input)
    return model


def input_norm_of(model: nn.Module) -> InputNorm | None:
    """The normalisation a kdcl-built model applies (None: the model takes normalised input)."""
    return getattr(model, NORM_ATTR, None)


@contextmanager
def normalised_input(model: nn.Module) -> Iterator[InputNorm | None]:
    """Within the block the model takes already-normalised input, as timm and an exported graph do (its
    normalisation is yielded, for the caller to apply); afterwards it normalises again."""
    norm = input_norm_of(model)
    remove_hook(model)
    try:
        yield norm
    finally:
        if norm is not None:
            attach_input_norm(model, norm)
