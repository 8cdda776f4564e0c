"""Stored views of today's augmentation (kdcl/data/replay.py): timm's RandomResizedCrop and flip of a folder's
originals, mixup and cutmix. A replayed view is the pixels timm's transform makes for the stored box, the
teacher's stored logit is its logit of exactly those (mixed) pixels, and the draws follow the recipe."""

from __future__ import annotations

import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

from kdcl.config.schema import AugmentConfig
from kdcl.data.augment import per_image_transform
from kdcl.data.replay import (
    ReplayedViews,
    ReplayRecipe,
    ViewRows,
    draw_table,
    image_sizes,
    mix_views,
    mixed_targets,
    view_pixels,
)
from kdcl.data.sources import FolderImages
from kdcl.teachers.views import TeacherViews, TeacherViewStore, ViewSpec, replay_pass, views_key

SIZE, K = 24, 3


def make_folder(root, n=14):
    """n JPEGs of different sizes and aspect ratios in two classes (so crops and resizes really differ)."""
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        h, w = 30 + 7 * i, 60 - 2 * i
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return FolderImages(root, SIZE).originals()


def recipe(**changes) -> ReplayRecipe:
    aug = OmegaConf.merge(OmegaConf.structured(AugmentConfig),
                          {"crop": "rrc", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, **changes})  # fmt: skip
    data = OmegaConf.create({"augment": False, "hflip": False, "image_size": SIZE})
    return ReplayRecipe.of(data, aug, pad=3)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def test_a_replayed_crop_is_the_pixels_timms_transform_makes_for_the_stored_box(tmp_path, monkeypatch):
    from timm.data.transforms import RandomResizedCropAndInterpolation

    originals, rec = make_folder(tmp_path), recipe()
    sizes = image_sizes(originals)
    assert sizes == [(image.height, image.width) for image, _ in originals]  # read from the file headers alone
    assert len(set(sizes)) == len(sizes)
    table = draw_table(sizes, K, rec, seed=5)
    assert all(
        torch.equal(t, u) for t, u in zip(table.values(), draw_table(sizes, K, rec, seed=5).values(), strict=True)
    )
    crop = table["crop"]
    assert len({tuple(c) for c in crop.flatten(0, 1).tolist()}) == len(sizes) * K  # every view its own box
    assert {0, 1} == set(crop[..., 4].flatten().tolist())  # flipped and not
    for i, (h, w) in enumerate(sizes):  # each box lies inside its own original
        assert ((crop[i, :, 0] + crop[i, :, 2] <= h) & (crop[i, :, 1] + crop[i, :, 3] <= w)).all()
    for position, view in [(0, 0), (5, 2), (13, 1)]:
        box = crop[position, view].tolist()
        monkeypatch.setattr(RandomResizedCropAndInterpolation, "get_params", staticmethod(lambda *a, b=box: b[:4]))
        aug = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"crop": "rrc", "hflip": float(box[4])})
        online = per_image_transform(aug, SIZE, (0.5, 0.5, 0.5))  # kdcl's online path: timm's transform
        image = originals[position][0]
        assert torch.equal(view_pixels(image, box, rec), online(image))


def test_stored_logits_are_the_teachers_logits_of_the_replayed_mixed_views(tmp_path):
    originals, rec = make_folder(tmp_path), recipe()
    labels = torch.tensor(originals.targets)
    table = draw_table(image_sizes(originals), K, rec, seed=5)
    replayed = ReplayedViews(originals, labels, table, rec)
    n = len(originals)
    mixed = table["lam"] < 1
    assert mixed.any() and (table["partner"][mixed] != torch.arange(n)[:, None].expand(n, K)[mixed]).all()
    cut = table["box"][..., 1] > table["box"][..., 0]
    assert cut.any() and (mixed & ~cut).any()  # both cutmix and mixup views (switch_prob 0.5)
    assert ((table["lam"] > 0) & (table["lam"] <= 1)).all()

    teacher = timm.create_model("test_resnet", num_classes=2).eval()
    spec = ViewSpec(k=K, seed=5, pad=3, hflip=False, topk=None, bf16=False, plain=False, recipe=rec)
    plain = FolderImages(tmp_path, SIZE)
    stored = replay_pass(teacher, replayed, plain, table, lambda x: x.float().div(255), 16, 0, spec)
    assert stored["logits"].shape == (n, K, 2)

    # training's path: the loader's rows of epoch 1, the device's mixing, the stored logits of those rows
    views = TeacherViews([TeacherViewStore(None, stored, 2)], spec, replayed)
    rows = next(iter(ViewRows(n, K, 16, views.choice, lambda: 1, seed=5)))
    assert len(rows) == 16 and sorted({r // K for r in rows}) == list(range(n))  # every example (2 twice: filled)
    assert [r % K for r in sorted(set(rows))] == views.choice(1).tolist()  # at its view of epoch 1
    xa, xb, y, yb, row = torch.utils.data.default_collate([replayed[r] for r in rows])
    x = views.mix(xa.float() / 255, xb.float() / 255, row)
    with torch.inference_mode():
        again = teacher(x)
    assert torch.allclose(again, views.read(row)[0], atol=1e-5, rtol=0)  # another batch composition: rounding
    ordered = torch.arange(16)  # the pass's first batch, rebuilt: bit-equal
    first = [replayed[int(r)] for r in ordered]
    xa, xb = (torch.stack([f[i] for f in first]).float() / 255 for i in (0, 1))
    with torch.inference_mode():
        assert torch.equal(teacher(views.mix(xa, xb, ordered)), stored["logits"].flatten(0, 1)[:16])

    # a cutmix view carries its partner's pixels inside the box, its own outside; targets weigh both labels
    r = int(torch.nonzero(cut.flatten())[0])
    own, other, y_own, y_other, _ = replayed[r]
    yl, yh, xl, xh = table["box"].flatten(0, 1)[r].tolist()
    out = mix_views(own[None].float(), other[None].float(), table["blend"].flatten()[r : r + 1],
                    table["box"].flatten(0, 1)[r : r + 1])[0]  # fmt: skip
    assert torch.equal(out[:, yl:yh, xl:xh], other[:, yl:yh, xl:xh].float())
    assert torch.equal(out[:, :yl], own[:, :yl].float()) and torch.equal(out[:, yh:], own[:, yh:].float())
    lam = table["lam"].flatten()[r]
    target = mixed_targets(torch.tensor([y_own]), torch.tensor([y_other]), lam[None], 2)[0]
    assert torch.isclose(target.sum(), torch.tensor(1.0)) and torch.isclose(
        target[y_own], lam + (1 - lam) * (y_own == y_other)
    )
    assert torch.isclose(lam, torch.tensor(1 - (yh - yl) * (xh - xl) / SIZE**2))  # timm's corrected λ: the box's area


def test_mixing_only_and_pad_crop_recipes_and_keys(tmp_path):
    data = OmegaConf.create({"augment": True, "hflip": True, "image_size": 8})
    aug = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"mixup_alpha": 0.2})
    padcrop = ReplayRecipe.of(data, aug, pad=1)
    assert padcrop.crop == "padcrop" and padcrop.hflip == 0.5 and padcrop.cutmix_alpha == 0
    assert ReplayRecipe.of(data, OmegaConf.structured(AugmentConfig), pad=1) is None  # pad-crop alone: on the device
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    table = draw_table(image_sizes(torch.utils.data.TensorDataset(images, torch.zeros(6))), 4, padcrop, seed=1)
    assert (table["box"] == 0).all() and (table["blend"] < 1).any()  # mixup only: no boxes
    dy, dx, _, _, flip = table["crop"][2, 1].tolist()
    want = torch.nn.functional.pad(images[2], (1, 1, 1, 1))[:, dy : dy + 8, dx : dx + 8]
    assert torch.equal(view_pixels(images[2], table["crop"][2, 1].tolist(), padcrop), want.flip(-1) if flip else want)

    teacher = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    spec = ViewSpec(k=2, seed=0, pad=1, hflip=True, topk=None, bf16=False, plain=False, recipe=recipe())
    examples = torch.utils.data.TensorDataset(images, torch.zeros(6))

    def key(spec=spec, sizes=((8, 8),) * 6):
        return views_key(teacher, examples, {"name": "x"}, (0.5,), (0.25,), spec, list(sizes))[0]

    other_recipe = ViewSpec(**{**spec.__dict__, "recipe": recipe(scale=[0.5, 1.0])})
    no_mix = ViewSpec(**{**spec.__dict__, "recipe": recipe(mixup_alpha=0.0)})
    keys = {
        key(),
        key(other_recipe),
        key(no_mix),
        key(sizes=((8, 9),) * 6),
        key(ViewSpec(**{**spec.__dict__, "recipe": None})),
    }
    assert len(keys) == 5 and key() == key()


def test_under_ddp_each_rank_takes_its_slice_of_one_global_batch_of_views():
    choice = torch.arange(10) % 3  # the views of the epoch

    def rows(rank, ranks, batch):
        return list(ViewRows(10, 3, batch, lambda epoch: choice, lambda: 4, seed=1, rank=rank, ranks=ranks))

    single = rows(0, 1, 8)
    assert sorted({r for b in single for r in b}) == [p * 3 + int(choice[p]) for p in range(10)]
    assert [len(b) for b in single] == [8, 8]  # the short last batch is filled from the epoch's start
    two = [rows(0, 2, 4), rows(1, 2, 4)]
    assert len(two[0]) == len(two[1]) == 2  # the same number of steps on every rank
    assert [a + b for a, b in zip(*two, strict=True)] == single  # rank slices of the single process's batches
    assert rows(0, 1, 8) == single and rows(0, 1, 8) != list(ViewRows(10, 3, 8, lambda e: choice, lambda: 5, 1))
