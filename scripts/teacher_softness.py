"""How confident a run's teacher is on its own training examples, after each epoch it kept and at its chosen
checkpoint: training accuracy and mean output entropy (nats) at temperature 1 and at the KD temperature.
Issue 25 asks for both: the teacher-side curricula are expected to matter with a late, overconfident teacher.

    python scripts/teacher_softness.py RUN_DIR [--stage teacher] [--temperature 4]

The training examples are the run's own (its config's data and seed, without augmentation), the logits those
the teacher gives them in eval mode, as kdcl's stored teacher outputs compute them. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kdcl.data import KdclDataModule
from kdcl.data.datamodule import dataset_labels, unaugmented
from kdcl.models import model_from_checkpoint
from kdcl.models.input_norm import ModelInput
from kdcl.models.predictions import dataset_logits
from kdcl.teachers.softness import mean_entropy


def stage_metrics(run_dir: Path, stage: str) -> dict:
    found = sorted(run_dir.glob(f"stages/*-{stage}/metrics.json"))
    if not found:
        raise SystemExit(f"{run_dir} has no stage '{stage}' (stages/NN-{stage}/metrics.json)")
    return json.loads(found[0].read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stage", default="teacher")
    parser.add_argument("--temperature", type=float, default=4.0)
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    metrics = stage_metrics(args.run_dir, args.stage)
    checkpoints = {f"after epoch {e}": args.run_dir / path for e, path in sorted(
        metrics["epoch_checkpoints"].items(), key=lambda item: int(item[0]))}  # fmt: skip
    checkpoints[f"chosen ({Path(metrics['checkpoint']).name})"] = args.run_dir / metrics["checkpoint"]
    last = (args.run_dir / metrics["checkpoint"]).parent / "last.ckpt"
    if last.is_file():  # after the last epoch: what a sweep given `last.ckpt` learns from
        checkpoints["last (last.ckpt)"] = last
    data = KdclDataModule(cfg.data, seed=cfg.seed)
    data.setup()
    examples = unaugmented(data.stage_subset(None))
    labels = dataset_labels(examples)
    inputs = ModelInput.of(data.load(), int(cfg.data.image_size))
    t = args.temperature
    print(f"{args.run_dir}, stage {args.stage} ({metrics['model']}), {len(examples)} training examples\n")
    print(f"| checkpoint | training accuracy % | mean entropy at T=1 (nats) | at T={t:g} | max (log C) |")
    print("|---|---:|---:|---:|---:|")
    for name, path in checkpoints.items():
        model = model_from_checkpoint(metrics["model_cfg"], path, inputs, args.stage)
        logits = dataset_logits(model, examples, data.scale)
        acc = 100 * float((logits.argmax(-1) == labels).float().mean())
        print(f"| {name} | {acc:.2f} | {mean_entropy(logits, 1.0):.4f} | {mean_entropy(logits, t):.4f} "
              f"| {torch.log(torch.tensor(float(logits.shape[-1]))):.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
