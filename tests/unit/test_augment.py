"""timm's augmentation as kdcl applies it: per image (uint8 in, uint8 out, no normalisation) and per batch
(mixup/cutmix with class probabilities), and cross-entropy on those probabilities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

from kdcl.config.schema import AugmentConfig
from kdcl.data.augment import Augmentation, BatchMixer, per_image_transform
from kdcl.losses.terms import TermInputs, ce
from kdcl.run.plan import choose_mode


def augment(**kw):
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"name": "rrc", "crop": "rrc", **kw})


def test_the_whole_image_crop_is_timms_resize_in_uint8_without_normalisation():
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = per_image_transform(augment(scale=[1.0, 1.0], ratio=[0.75, 0.75], hflip=0.0), 24, (0.5, 0.5, 0.5))
    out = whole(image)
    expected = pil_to_tensor(to_pil_image(image).resize((24, 24), Image.BILINEAR))
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    flipped = per_image_transform(augment(scale=[1.0, 1.0], ratio=[0.75, 0.75], hflip=1.0), 24, (0.5, 0.5, 0.5))
    assert torch.equal(flipped(image), expected.flip(-1))


def test_random_crops_differ_per_call_and_grey_images_take_randaugment():
    torch.manual_seed(0)
    grey = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    randaug = per_image_transform(augment(auto_augment="rand-m9-mstd0.5-inc1"), 16, (0.3,))
    outs = [randaug(grey) for _ in range(4)]
    assert all(o.shape == (1, 16, 16) and o.dtype == torch.uint8 for o in outs)
    assert len({tuple(o.flatten().tolist()) for o in outs}) > 1


def test_random_erasing_fills_with_the_data_mean_colour():
    torch.manual_seed(0)
    black = torch.zeros(3, 32, 32, dtype=torch.uint8)
    erase = per_image_transform(augment(scale=[1.0, 1.0], ratio=[1.0, 1.0], re_prob=1.0), 32, (0.2, 0.4, 0.6))
    out = erase(black)
    erased = (out != 0).any(0)
    assert erased.sum() >= 0.02 * 32 * 32  # at least timm's smallest erased area
    assert out[:, erased].unique(dim=1).tolist() == [[51], [102], [153]]


def test_mixup_mixes_each_image_with_the_reversed_batch_and_its_labels_alike():
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    mixer = BatchMixer(augment(mixup_alpha=1.0), num_classes=6)
    mixed, target = mixer(x.clone(), y)
    lam = float(target[0, 0])
    assert 0 < lam < 1 and torch.allclose(target.sum(1), torch.ones(6))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(target, lam * F.one_hot(y, 6) + (1 - lam) * F.one_hot(y.flip(0), 6))


def test_an_odd_batch_leaves_its_last_example_unmixed():
    torch.manual_seed(1)
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 4])
    mixed, target = BatchMixer(augment(cutmix_alpha=1.0), num_classes=5)(x.clone(), y)
    assert torch.equal(mixed[4], x[4]) and torch.equal(target[4], F.one_hot(y[4], 5).float())
    assert not torch.equal(mixed[:4], x[:4])  # cutmix pasted boxes into the even part


def test_cross_entropy_on_class_probabilities_is_the_expected_log_loss():
    logits, probs = torch.randn(4, 3, requires_grad=True), torch.softmax(torch.randn(4, 3), 1)
    loss = ce(TermInputs(logits, [], probs.argmax(1), soft_target=probs))
    hand = -(probs * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(loss, hand)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(grad, (torch.softmax(logits, 1) - probs) / 4, atol=1e-6)


@pytest.mark.parametrize("mode", ["cached", "views"])
def test_stored_outputs_refuse_timms_pixel_policies_and_auto_runs_online(mode):
    randaug = Augmentation.of(augment(auto_augment="rand-m9-mstd0.5-inc1", mixup_alpha=0.2, re_prob=0.25))
    assert randaug.describe == "augment=rrc, augment.mixup_alpha=0.2"
    what = randaug.unreplayable
    assert what == "augment.auto_augment=rand-m9-mstd0.5-inc1, augment.re_prob=0.25"
    chosen, why = choose_mode("auto", True, [], epochs=20, views=8, given=True, unreplayable=what)
    assert chosen == "online" and what in why
    with pytest.raises(Exception, match=f"distill.teacher_outputs={mode} cannot replay augment.auto_augment=rand"):
        choose_mode(mode, True, [], epochs=20, views=8, unreplayable=what)
    # crops, flips, mixup and cutmix are replayable; mixing alone (augment=none) is augmentation too
    assert Augmentation.of(augment(mixup_alpha=0.2, cutmix_alpha=1.0)).unreplayable == ""
    mixing_only = Augmentation.of(OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"mixup_alpha": 0.2}))
    assert mixing_only.active and not mixing_only.per_image and mixing_only.unreplayable == ""
    assert Augmentation.of(OmegaConf.structured(AugmentConfig)).active is False  # augment=preset: none of it


def test_randaugment_at_the_top_magnitude_runs_with_this_pillow():
    """timm asks Pillow to keep 0 bits when posterizing at magnitude 10; Pillow 13 refuses that mid-epoch."""
    import random

    random.seed(0)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    top = per_image_transform(augment(scale=[1.0, 1.0], ratio=[1.0, 1.0], auto_augment="rand-n3-m10-mstd0-inc1"), 8,
                              (0.5, 0.5, 0.5))  # fmt: skip
    outs = [top(image) for _ in range(100)]  # 300 ops drawn from 15: posterize among them about 20 times
    assert all(o.shape == (3, 8, 8) and o.dtype == torch.uint8 for o in outs)
