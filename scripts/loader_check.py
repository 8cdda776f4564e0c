"""Loader throughput on a folder of JPEGs: kdcl's training loader on the folder (data=image_folder) and on its
prepared, streamable copy (data=prepared, `kdcl data prepare`; needs kdcl[stream]) against timm's own
`create_loader` on the folder, with the same transforms (RandomResizedCrop + flip, optionally RandAugment), at 1
and 2 workers, one after another in one process (never two at once: on 2 cores that measures contention, not
loaders).

    python scripts/loader_check.py ROOT [--prepared DIR ...] [--size 160] [--batch 64] [--batches 30]
        [--policy rand-m9-mstd0.5-inc1] [--student mobilenetv3_small_100] [--out loader.json]

--prepared: out-dirs of `kdcl data prepare ROOT DIR` (any format or storage size; each is one more loader).

For each loader and worker count: images/s of the loader alone (iterating batches, kdcl's on-device step
included: scaling to [0, 1]), then images/s in a plain training loop of `--student` at `--size` (forward,
backward, AdamW step) and the share of that loop's wall time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kdcl_loader(root: Path, size: int, batch: int, workers: int, policy: str | None, data: str = "image_folder"):
    from omegaconf import OmegaConf

    from kdcl.config.compose import compose

    overrides = [f"data={data}", f"data.root={root}", f"data.image_size={size}", f"data.batch_size={batch}",
                 f"data.num_workers={workers}", "augment=randaug" if policy else "augment=rrc"]  # fmt: skip
    if policy:
        overrides += [f"augment.auto_augment={policy}", "augment.re_prob=0"]
    cfg = compose(overrides)
    from kdcl.data import KdclDataModule

    dm = KdclDataModule(cfg.data, seed=0, augment=OmegaConf.create(OmegaConf.to_container(cfg.augment)))
    dm.setup()
    loader = dm.train_dataloader()
    return loader, lambda b: (dm.scale(b[0]), b[1])


def timm_loader(root: Path, size: int, batch: int, workers: int, policy: str | None):
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(root / "train") if (root / "train").is_dir() else str(root), is_training=True)
    loader = create_loader(dataset, input_size=(3, size, size), batch_size=batch, is_training=True,
                           use_prefetcher=False, no_aug=False, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                           color_jitter=None, auto_augment=policy, interpolation="bilinear", num_workers=workers,
                           persistent_workers=True, pin_memory=False)  # fmt: skip
    from kdcl.data.augment import keep_a_posterize_bit

    keep_a_posterize_bit(loader.dataset.transform)  # the same Pillow 13 fix as kdcl's
    return loader, lambda b: b


def loader_alone(loader, prepare, batches: int) -> float:
    it = iter(loader)
    prepare(next(it))  # workers started, first batch decoded: not part of the rate
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = prepare(next(it))
        n += len(x)
    return n / (time.perf_counter() - start)


def in_training(loader, prepare, batches: int, student: str, num_classes: int) -> tuple[float, float]:
    import timm

    model = timm.create_model(student, num_classes=num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(loader)
    x, y = prepare(next(it))
    model(x).sum().backward()  # warm-up step
    waited = n = 0.0
    start = time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        x, y = prepare(next(it))
        waited += time.perf_counter() - t0
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    wall = time.perf_counter() - start
    return n / wall, waited / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--prepared", type=Path, nargs="*", default=[])
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--policy", default=None)
    p.add_argument("--student", default="mobilenetv3_small_100")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=Path("loader.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    classes = len([d for d in (args.root / "train").iterdir() if d.is_dir()])
    rows = []
    loaders = [("kdcl folder", kdcl_loader, args.root)]
    for copy in args.prepared:
        manifest = json.loads((copy / "kdcl_prepared.json").read_text())
        label = f"kdcl prepared {manifest['format']} {manifest['storage_size']}"
        loaders.append((label, lambda *a: kdcl_loader(*a, data="prepared"), copy))
    loaders.append(("timm create_loader", timm_loader, args.root))
    for workers in args.workers:
        for name, make, root in loaders:
            loader, prepare = make(root, args.size, args.batch, workers, args.policy)
            alone = loader_alone(loader, prepare, args.batches)
            loader, prepare = make(root, args.size, args.batch, workers, args.policy)
            trained, waiting = in_training(loader, prepare, args.batches, args.student, classes)
            rows.append({"loader": name, "workers": workers, "alone_img_s": alone, "training_img_s": trained,
                         "waiting_share": waiting})  # fmt: skip
            print(f"{name:<24} workers {workers}: alone {alone:7.1f} img/s · in training {trained:6.1f} img/s, "
                  f"{100 * waiting:4.1f} % of the loop waiting for data", flush=True)  # fmt: skip
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine,
                                    "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
