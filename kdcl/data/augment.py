"""Today's training augmentation (`augment=rrc|randaug`, mixup and cutmix), built by timm.

Per image, on the loader's CPU workers: timm's own ImageNet training transform
(`timm.data.create_transform`: RandomResizedCrop, flips, RandAugment/AutoAugment/AugMix, colour jitter),
ending in a uint8 tensor — kdcl's models normalise their own input (kdcl/models/input_norm.py) — then
random erasing. Per batch, on the training device: timm's `Mixup` (mixup and cutmix), after the batch is
scaled to [0, 1]; the teachers are given the same mixed images as the student (consistent teaching).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass(frozen=True)
class Augmentation:
    """What `augment` asks for, read once from the config (None or a `preset` node: nothing of it)."""

    per_image: bool  # timm's training transform on every training image
    mixing: bool  # mixup and/or cutmix on every training batch
    describe: str  # for messages: augment=rrc, augment.mixup_alpha=0.2, ...
    unreplayable: str = ""  # what stored views cannot replay (timm's policies, colour jitter, ...), for messages

    @classmethod
    def of(cls, aug: DictConfig | None) -> Augmentation:
        if aug is None:
            return cls(False, False, "")
        per_image = str(aug.get("crop", "none")) == "rrc"
        mixing = float(aug.get("mixup_alpha", 0) or 0) > 0 or float(aug.get("cutmix_alpha", 0) or 0) > 0
        crop = f"augment={aug.get('name')}" if aug.get("name") in ("rrc", "randaug") else "augment.crop=rrc"
        parts = [crop] if per_image else []
        parts += [f"augment.{k}={aug.get(k)}" for k in ("mixup_alpha", "cutmix_alpha") if float(aug.get(k) or 0) > 0]
        return cls(per_image, mixing, ", ".join(parts), unreplayable(aug) if per_image else "")

    @property
    def active(self) -> bool:
        return self.per_image or self.mixing


def unreplayable(aug: DictConfig) -> str:
    """The parts of timm's transform that draw pixels rather than a few numbers (stored views replay crops,
    flips, mixup and cutmix: kdcl/data/replay.py), as the settings that ask for them; "" when none."""
    parts = [f"augment.{k}={aug.get(k)}" for k in ("auto_augment", "color_jitter") if aug.get(k)]
    parts += ["augment.re_prob=" + str(aug.re_prob)] if float(aug.get("re_prob") or 0) > 0 else []
    parts += ["augment.interpolation=random"] if str(aug.get("interpolation")) == "random" else []
    return ", ".join(parts)


def timm_train_transform(aug: DictConfig, image_size: int, mean: tuple[float, ...]):
    """timm's training transform for `image_size`, ending in a uint8 C×H×W tensor (no normalisation), then
    torchvision's random erasing with the data's mean colour (timm's mode='const'): timm erases only
    normalised tensors, and kdcl normalises inside each model."""
    from timm.data import create_transform
    from torchvision.transforms import v2

    steps = [
        create_transform(
            input_size=image_size,
            is_training=True,
            scale=tuple(aug.scale),
            ratio=tuple(aug.ratio),
            hflip=float(aug.hflip),
            color_jitter=aug.color_jitter if aug.color_jitter else None,
            auto_augment=aug.auto_augment or None,
            interpolation=str(aug.interpolation),
            mean=tuple(mean),  # the policies' fill colour (one value per channel: grey images too)
            normalize=False,
        )
    ]
    if float(aug.re_prob) > 0:
        steps.append(v2.RandomErasing(p=float(aug.re_prob), value=[round(255 * m) for m in mean]))
    keep_a_posterize_bit(steps[0])
    return v2.Compose(steps)


def keep_a_posterize_bit(transform) -> None:
    """Every posterize op of the timm policies in `transform` keeps at least 1 bit (posterize_at_least_one_bit)."""
    for op in policy_ops(transform):
        if "Posterize" in op.name:
            op.aug_fn = posterize_at_least_one_bit


def policy_ops(transform) -> list:
    """The AugmentOps of timm's policies (RandAugment, AutoAugment, AugMix) inside a transform."""
    if hasattr(transform, "aug_fn"):
        return [transform]
    found = []
    for attr in ("transforms", "ops", "policy"):
        for part in getattr(transform, attr, None) or []:
            found += (
                policy_ops(part) if not isinstance(part, (list, tuple)) else [o for p in part for o in policy_ops(p)]
            )
    return found


def posterize_at_least_one_bit(img, bits_to_keep, **kwargs):
    """timm's posterize with at least 1 bit kept. Written by hand: timm 1.0.x asks for 0 bits at the top
    magnitude (RandAugment's inc1 posterize, m ≥ 10 with noise), which Pillow 13 refuses with a ValueError
    mid-epoch; 1 bit, two levels per channel, is the coarsest posterize Pillow allows."""
    from timm.data.auto_augment import posterize

    return posterize(img, max(1, int(bits_to_keep)), **kwargs)


class TensorToPIL:
    """uint8 C×H×W tensor → PIL image (timm's transforms, RandAugment's above all, work on PIL images)."""

    def __call__(self, x: Any):
        if not isinstance(x, torch.Tensor):
            return x  # already a PIL image (a folder's original)
        from torchvision.transforms.v2.functional import to_pil_image

        return to_pil_image(x)


def per_image_transform(aug: DictConfig, image_size: int, mean: tuple[float, ...]):
    from torchvision.transforms import v2

    return v2.Compose([TensorToPIL(), timm_train_transform(aug, image_size, tuple(mean))])


class BatchMixer:
    """timm's Mixup (mixup and cutmix, one λ per batch) on a training batch of images in [0, 1]: returns the
    mixed images and their class probabilities. timm mixes a batch with its own reverse and needs an even
    size; an odd last example (a curriculum's batch) is left unmixed, written here because timm refuses it."""

    def __init__(self, aug: DictConfig, num_classes: int):
        from timm.data import Mixup

        self.num_classes = num_classes
        self.mixup = Mixup(mixup_alpha=float(aug.mixup_alpha), cutmix_alpha=float(aug.cutmix_alpha),
                           prob=float(aug.mix_prob), switch_prob=float(aug.switch_prob), mode="batch",
                           label_smoothing=0.0, num_classes=num_classes)  # fmt: skip

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = len(x) - len(x) % 2
        if even < 2:
            return x, torch.nn.functional.one_hot(y, self.num_classes).float()
        mixed, target = self.mixup(x[:even], y[:even])
        if even == len(x):
            return mixed, target
        rest = torch.nn.functional.one_hot(y[even:], self.num_classes).to(target.dtype)
        return torch.cat([mixed, x[even:]]), torch.cat([target, rest])
