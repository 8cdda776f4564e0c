"""Save a timm model's pretrained weights to a local .safetensors file, for `teacher.weights=PATH`.

Run it once where the Hugging Face hub is reachable; training then needs no network:

    python scripts/save_timm_weights.py resnet50.a1_in1k weights/resnet50.safetensors
    kdcl train teacher=resnet50 teacher.weights=weights/resnet50.safetensors

The file holds the ImageNet head; kdcl re-initialises it for the dataset's classes (transfer learning)
and adapts the first convolution to grey images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="timm model name, optionally with a pretrained tag (resnet50.a1_in1k)")
    parser.add_argument("output", type=Path, help="where to write the .safetensors file")
    args = parser.parse_args()
    model = timm.create_model(args.model, pretrained=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.output))
    print(f"saved {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) to {args.output}")


if __name__ == "__main__":
    main()
