"""A held-in "your photos" example: Fashion-MNIST items on textured, tinted backgrounds, RGB JPEGs at 224 px.

    python scripts/make_folder_example.py OUT [--train 5000] [--test 1000] [--size 224] [--seed 0]

writes OUT/train/<class>/NNNNN.jpg and OUT/test/<class>/NNNNN.jpg — the layout `data=image_folder` reads —
from Debian's dataset-fashion-mnist (or `--fashion-mnist DIR` with the idx files). Each image: a smooth random
texture with stripes in a random tint, the item scaled to 45–80 % of the side at a random place, coloured
with another random tint; JPEG quality 90. Classes are balanced; the same seed writes the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcl.data.sources import DEBIAN_FASHION_MNIST, find_idx, read_idx  # noqa: E402

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth texture (upsampled noise) with stripes at a random angle, tinted: float H×W×3 in [0, 1]."""
    coarse = rng.random((8, 8)).astype(np.float32)
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    grey = 0.6 * smooth + 0.4 * stripes
    tint = rng.uniform(0.25, 1.0, size=3)
    return grey[..., None] * tint[None, None, :] * rng.uniform(0.5, 0.9)


def compose(item: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """The 28×28 grey item, scaled and tinted, over a background at a random place."""
    canvas = background(rng, size)
    side = int(size * rng.uniform(0.45, 0.8))
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
    colour = rng.uniform(0.2, 1.0, size=3)
    top, left = rng.integers(0, size - side + 1, size=2)
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = (1 - alpha[..., None]) * region + alpha[..., None] * colour
    return Image.fromarray((canvas.clip(0, 1) * 255).round().astype(np.uint8), "RGB")


def write_split(images: np.ndarray, labels: np.ndarray, count: int, out: Path, rng: np.random.Generator,
                size: int) -> None:  # fmt: skip
    """`count` images, balanced over the classes, chosen and composed with `rng`."""
    per_class = -(-count // len(CLASSES))
    written = 0
    for c, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        pool = np.flatnonzero(labels == c)
        for i, idx in enumerate(rng.choice(pool, size=min(per_class, count - written), replace=False)):
            compose(images[idx], rng, size).save(folder / f"{i:05d}.jpg", quality=90)
        written += min(per_class, count - written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-mnist", type=Path, default=DEBIAN_FASHION_MNIST)
    args = parser.parse_args()
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    files = [find_idx(args.fashion_mnist, s) for s in stems]
    if not all(files):
        sys.exit(f"error: no Fashion-MNIST idx files in {args.fashion_mnist}; apt-get install -y dataset-fashion-mnist "
                 "or pass --fashion-mnist DIR")  # fmt: skip
    tx, ty, vx, vy = (read_idx(f).numpy() for f in files)
    rng = np.random.default_rng(args.seed)
    write_split(tx, ty, args.train, args.out / "train", rng, args.size)
    write_split(vx, vy, args.test, args.out / "test", rng, args.size)
    print(f"{args.train} training and {args.test} test images at {args.size} px in {args.out}")


if __name__ == "__main__":
    main()
