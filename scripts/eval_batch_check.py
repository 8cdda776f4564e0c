"""Inference time per image at several batch sizes, on this machine's CPU (what data.eval_batch_size picks).

Every validation, test and teacher pass runs in batches of data.eval_batch_size. On a CPU, a batch whose
activations outgrow the caches runs slower per image, so the best size falls as the image grows. One model
at a time, inference mode, 2 048 images per size after one warm-up batch.

    python scripts/eval_batch_check.py [--models resnet18 mobilenetv3_large_100] [--sizes 28 64 96 224]
"""

from __future__ import annotations

import argparse
import platform
import time

import timm
import torch

BATCHES = (32, 64, 128, 256, 512)


def per_image_ms(model: torch.nn.Module, size: int, batch: int, images: int = 2048) -> float:
    x = torch.randn(batch, 3, size, size)
    calls = max(3, images // batch)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
    return 1000 * (time.perf_counter() - start) / (calls * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv3_large_100", "resnet50"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 96, 224])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | px | " + " | ".join(f"batch {b} (ms/image)" for b in BATCHES) + " |")
    print("|---|---:|" + "---:|" * len(BATCHES))
    for name in args.models:
        model = timm.create_model(name, num_classes=10).eval()
        for size in args.sizes:
            cells = [per_image_ms(model, size, b, 512 if size >= 224 else 2048) for b in BATCHES]
            best = min(cells)
            row = " | ".join(f"**{c:.2f}**" if c == best else f"{c:.2f}" for c in cells)
            print(f"| {name} | {size} | {row} |", flush=True)


if __name__ == "__main__":
    main()
